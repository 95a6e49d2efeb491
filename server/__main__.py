"""`python -m server [Kaito flags]`: translate Kaito's launch flags into environment variables and
exec gunicorn, so Kaito's command lines keep working."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from server.config import flags_to_env, load_settings


def main(argv: list[str] | None = None) -> None:
    env = flags_to_env(sys.argv[1:] if argv is None else argv)
    os.environ.update(env)
    load_settings()  # fail fast on bad configuration, before gunicorn forks
    conf = Path(__file__).resolve().parent / "gunicorn_conf.py"
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf), "server.app:create_app()"])


if __name__ == "__main__":
    main()
