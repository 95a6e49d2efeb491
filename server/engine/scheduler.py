"""The scheduler: the one thread that owns the running batch (iteration-level continuous batching).

HTTP threads call `submit` and wait on the request's stream. At every step the scheduler thread
(1) ends rows whose client went away or whose deadline passed, (2) admits waiting requests in FIFO
order as one group while they fit `max_batch_size` rows and the `max_batch_tokens` budget (counted
with padding, `B x T_max`, up to each row's last possible token), prefills the group and merges it
into the running batch, (3) runs one decode step for every row and streams each row's token, and
(4) drops finished rows at once so their slots are reused. Requests the batched step cannot do
exactly go to the exact `generate` lane (fallback.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from server.engine.batch import Batch, Prefix, Row, supports_batching
from server.engine.detokenize import IncrementalDetokenizer
from server.engine.fallback import (
    ExactLane,
    InvalidDistribution,
    drop_cancelled,
    drop_expired,
    fail_requests,
    needs_exact_generate,
)
from server.engine.request import FinishReason, GenerationRequest
from server.engine.runner import ModelRunner
from server.engine.sampling import RowSampler, choose
from server.engine.worker import QueueWorker

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than MAX_QUEUED_REQUESTS allows."""


class EngineUnavailable(RuntimeError):
    """The engine is not running (not loaded yet, draining, or its thread died)."""


@dataclass
class SchedulerStats:
    """Counters for tests and debugging (not exported: the metrics module has the public series)."""

    steps: int = 0  # decode steps
    prefills: int = 0  # admitted groups
    peak_rows: int = 0  # most rows decoded in one step
    peak_tokens: int = 0  # largest padded cache, rows x width, seen in a decode step
    prefix_rows: int = 0  # rows prefilled on top of a shared prefix


