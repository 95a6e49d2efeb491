"""gunicorn settings: one worker process owns the model; threads wait on the engine.

Start with `gunicorn -c server/gunicorn_conf.py "server.app:create_app()"` (what `make run`,
`python -m server` and the image do). The model loads inside the worker, after the fork.
"""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '5000')}"
workers = 1  # the model lives in one process; the engine batches across its threads
worker_class = "gthread"
threads = int(os.environ.get("THREADS", "64"))
# gthread's timeout is worker silence, not request length; generation runs on the engine thread.
timeout = int(os.environ.get("WORKER_TIMEOUT", "120"))
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
keepalive = 5
accesslog = None  # server.observability.access_log writes access lines without any request body
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# request lines may carry query strings; nothing of ours uses them, but keep them out of logs
limit_request_line = 8190


def post_worker_init(worker):  # noqa: ANN001, ANN201
    """SIGTERM drains (health 503, in-flight requests and streams finish) instead of gunicorn's
    immediate stop of accepting; see server/lifecycle.py."""
    from server.lifecycle import install_worker_drain

    install_worker_drain(worker)


def pre_request(worker, req):  # noqa: ANN001, ANN201
    from server.lifecycle import close_while_draining

    close_while_draining(worker, req)
