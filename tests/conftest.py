"""Shared fixtures: the real server (gunicorn, a free port, the embedded model); and how the suite
is spread over pytest-xdist workers (tests/support/parallel.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import parallel
from tests.support.servers import MODEL_DIR, ROOT, ServerProcess, start_server

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # an xdist worker, before anything imports torch
    os.environ.setdefault("OMP_NUM_THREADS", str(parallel.threads_per_worker(
        parallel.usable_cores(), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    return parallel.worker_count(parallel.usable_cores(), parallel.memory_bytes())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the modules by parallel.position (run with --no-loadscope-reorder, xdist
    hands them out in this order); the sort is stable, so a module's own tests keep their order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    items.sort(key=lambda item: parallel.position(item.path.relative_to(ROOT).as_posix()))


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


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ADAPTERS_DIR with three real peft LoRA adapters for the embedded model, as Kaito mounts
    them: `adapter1` (rank 4), `adapter2` (rank 4), `adapter3` (rank 8), seeded, q_proj/v_proj."""
    from tools.adapters import make_adapters

    root = tmp_path_factory.mktemp("adapters")
    make_adapters(MODEL_DIR, root, n=3)
    return root


@pytest.fixture(scope="session")
def foreign_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapters trained for other base models: `shape` (a narrower llama) and `modules` (GPT-2's
    module names); each folder is complete and valid for its own base."""
    from tools.adapters import make_foreign_adapters

    return make_foreign_adapters(tmp_path_factory.mktemp("foreign-adapters"))
