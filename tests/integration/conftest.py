"""Servers that several integration modules share (a module whose tests need a server of their own,
one they stop or configure otherwise, starts it itself)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.servers import API_KEY, KEYED_LIMITS, MODEL_DIR, ServerProcess, start_server


@pytest.fixture(scope="session")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The real server behind two API keys (`API_KEY` and `second-key`), with tight limits
    (`KEYED_LIMITS`) and debug logging: the hardening tests and the chat page use it (read-only:
    tests must not stop it)."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail("run `make model`")
    srv = start_server(tmp_path_factory.mktemp("keyed"), {
        "API_KEYS": f"{API_KEY},second-key",
        **{name: str(value) for name, value in KEYED_LIMITS.items()},
        "REQUEST_TIMEOUT_S": "120",
        "LOG_LEVEL": "debug",
        "TRANSFORMERS_VERBOSITY": "debug",
    })
    yield srv
    srv.stop()
