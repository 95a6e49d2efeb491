"""The exact lane: requests the batched step cannot reproduce run through `model.generate`.

Beam search, constrained or grouped beams, bad-words lists and every other `GenerationConfig`
option outside `GenerationParams`' named fields keep working this way: the `generate_kwargs`
surface never shrinks. The lane has its own thread so a long beam search does not stall the
running batch; requests whose parameters match share one left-padded `generate` call.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

import torch

from server.engine.request import GenerationParams, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.worker import QueueWorker

log = logging.getLogger(__name__)

# `extra` options whose value changes nothing for a batched sampling/greedy step.
_NEUTRAL: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "remove_invalid_values": False,
    "renormalize_logits": False,
}
_BEAM_ONLY = {"early_stopping", "length_penalty"}  # meaningless without beams


def needs_exact_generate(params: GenerationParams) -> bool:
    """True when the batched decode step cannot apply these parameters exactly."""
    extra = params.extra_dict
    if int(extra.get("num_beams") or 1) > 1:
        return True
    if params.num_return_sequences > 1 and not params.do_sample:
        return True
    for key, value in extra.items():
        if key in _BEAM_ONLY:
            continue
        if key in _NEUTRAL and value == _NEUTRAL[key]:
            continue
        return True
    return False


def batch_key(params: GenerationParams) -> str:
    """Requests with equal keys can share one generate call (seeded sampling runs alone)."""
    fields = params.generate_kwargs()
    fields["logprobs"] = (params.logprobs, params.top_logprobs)
    fields["stop"] = params.stop
    if params.do_sample and params.seed is not None:
        fields["seed"] = params.seed
        fields["_alone"] = id(params)
    return json.dumps(fields, sort_keys=True, default=str)


class ExactLane(QueueWorker):
    """A FIFO of requests served one `generate` call at a time on a thread of its own."""

    def __init__(self, runner: ModelRunner, max_batch_size: int = 8, window_s: float = 0.005,
                 max_prefill_tokens: int = 4096) -> None:
        super().__init__("exact-generate")
        self.runner = runner
        self.max_batch_size = max_batch_size
        # beams multiply the rows of one generate call: bound its padded prefill as the batch does
        self.max_prefill_tokens = max_prefill_tokens
        self.window_s = window_s
        self.running = 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            self._waiting.append(request)
            self._cond.notify()

    def _take_group(self) -> list[GenerationRequest]:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if not self._waiting:
                return []
        time.sleep(self.window_s)  # let simultaneous arrivals join
        with self._cond:
            live = [r for r in self._waiting if not drop_cancelled(r) and not drop_expired(r)]
            self._waiting.clear()
            if not live:
                return []
            first = live[0]
            key = batch_key(first.params)
            group = [first]
            widest = first.prompt_tokens
            rest: deque[GenerationRequest] = deque()
            for r in live[1:]:
                wide = max(widest, r.prompt_tokens)
                fits = (len(group) < self.max_batch_size
                        and (len(group) + 1) * _rows(r) * wide <= self.max_prefill_tokens)
                if fits and batch_key(r.params) == key:
                    group.append(r)
                    widest = wide
                else:
                    rest.append(r)
            self._waiting = rest
        return group

    def _run(self) -> None:
        while True:
            group = self._take_group()
            if not group:
                if self._stopping and not self._waiting:
                    return
                continue
            self.running = sum(r.params.num_return_sequences for r in group)
            try:
                with self.runner.loaded.exclusive():
                    self.runner.generate(group)
            except Exception as exc:  # one failed call fails its requests, not the server
                log.exception("exact generate failed for %d request(s)", len(group))
                fail_requests(group, exc)
            finally:
                self.running = 0


class InvalidDistribution(ValueError):
    def __init__(self) -> None:
        super().__init__("the sampling parameters produced an invalid probability distribution "
                         "(try a larger temperature or looser top_p/typical_p/cutoffs)")


def is_client_fault(exc: BaseException) -> bool:
    """Whether a generation failure comes from the request's own parameters (a 4xx), not the server.

    Out-of-memory is the server's; transformers rejecting an option or sampling from a distribution
    that the options broke is the request's.
    """
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return False
    if isinstance(exc, ValueError | TypeError | IndexError | KeyError | AttributeError):
        return True
    return isinstance(exc, RuntimeError) and any(
        m in str(exc) for m in ("probability tensor", "Could not infer dtype", "index out of range"))


def fail_requests(requests: list[GenerationRequest], exc: Exception) -> None:
    client = is_client_fault(exc)
    for r in requests:
        if not r.stream.closed.is_set():
            r.stream.fail(f"generation failed: {type(exc).__name__}: {exc}" if client
                          else "generation failed", client_error=client)


def _rows(r: GenerationRequest) -> int:
    """Rows one request occupies inside `generate` (beams and returned sequences)."""
    return max(int(r.params.extra_dict.get("num_beams") or 1), r.params.num_return_sequences)


def drop_expired(r: GenerationRequest) -> bool:
    """End a request whose deadline passed while it queued, without running it."""
    if r.deadline is not None and time.monotonic() > r.deadline:
        for i in range(r.params.num_return_sequences):
            r.stream.finish(i, "timeout")
        return True
    return False


def drop_cancelled(r: GenerationRequest) -> bool:
    if r.stream.cancelled:
        for i in range(r.params.num_return_sequences):
            r.stream.finish(i, "cancelled")
        return True
    return False
