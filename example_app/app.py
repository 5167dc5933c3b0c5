"""An example host app: an app factory that registers flask-llm-proxy, configured from the
environment. With no API key set it serves only the offline ``mock`` provider.

Run it with ``bash example_app/run.sh`` (gunicorn + gevent, see gunicorn.conf.py).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from flask import Flask, abort, jsonify, request, send_from_directory
from flask_jwt_extended import JWTManager, create_access_token

from flask_llm_proxy import LLMProxy

HERE = os.path.dirname(os.path.abspath(__file__))


def _env_value(raw: str) -> Any:
    """Environment values may be JSON (dicts, lists, numbers, booleans) or plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        k: v if k.endswith("SECRET_KEY") else _env_value(v)  # a secret stays a string, even "12345"
        for k, v in environ.items()
        if k.startswith(("LLM_PROXY_", "RATELIMIT_", "JWT_"))
    }
    if "LLM_PROXY_PROVIDERS" not in cfg:
        providers: dict[str, Any] = {"mock": {"type": "mock", "models": ["mock-1"], "tokens": 40, "pace_ms": 40}}
        if environ.get("ANTHROPIC_API_KEY"):
            providers["anthropic"] = {"models": ["claude-sonnet-4-5*", "claude-haiku-4-5*", "claude-3-5-haiku-*"]}
        if environ.get("OPENAI_API_KEY"):
            providers["openai"] = {"models": ["gpt-4o", "gpt-4o-mini", "gpt-4.1*", "gpt-5*"]}
        cfg["LLM_PROXY_PROVIDERS"] = providers
    if "LLM_PROXY_PROFILES" not in cfg and "mock" in cfg["LLM_PROXY_PROVIDERS"]:
        # Two purposes for the demo: one pinned by the server (its system prompt, no client system
        # prompt, a small output cap), one free (the client may add its own system prompt).
        cfg["LLM_PROXY_PROFILES"] = {
            "support": {
                "provider": "mock",
                "model": "mock-1",
                "system": "You answer questions about the flask-llm-proxy demo.",
                "client_system": "forbid",
                "max_tokens": 200,
            },
            "free": {"provider": "mock", "model": "mock-1", "client_system": "allow", "tools": "*"},
        }
    return cfg


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True, static_folder=None)
    app.config.update(config_from_env(os.environ))
    app.config.update(config or {})
    if not app.config.get("JWT_SECRET_KEY"):
        app.config["JWT_SECRET_KEY"] = secrets.token_hex(32)  # one process only: see gunicorn.conf.py
    if not os.environ.get("JWT_SECRET_KEY") or os.environ.get("EXAMPLE_JWT_KEY_GENERATED"):
        # Development only: tokens from one run are useless after a restart.
        app.logger.warning("JWT_SECRET_KEY not set: using a random development key (set it in production)")
    app.config.setdefault("JWT_ACCESS_TOKEN_EXPIRES", timedelta(hours=1))
    os.makedirs(app.instance_path, exist_ok=True)

    JWTManager(app)
    LLMProxy(app)

    @app.get("/")
    def index() -> Any:
        return send_from_directory(os.path.join(HERE, "static"), "index.html")

    @app.get("/demo/<path:name>")
    def demo_static(name: str) -> Any:
        return send_from_directory(os.path.join(HERE, "static"), name)

    @app.post("/dev/token")
    def dev_token() -> Any:
        """DEVELOPMENT ONLY - NOT FOR PRODUCTION: hands a token to anyone who asks.

        Off unless EXAMPLE_DEV_TOKENS=1, and then only for requests from this machine: anyone else
        could sign in as any user and spend their limits, quotas and budgets. A real app issues
        tokens after its own login.
        """
        if os.environ.get("EXAMPLE_DEV_TOKENS") != "1" and not app.config.get("EXAMPLE_DEV_TOKENS"):
            abort(404)
        if not ipaddress.ip_address(request.remote_addr or "0.0.0.0").is_loopback:
            abort(404)
        body = request.get_json(silent=True) or {}
        user = str(body.get("user") or "demo-user")[:64]
        return jsonify(token=create_access_token(identity=user), user=user)

    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(message)s")  # info or INFO
    return app
