"""`python -m server [Kaito flags]`: translate Kaito's launch flags into environment variables and
exec gunicorn, so Kaito's command lines keep working. A configuration that cannot be served is
refused here, before gunicorn starts, with the reason."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from server.config import ConfigError, Settings, load_settings
from server.kaito_flags import flags_to_env


def main(argv: list[str] | None = None) -> None:
    try:
        env = flags_to_env(sys.argv[1:] if argv is None else argv)
        os.environ.update(env)
        settings = load_settings()  # fail fast on bad configuration, before gunicorn forks
        if settings.quantization != "none":
            from server.model.loader import check_quantization

            check_quantization(settings)
        _check_handler(settings)
    except ConfigError as exc:
        sys.exit(f"inferbox: refusing to start: {exc}")
    conf = Path(__file__).resolve().parent / "gunicorn_conf.py"
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf), "server.app:create_app()"])


def _check_handler(settings: Settings) -> None:
    """A MODEL_HANDLER that cannot be imported stops the server here, with the reason, rather than
    leaving a worker that reports unhealthy forever."""
    from server.handlers import loading

    spec = loading.handler_spec(settings)
    if spec is None or settings.model_kind == "embedding":
        return
    loading.resolve(spec, settings.model_handler_dir)  # raises ConfigError with the reason


if __name__ == "__main__":
    main()
