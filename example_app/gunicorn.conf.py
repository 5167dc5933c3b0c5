# gunicorn + gevent for flask-llm-proxy. Patch first, before anything imports ssl or urllib3:
# with --preload (or any import before the worker patches) HTTPS to the upstream would otherwise
# fail with a RecursionError in every request (gevent #1016).
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import secrets  # noqa: E402

# Development convenience: without JWT_SECRET_KEY every worker would invent its own key and a token
# signed by one worker would fail on the others. Make one here, in the master, before the fork.
# Production sets JWT_SECRET_KEY (and keeps it across restarts).
if not os.environ.get("JWT_SECRET_KEY"):
    os.environ["JWT_SECRET_KEY"] = secrets.token_hex(32)
    os.environ["EXAMPLE_JWT_KEY_GENERATED"] = "1"

bind = os.environ.get("BIND", "127.0.0.1:8000")
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))  # about one per core
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "2000"))  # concurrent streams per worker
# For gevent workers `timeout` is only a liveness heartbeat, not a per-request limit.
timeout = 30
# Let in-flight streams finish on deploys/restarts instead of being cut.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "120"))
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG")  # "-" for stdout
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
control_socket_disable = True

# Prometheus in multiprocess mode (LLM_PROXY_METRICS): every worker writes its values to files in
# this directory and /metrics merges them. It must be empty at start and per server instance.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-proxy-metrics-")


# The app's instance folder (example_app/app.py's Flask app keeps its default usage store there).
INSTANCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instance")


def child_exit(server, worker):  # noqa: ANN001 - gunicorn's hook signature
    # A worker that died (SIGKILL, out of memory) leaves a worker_lost record for each request it
    # had in flight; the usage store comes from LLM_PROXY_USAGE_STORE, else the default one.
    from flask_llm_proxy.gunicorn import child_exit as record_lost_requests

    record_lost_requests(server, worker, instance_path=INSTANCE)
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):  # noqa: ANN001
    # worker_connections for LLM_PROXY_MAX_STREAMS_PER_WORKER's default, and the proxy's
    # once-a-second loop started at once (it announces the requests a dead worker left behind).
    from flask_llm_proxy.gunicorn import post_worker_init as proxy_worker_init

    proxy_worker_init(worker)
