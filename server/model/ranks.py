"""The ranks of a tensor-parallel server: joining the `torch.distributed` group, one process per rank.

The ranks find each other the way `torchrun` does, from `WORLD_SIZE`, `RANK`, `LOCAL_RANK`,
`MASTER_ADDR` and `MASTER_PORT` (`python -m server` sets them when it starts the ranks of one
machine itself; torchrun and a LeaderWorkerSet set them across machines). The model's collectives
use NCCL on CUDA and gloo on the CPU. Engine messages (what each step runs, `lockstep.py`) go over
a second, gloo-only group, so that they never queue behind a forward on the GPU stream and a
message can never pair up with a model collective.

Every collective, on both groups, gives up after TENSOR_PARALLEL_TIMEOUT_S: a rank that died or
hangs turns into an error on the others, never a wait without end.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from server.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks, and the group engine messages travel on."""

    rank: int
    world: int
    local_rank: int
    backend: str
    control: Any = None  # the gloo process group for engine messages (None when world == 1)

    @property
    def leader(self) -> bool:
        """Rank 0: serves HTTP and runs the scheduling policy; the others follow it."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE = Ranks(rank=0, world=1, local_rank=0, backend="none")


def cpu_threads_per_rank(local_world: int) -> int:
    """Torch threads for one CPU rank when TORCH_THREADS is unset: the cores this process may use,
    shared evenly by the ranks of this machine (each rank's own thread pool would otherwise take
    every core, and N ranks would run N times oversubscribed)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world))


def join(s: Settings) -> Ranks:
    """Join the process group as this process's rank (blocks until every rank has joined, at most
    TENSOR_PARALLEL_TIMEOUT_S)."""
    world, rank, local_rank = s.tensor_parallel, s.rank or 0, s.local_rank
    local_world, timeout_s = s.local_world_size or world, s.tensor_parallel_timeout_s
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    elif s.torch_threads <= 0:
        torch.set_num_threads(cpu_threads_per_rank(local_world))
    timeout = timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    # a group of its own even on gloo: a message and a model collective never pair up by mistake
    control = dist.new_group(backend="gloo", timeout=timeout)
    log.info("tensor parallel: rank %d of %d joined (%s, local rank %d, %d torch threads, collective "
             "timeout %.0f s)", rank, world, backend, local_rank, torch.get_num_threads(), timeout_s)
    return Ranks(rank=rank, world=world, local_rank=local_rank, backend=backend, control=control)


def leave() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone: nothing left to tear down cleanly
            log.debug("destroying the process group failed", exc_info=True)
