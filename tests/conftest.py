"""Shared fixtures: the real server (gunicorn, a free port, the embedded model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools import local_server
from tools.local_server import MODEL_DIR, ROOT, ServerProcess, free_port

__all__ = ["MODEL_DIR", "ROOT", "ServerProcess", "free_port", "start_server"]


def start_server(tmp_dir: Path, extra_env: dict[str, str] | None = None,
                 wait_healthy: bool = True, timeout: float = 180) -> ServerProcess:
    """Start `python -m server` exactly as `make run` does, on a free loopback port."""
    return local_server.start_server(tmp_dir, extra_env, wait_healthy, timeout)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server for the whole session (read-only use: tests must not stop it)."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail(f"{MODEL_DIR} is missing: run `make model` (make test does)")
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_url(server: ServerProcess) -> str:
    return server.url
