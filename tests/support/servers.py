"""The real server for tests: `python -m server` on a free loopback port (tools/local_server.py)."""

from __future__ import annotations

from pathlib import Path

from tools import local_server
from tools.local_server import MODEL_DIR, ROOT, ServerProcess, free_port

__all__ = ["MODEL_DIR", "ROOT", "ServerProcess", "free_port", "start_server"]


def start_server(tmp_dir: Path, extra_env: dict[str, str] | None = None,
                 wait_healthy: bool = True, timeout: float = 180) -> ServerProcess:
    """Start `python -m server` exactly as `make run` does, on a free loopback port. The CPU kernel is
    pinned (`CPU_LINEAR=onednn`, what `auto` chooses on the CI machine) unless `extra_env` says
    otherwise: timing kernels at every start-up of a busy test run would only add noise and time
    (tests/model/test_kernel_choice.py tests the timing itself)."""
    return local_server.start_server(tmp_dir, {"CPU_LINEAR": "onednn", **(extra_env or {})}, wait_healthy,
                                     timeout)
