#!/usr/bin/env bash
# Runs the example app on a fresh machine: makes a virtualenv, installs the package, starts
# gunicorn with gevent workers on http://127.0.0.1:8000 (BIND to change). Ctrl-C stops it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip >/dev/null
"$venv/bin/pip" install -q -e ".[redis,metrics]"
# optional speed-ups (orjson, gunicorn's C parser); gunicorn_h1c may need a C compiler
"$venv/bin/pip" install -q -e ".[fast]" >/dev/null 2>&1 || echo "note: the optional [fast] extra could not be installed; running without it"
# /dev/token (development sign-in, local requests only) is on by default when bound to loopback
case "${BIND:-127.0.0.1:8000}" in
  127.*|localhost:*|"[::1]:"*) dev_tokens=1 ;;
  *) dev_tokens=0 ;;
esac
export EXAMPLE_DEV_TOKENS="${EXAMPLE_DEV_TOKENS:-$dev_tokens}"
if [ "$EXAMPLE_DEV_TOKENS" = "1" ]; then
  echo "note: /dev/token signs in any user name for requests from this machine (development only; EXAMPLE_DEV_TOKENS=0 turns it off)"
fi
echo "flask-llm-proxy example on http://${BIND:-127.0.0.1:8000}/  (providers: mock$( [ -n "${ANTHROPIC_API_KEY:-}" ] && echo ', anthropic')$( [ -n "${OPENAI_API_KEY:-}" ] && echo ', openai'))"
exec "$venv/bin/gunicorn" -c example_app/gunicorn.conf.py example_app.wsgi:app
