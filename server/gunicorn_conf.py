"""gunicorn settings: one worker process owns the model; threads wait on the engine.

Start with `gunicorn -c server/gunicorn_conf.py "server.app:create_app()"` (what `make run`,
`python -m server` and the image do). The model loads inside the worker, after the fork.
"""

from server.config import load_settings

_settings = load_settings()  # the same settings the worker reads (server/config.py)
bind = f"{_settings.host}:{_settings.port}"
workers = 1  # the model lives in one process; the engine batches across its threads
worker_class = "gthread"
threads = _settings.threads
# gthread's timeout is worker silence, not request length; generation runs on the engine thread.
timeout = _settings.worker_timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
accesslog = None  # server.observability.access_log writes access lines without any request body
errorlog = "-"
loglevel = _settings.log_level
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
