"""`python -m server [Kaito flags]`: translate Kaito's launch flags into environment variables and
exec gunicorn, so Kaito's command lines keep working. A configuration that cannot be served is
refused here, before gunicorn starts, with the reason.

With TENSOR_PARALLEL=N it starts the N ranks of one machine: ranks 1..N-1 as child processes
(server/rank.py) and rank 0 as the gunicorn server, with torchrun's variables set for each. Under
torchrun or a LeaderWorkerSet, which set RANK themselves, each process is one rank: RANK=0 serves
HTTP and any other rank follows it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from server.config import ConfigError, Settings, load_settings
from server.kaito_flags import flags_to_env, ignored_flags


def main(argv: list[str] | None = None) -> None:
    try:
        flags = sys.argv[1:] if argv is None else argv
        env = flags_to_env(flags)
        ignored = ignored_flags(flags)
        if ignored:
            print(f"inferbox: ignoring command-line flags this server does not use: {' '.join(ignored)}",
                  file=sys.stderr)
        os.environ.update(env)
        settings = load_settings()  # fail fast on bad configuration, before gunicorn forks
        if settings.quantization != "none":
            from server.model.loader import check_quantization

            check_quantization(settings)
        _check_handler(settings)
        if settings.tensor_parallel > 1:
            _check_tensor_parallel(settings)
    except ConfigError as exc:
        sys.exit(f"inferbox: refusing to start: {exc}")
    if settings.tensor_parallel > 1:
        if settings.rank is None:  # nobody started the ranks: start those of this machine
            _start_ranks(settings.tensor_parallel)
        elif settings.rank > 0:
            from server.rank import serve

            sys.exit(serve(settings))
    conf = Path(__file__).resolve().parent / "gunicorn_conf.py"
    os.chdir(Path(__file__).resolve().parent.parent)
    os.execvp(sys.executable, [sys.executable, "-m", "gunicorn", "-c", str(conf), "server.app:create_app()"])


def _check_tensor_parallel(settings: Settings) -> None:
    """Refuse, naming the sizes, a model the ranks cannot split, and adapters they cannot serve."""
    from server.adapters.paths import scan
    from server.model.loader import ModelLoadError, check_tensor_parallel

    try:
        check_tensor_parallel(settings)
    except (ModelLoadError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    if scan(Path(settings.adapters_dir)):
        raise ConfigError(f"TENSOR_PARALLEL={settings.tensor_parallel}: ADAPTERS_DIR={settings.adapters_dir} "
                          "holds LoRA adapters, which are not served under tensor parallelism; serve them "
                          "with TENSOR_PARALLEL=1")


def _start_ranks(n: int) -> None:
    """Start ranks 1..n-1 of this machine as children (they outlive the exec into gunicorn, which
    becomes rank 0) and set rank 0's variables, as torchrun would."""
    with socket.socket() as probe:  # a free port for the rendezvous on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    common = {"WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(port)}
    os.environ.update(common)
    root = Path(__file__).resolve().parent.parent
    for rank in range(1, n):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank)}
        subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=root)
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0"})


def _check_handler(settings: Settings) -> None:
    """A MODEL_HANDLER that cannot be imported stops the server here, with the reason, rather than
    leaving a worker that reports unhealthy forever."""
    from server.kinds import loading

    spec = loading.handler_spec(settings)
    if spec is None or settings.model_kind == "embedding":
        return
    loading.resolve(spec, settings.model_handler_dir)  # raises ConfigError with the reason


if __name__ == "__main__":
    main()
