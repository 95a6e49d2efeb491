"""The engine in lock-step across tensor-parallel ranks: what rank 0 tells the others, and how.

Rank 0 runs the policy, samples every token and keeps the requests; each other rank keeps only a
copy of the KV cache (its own share of the heads) and runs the same forwards. So that the copies
stay equal, rank 0's runner describes each change it makes to its batches as an `Op`: cache
surgery (`Filter`, `Merge`, `Accept`, `SetNext`, ...) is queued with `note` and travels with the
next forward's op (`Prefill`, `Decode`, `Exact`, `Score`) in one broadcast. One message per forward
keeps the cost per step to one small broadcast on the CPU's gloo group, timed in
`inferbox_tensor_parallel_broadcast_seconds`.

Rank 0 samples and sends the tokens (in `SetNext`, after the fact) rather than every rank sampling:
the other ranks then need no sampler, no constraint and no random state, and cannot drift.

Faults: under tensor parallelism any error inside a forward, or any failed or timed-out broadcast,
is `RankLost`. It is a BaseException so that no per-request `except Exception` in the runner takes
it for one request's failure: the ranks may no longer agree on the cache, so the engine stops and
the process exits (server/engine/engine.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from server.engine.step import PrefixKey

log = logging.getLogger(__name__)

Slot = str  # "batch" (the running batch) or "fresh" (prefilled last step, merged at the next)


class RankLost(BaseException):  # noqa: N818 - a condition, like SystemExit
    """The ranks are out of step: a rank died, a collective timed out, or a forward failed."""


# what rank 0 tells the other ranks (plain data: it is pickled)
@dataclass
class Filter:
    slot: Slot
    keep: list[int]


@dataclass
class Clear:
    slot: Slot


@dataclass
class Merge:
    """Append the fresh rows to the running batch."""


@dataclass
class KeepPrefixes:
    keys: tuple[PrefixKey, ...]


@dataclass
class SetNext:
    slot: Slot
    tokens: list[int]


@dataclass
class Accept:
    kept: list[int]


@dataclass
class Prefill:
    prompts: list[list[int]]
    prefix: tuple[int, ...] | None
    adapters: list[str | None]


@dataclass
class Decode:
    drafts: list[list[int]] | None  # None: a plain decode step; else a speculative verify step


@dataclass
class Exact:
    """One `generate` call; `ExactStep`s follow, one per generated position."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    config: dict[str, Any]
    seed: int


@dataclass
class ExactStep:
    tokens: list[int] | None  # each row's token this step (None for beam search: nothing to force)
    done: list[bool]


@dataclass
class Score:
    input_ids: list[int]


@dataclass
class Stop:
    """Rank 0 is shutting down: the other ranks exit cleanly."""


Op = Filter | Clear | Merge | KeepPrefixes | SetNext | Accept | Prefill | Decode | Exact | Score | Stop
FORWARDS = (Prefill, Decode, Exact, Score)


class Channel:
    """Broadcasts from rank 0 over the control group. Any failure is `RankLost`."""

    def __init__(self, group: Any, on_send: Callable[[float], None] | None = None) -> None:
        self.group = group
        self.on_send = on_send  # metrics hook: seconds per broadcast

    def send(self, message: Any) -> None:
        started = time.perf_counter()
        try:
            dist.broadcast_object_list([message], src=0, group=self.group)
        except Exception as exc:
            raise RankLost(f"broadcasting to the other ranks failed: {exc}") from exc
        if self.on_send is not None:
            self.on_send(time.perf_counter() - started)

    def recv(self) -> Any:
        box: list[Any] = [None]
        try:
            dist.broadcast_object_list(box, src=0, group=self.group)
        except Exception as exc:
            raise RankLost(f"waiting for rank 0 failed: {exc}") from exc
        return box[0]


@dataclass
class Leader:
    """Rank 0's side: the runner notes cache surgery and announces each forward."""

    channel: Channel
    pending: list[Op] = field(default_factory=list)
    exact_steps: int = 0  # steps of the current exact `generate` call sent so far

    def note(self, op: Op) -> None:
        self.pending.append(op)

    def flush(self, op: Op | None = None) -> None:
        """Send what is pending (and `op`): a heartbeat when there is nothing."""
        ops, self.pending = self.pending, []
        if op is not None:
            ops.append(op)
        self.channel.send(ops)

    @contextlib.contextmanager
    def forward(self, op: Op) -> Iterator[None]:
        """Announce a forward, then run it (the body): any error in it is RankLost, since the other
        ranks ran (or wait in) the same collectives."""
        self.flush(op)
        try:
            yield
        except Exception as exc:
            raise RankLost(f"a forward failed under tensor parallelism: {type(exc).__name__}: {exc}") from exc

    def start_exact(self, op: Exact) -> None:
        """Announce a `generate` call. An error before its first step is the same on every rank
        (transformers validating its inputs) and fails only its requests; after it, it is RankLost."""
        self.exact_steps = 0
        self.flush(op)

    def step(self, tokens: list[int] | None, done: list[bool]) -> None:
        """One position of an exact `generate` call (sent from its stopping criterion)."""
        self.channel.send(ExactStep(tokens, done))
        self.exact_steps += 1

    def stop(self) -> None:
        self.flush(Stop())