class Scheduler(QueueWorker):
    def __init__(self, runner: ModelRunner, max_batch_size: int = 32, window_s: float = 0.005,
                 max_queued: int = 256, max_batch_tokens: int = 16384,
                 on_path: Callable[[str], None] | None = None, batching: bool | None = None,
                 max_prefill_tokens: int = 4096,
                 on_step: Callable[[str, int, float], None] | None = None,
                 prefix_min_tokens: int = 16, prefix_slots: int = 4) -> None:
        super().__init__("scheduler")
        self.runner = runner
        self.model = runner.loaded.model
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        # One prefill forward is not interruptible: bound its padded size, so that a flood of long
        # prompts is admitted over several steps (deadlines and cancellations are seen in between)
        # and the running rows keep getting tokens.
        self.max_prefill_tokens = max_prefill_tokens
        self.window_s = window_s
        self.max_queued = max_queued
        self.on_path = on_path  # metrics hook: which path a request took ("batched" or "generate")
        self.on_step = on_step  # metrics hook: (kind "prefill"/"decode", rows, seconds) per forward
        if batching is None:
            batching, why = supports_batching(self.model)
            if not batching:
                log.info("continuous batching off, every request uses exact generate: %s", why)
        self.batching = batching
        self.exact = ExactLane(runner, max_batch_size, window_s, max_prefill_tokens)
        # Shared prompt prefixes (a chat template's system prompt, few-shot examples): their
        # keys/values are computed once and copied into each new row instead of recomputed.
        # 0 turns this off. A few are kept, least recently used first out.
        self.prefix_min_tokens = prefix_min_tokens
        self.prefix_slots = prefix_slots
        self._prefixes: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._last_prompt: list[int] | None = None
        self._batch: Batch | None = None
        self.stats = SchedulerStats()
        out = self.model.get_output_embeddings()
        self._logits_device = out.weight.device if out is not None else runner.loaded.device

    def start(self) -> None:
        self.exact.start()
        super().start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.exact.alive and not self._stopping

    @property
    def queue_depth(self) -> int:
        return super().queue_depth + self.exact.queue_depth

    @property
    def running(self) -> int:
        """Rows in the running batch plus sequences in the exact lane's current call."""
        batch = self._batch
        return (len(batch) if batch is not None else 0) + self.exact.running

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if self._stopping or not self._thread.is_alive():
                raise EngineUnavailable("the engine is not running")
            if self.queue_depth >= self.max_queued:
                raise QueueFull(f"{self.queue_depth} requests are already waiting")
            self._waiting.append(request)
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self.exact.stop(timeout)

    # the loop
    def _run(self) -> None:
        with torch.inference_mode():
            while self._wait_for_work():
                try:
                    self._step()
                except Exception as exc:  # a bug in bookkeeping: fail the batch, keep the loop alive
                    log.exception("scheduler step failed")
                    if self._batch:
                        fail_requests(_requests(self._batch.rows), exc)
                    self._batch = None

    def _path(self, path: str) -> None:
        if self.on_path is not None:
            self.on_path(path)

    def _stepped(self, kind: str, rows: int, started: float) -> None:
        if self.on_step is not None:
            self.on_step(kind, rows, time.perf_counter() - started)

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._waiting and not self._batch and not self._stopping:
                self._cond.wait()
            if not self._waiting and not self._batch:
                return False  # stopping, nothing left
            idle = not self._batch
        if idle and self.window_s > 0:
            time.sleep(self.window_s)  # let simultaneous arrivals share one prefill
        return True

    def _step(self) -> None:
        self._reap()
        group = self._admit()
        if group:
            self._prefill(group)
        batch = self._batch
        if batch:
            st = self.stats
            st.steps += 1
            st.peak_rows = max(st.peak_rows, len(batch))
            st.peak_tokens = max(st.peak_tokens, len(batch) * (batch.width + 1))
            try:
                started = time.perf_counter()
                rows = len(batch)
                with self.runner.loaded.exclusive():
                    logits = batch.decode(self.model)
                self._advance(batch, logits)
                self._stepped("decode", rows, started)
            except Exception as exc:  # fail this step's requests; keep serving the queue
                log.exception("decode step failed for %d row(s)", len(batch))
                fail_requests(_requests(batch.rows), exc)
                self._batch = None

    def _admit(self) -> list[GenerationRequest]:
        """Pop the FIFO head group that fits the free rows and the token budget."""
        current = self._batch.rows if self._batch else []
        rows = len(current)
        widest = max((r.bound for r in current), default=0)
        group: list[GenerationRequest] = []
        group_rows = prompt_width = 0
        with self._cond:
            while self._waiting:
                req = self._waiting[0]
                if drop_cancelled(req) or drop_expired(req):  # no prefill for nothing
                    self._waiting.popleft()
                    continue
                if not self.batching or needs_exact_generate(req.params):
                    self._waiting.popleft()
                    self._path("generate")
                    self.exact.submit(req)
                    continue
                n = req.params.num_return_sequences
                width = max(widest, req.prompt_tokens + req.params.max_new_tokens)
                if rows and (rows + n > self.max_batch_size or (rows + n) * width > self.max_batch_tokens):
                    break  # FIFO: later requests wait behind the head
                prompt = max(prompt_width, req.prompt_tokens)
                if group and (group_rows + n) * prompt > self.max_prefill_tokens:
                    break  # the rest joins at a later step
                self._waiting.popleft()
                group.append(req)
                rows, widest = rows + n, width
                group_rows, prompt_width = group_rows + n, prompt
        for _ in group:
            self._path("batched")
        return group

    def _prefill(self, group: list[GenerationRequest]) -> None:
        rows = [self._row(req, j) for req in group for j in range(req.params.num_return_sequences)]
        self.stats.prefills += 1
        try:
            started = time.perf_counter()
            with self.runner.loaded.exclusive():
                prefix = self._shared_prefix(group)
                fresh, logits = Batch.prefill(self.model, rows, self.runner.loaded.pad_token_id, prefix)
            if prefix is not None:
                self.stats.prefix_rows += len(rows)
            self._advance(fresh, logits)
            self._stepped("prefill", len(rows), started)
        except Exception as exc:  # fail the newcomers only; the running batch is untouched
            log.exception("prefill failed for %d request(s)", len(group))
            fail_requests(group, exc)
            return
        if not fresh:
            return
        if self._batch:
            try:
                self._batch.concatenate(fresh)
            except Exception as exc:
                log.exception("merging %d row(s) into the batch failed", len(fresh))
                fail_requests(_requests(self._batch.rows + fresh.rows), exc)
                self._batch = None
        else:
            self._batch = fresh

    def _shared_prefix(self, group: list[GenerationRequest]) -> Prefix | None:
        """A cached prefix that starts every prompt of the group, or a new one when the group's
        prompts (or a lone prompt and the one before it) share at least `prefix_min_tokens`."""
        if not self.prefix_min_tokens:
            return None
        prompts = [r.input_ids for r in group]
        previous, self._last_prompt = self._last_prompt, prompts[-1]
        best = max((p for p in self._prefixes.values() if all(p.covers(ids) for ids in prompts)),
                   key=len, default=None)
        if best is not None:
            self._prefixes.move_to_end(best.ids)
            return best
        others = prompts if len(prompts) > 1 else prompts + ([previous] if previous else [])
        if len(others) < 2:
            return None
        n = min(_common_prefix_len(others), min(len(ids) for ids in prompts) - 1)
        if n < self.prefix_min_tokens:
            return None
        prefix = Prefix.compute(self.model, prompts[0][:n])
        self._prefixes[prefix.ids] = prefix
        while len(self._prefixes) > self.prefix_slots:
            self._prefixes.popitem(last=False)
        return prefix

    def _row(self, req: GenerationRequest, index: int) -> Row:
        detok = None
        if req.params.stop:
            detok = IncrementalDetokenizer(self.runner.loaded.tokenizer)
        sampler = RowSampler(req.params, req.input_ids, index, self._logits_device)
        return Row(req, index, sampler, length=req.prompt_tokens, detok=detok)

    def _advance(self, batch: Batch, logits: torch.Tensor) -> None:
        """Choose, stream and check one token per row; drop the rows that finished."""
        rows = batch.rows
        want = [r.request.params.top_logprobs if r.request.params.logprobs else -1 for r in rows]
        choice = choose(logits, [r.sampler for r in rows], want)
        if choice.invalid:
            failed = {id(rows[i].request) for i in choice.invalid}
            fail_requests([rows[i].request for i in choice.invalid], InvalidDistribution())
        else:
            failed = set()
        keep: list[int] = []
        for i, row in enumerate(rows):
            if id(row.request) in failed:
                continue
            token = choice.tokens[i]
            lp, top = choice.logprobs[i], choice.top_logprobs[i]
            reason = row.accept(token)
            row.request.stream.push(row.index, [token], None if lp is None else [lp],
                                    None if top is None else [top])
            if reason is not None:
                _finish(row, reason)
            else:
                keep.append(i)
        batch.set_next(choice.tokens)
        batch.filter(keep)

    def _reap(self) -> None:
        """End rows whose client cancelled or whose deadline passed, before spending a step on them."""
        batch = self._batch
        if not batch:
            return
        now = time.monotonic()
        keep: list[int] = []
        for i, row in enumerate(batch.rows):
            req = row.request
            if req.stream.cancelled:
                _finish(row, "cancelled")
            elif req.deadline is not None and now > req.deadline:
                _finish(row, "timeout")
            else:
                keep.append(i)
        batch.filter(keep)


def _finish(row: Row, reason: FinishReason) -> None:
    if row.finish is None:
        row.finish = reason
        row.request.stream.finish(row.index, reason)


def _common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n


def _requests(rows: list[Row]) -> list[GenerationRequest]:
    seen: dict[str, GenerationRequest] = {}
    for r in rows:
        seen.setdefault(r.request.id, r.request)
    return list(seen.values())
