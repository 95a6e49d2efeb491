"""How `make test` spreads the suite over pytest-xdist workers (`-n auto --dist loadfile`).

The rule, made on the machine that runs the tests: one worker per core, at most one per
`MEMORY_PER_WORKER` of memory (a worker holds the model in-process while the servers it starts
hold their own), and at most `MAX_WORKERS` (each worker starts its own copy of a session's shared
servers). The cores are then shared evenly: each worker, and every server it starts, gets
`cores // workers` torch threads, so the workers never oversubscribe the machine.

Each module runs whole on one worker (its module fixtures start once), in `position` order:
those with the longest tests first, so that the workers finish together. (xdist's `loadgroup`
would also keep the tests of a shared session server on one worker, but it marks groups in a way
this pytest no longer reads.)
"""

from __future__ import annotations

import os

MEMORY_PER_WORKER = 6 * 2**30
MAX_WORKERS = 8
# The modules with the longest tests go first (xdist hands each worker the next module as it frees
# up); any module not named here follows in collection order. docs/development.md has the durations.
FIRST = (
    "tests/bench/test_quality.py",
    "tests/adapters/test_mixed_batches.py",
    "tests/integration/test_fuzz_openapi.py",
    "tests/engine/test_continuous_batching.py",
    "tests/integration/test_tensor_parallel.py",
    "tests/integration/test_adapters_api.py",
    "tests/integration/test_quantization.py",
    "tests/integration/test_handlers.py",
    "tests/adapters/test_kernels_and_quantization.py",
    "tests/engine/test_speculative.py",
    "tests/engine/test_constraints.py",
    "tests/bench/test_gpu_smoke.py",
    "tests/model/test_plan.py",
)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def worker_count(cores: int, memory: int) -> int:
    return max(1, min(cores, memory // MEMORY_PER_WORKER, MAX_WORKERS))


def threads_per_worker(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


def position(module: str) -> int:
    """Where a module (its path from the repository root) goes: FIRST's in their order, then every
    other module (a stable sort keeps those in collection order)."""
    return FIRST.index(module) if module in FIRST else len(FIRST)
