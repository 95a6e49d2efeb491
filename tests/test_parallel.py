"""The rule that spreads `make test` over pytest-xdist workers (tests/support/parallel.py)."""

from __future__ import annotations

from tests.support import parallel
from tests.support.servers import ROOT

GIB = 2**30


def test_one_worker_per_core_within_memory_and_the_cap() -> None:
    assert parallel.worker_count(2, 24 * GIB) == 2  # the CI machine: cores bound it
    assert parallel.worker_count(16, 24 * GIB) == 4  # memory bounds it
    assert parallel.worker_count(64, 512 * GIB) == parallel.MAX_WORKERS
    assert parallel.worker_count(1, 2 * GIB) == 1  # never none


def test_the_cores_are_shared_evenly() -> None:
    assert parallel.threads_per_worker(2, 2) == 1
    assert parallel.threads_per_worker(16, 4) == 4
    assert parallel.threads_per_worker(2, 4) == 1


def test_the_longest_modules_go_first_and_the_rest_keep_their_order() -> None:
    first = parallel.FIRST[0]
    modules = sorted(["tests/b.py", first, "tests/a.py"], key=parallel.position)
    assert modules == [first, "tests/b.py", "tests/a.py"]


def test_the_first_modules_exist() -> None:
    """A renamed module in FIRST would only lose its place in the order: keep the list true."""
    for name in parallel.FIRST:
        assert (ROOT / name).is_file(), name
