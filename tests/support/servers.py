"""The real server for tests: `python -m server` on a free loopback port (tools/local_server.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tools import local_server
from tools.local_server import MODEL_DIR, ROOT, ServerProcess, free_port

__all__ = ["API_KEY", "CPU_LINEAR", "KEYED_LIMITS", "MODEL_DIR", "ROOT", "ServerProcess", "free_port",
           "start_server"]

# The CPU kernel the tests' servers and in-process engines pin (what `auto` chooses on the CI
# machine): timing kernels at every start-up of a busy test run would only add noise and time
# (tests/model/test_kernel_choice.py tests the timing itself).
CPU_LINEAR = "onednn"

# The keyed server (tests/integration/conftest.py `keyed_server`), shared by the modules that test
# keys, limits and the chat page: its first key, and its limits.
API_KEY = "test-key-" + uuid.uuid4().hex[:8]
KEYED_LIMITS = {"MAX_QUEUED_REQUESTS": 8, "MAX_BATCH_SIZE": 4, "MAX_INPUT_TOKENS": 200,
                "MAX_BODY_BYTES": 8192}


def start_server(tmp_dir: Path, extra_env: dict[str, str] | None = None,
                 wait_healthy: bool = True, timeout: float = 180) -> ServerProcess:
    """Start `python -m server` exactly as `make run` does, on a free loopback port, with the CPU
    kernel pinned to `CPU_LINEAR` unless `extra_env` says otherwise."""
    return local_server.start_server(tmp_dir, {"CPU_LINEAR": CPU_LINEAR, **(extra_env or {})}, wait_healthy,
                                     timeout)
