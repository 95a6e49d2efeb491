"""The scheduling policy: which requests run in the next step, and what their tokens mean.

No torch, no thread, no clock of its own (it is given one): `schedule()` hands back a `Step`
(plain data), the model runner executes it, and `update(step, output)` takes back the sampled
tokens, streams them with the text they release (each sequence's `StopChecker`: text is decoded
once, here, and stop strings are matched on it) and decides which sequences end. Its decisions, in
order:
- sequences whose client cancelled or whose deadline passed end before a step is spent on them;
- requests the batched step cannot reproduce exactly go to the exact lane (`needs_exact`), where
  requests with equal parameters share one `generate` call;
- waiting requests are admitted in FIFO order as one prefill group while they fit `max_batch_size`
  rows and the `max_batch_tokens` budget (counted with padding, rows x longest possible sequence),
  and the group's padded prompts stay under `max_prefill_tokens`;
- a group whose prompts share at least `prefix_min_tokens` leading tokens (a chat template's system
  prompt) reuses that prefix's keys/values, kept for the last `prefix_slots` prefixes of each
  adapter: every adapter has its own keys/values for a prefix (never shared across adapters);
- after a prefill or an exact call comes a decode step for the running rows, so a flood of
  arrivals never starves them.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from server.engine.errors import QueueFull
from server.engine.request import FinishReason, GenerationParams, GenerationRequest
from server.engine.step import EndRules, PrefixKey, Sequence, Step, StepKind, StepOutput
from server.engine.stops import StopChecker, finish_reason

# `extra` options whose value changes nothing for a batched sampling/greedy step.
_NEUTRAL: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "remove_invalid_values": False,
    "renormalize_logits": False,
}
_BEAM_ONLY = {"early_stopping", "length_penalty"}  # meaningless without beams


def needs_exact(params: GenerationParams) -> bool:
    """True when the batched decode step cannot apply these parameters exactly (beams, bad words,
    any other `GenerationConfig` option outside `GenerationParams`' named fields)."""
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


def exact_key(params: GenerationParams, adapter: str | None = None) -> str:
    """Requests with equal keys can share one exact `generate` call (one adapter per call; seeded
    sampling runs alone)."""
    fields = params.generate_kwargs()
    fields["adapter"] = adapter
    fields["logprobs"] = (params.logprobs, params.top_logprobs)
    fields["stop"] = params.stop
    if params.do_sample and params.seed is not None:
        fields["seed"] = params.seed
        fields["_alone"] = id(params)
    return json.dumps(fields, sort_keys=True, default=str)


def exact_rows(r: GenerationRequest) -> int:
    """Rows one request occupies inside `generate` (beams and returned sequences)."""
    return max(int(r.params.extra_dict.get("num_beams") or 1), r.params.num_return_sequences)


@dataclass
class PolicyStats:
    """Counters for tests and debugging (the metrics module has the public series)."""

    steps: int = 0  # decode steps
    prefills: int = 0  # admitted groups
    peak_rows: int = 0  # most rows decoded in one step
    peak_tokens: int = 0  # largest padded cache, rows x width, in a decode step
    prefix_rows: int = 0  # rows prefilled on top of a shared prefix
    exact_calls: int = 0  # exact `generate` calls


@dataclass
class PolicyLimits:
    max_batch_size: int = 32
    max_batch_tokens: int = 16384
    # One prefill forward is not interruptible: bound its padded size, so that a flood of long
    # prompts is admitted over several steps and the running rows keep getting tokens.
    max_prefill_tokens: int = 4096
    max_queued: int = 256
    prefix_min_tokens: int = 16  # 0 turns prefix reuse off
    prefix_slots: int = 4


class Policy:
    def __init__(self, limits: PolicyLimits | None = None, *, batching: bool = True,
                 text_checker: Callable[[GenerationRequest], StopChecker] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_path: Callable[[str], None] | None = None) -> None:
        self.limits = limits or PolicyLimits()
        self.batching = batching  # False: the model's cache surgery is not proven; all go exact
        self._text_checker = text_checker  # None: no tokenizer (tests of tokens alone), no text
        self._clock = clock
        self._on_path = on_path  # metrics hook: which path a request took ("batched" or "exact")
        self.waiting: deque[GenerationRequest] = deque()
        self.exact_waiting: deque[GenerationRequest] = deque()
        self.running: list[Sequence] = []
        self._leaving: list[Sequence] = []  # ended since the last step; the runner drops them
        self._exact_in_flight = 0
        self._last: StepKind = "idle"
        self._prefixes: OrderedDict[PrefixKey, None] = OrderedDict()
        self._last_prompt: list[int] | None = None
        self.stats = PolicyStats()
        self._rules = EndRules(self.checker, self.judge, self.gone, self.end)  # handed to the exact lane

    # what the engine loop and the metrics read
    @property
    def queue_depth(self) -> int:
        return len(self.waiting) + len(self.exact_waiting)

    @property
    def active(self) -> int:
        """Sequences in the running batch plus those in the exact call in flight."""
        return len(self.running) + self._exact_in_flight

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.exact_waiting or self.running or self._leaving)

    def add(self, request: GenerationRequest) -> None:
        if self.queue_depth >= self.limits.max_queued:
            raise QueueFull(f"{self.queue_depth} requests are already waiting")
        self.waiting.append(request)

    # one step
    def schedule(self) -> Step:
        self._reap()
        drop, self._leaving = self._leaving, []
        if self.running and self._last != "decode":
            step = self._decode_plan(drop)
        else:
            self._route()
            exact = self._exact_group() if self.exact_waiting else []
            if exact:
                step = Step("exact", drop, exact=exact, rules=self._rules)
                self._exact_in_flight = sum(r.params.num_return_sequences for r in exact)
                self.stats.exact_calls += 1
            else:
                group = self._admit()
                if group:
                    step = self._prefill_plan(drop, group)
                elif self.running:
                    step = self._decode_plan(drop)
                else:
                    step = Step("idle", drop)
        step.prefixes = tuple(self._prefixes)
        self._last = step.kind
        return step

    def update(self, step: Step, out: StepOutput) -> None:
        """Take back the step's tokens: stream them, end the sequences that finished or failed."""
        self._exact_in_flight = 0
        for request, exc in out.failed:
            request.stream.fail_with(exc)
        failed = {id(r) for r, _ in out.failed}
        if step.kind == "prefill":
            self.running.extend(step.rows)
        for s in out.sampled:
            seq = s.seq
            if seq.finish is not None or id(seq.request) in failed:
                continue
            seq.generated.append(s.token)
            text = seq.checker.add([s.token]) if seq.checker is not None else ""
            seq.request.stream.push(seq.index, [s.token], None if s.logprob is None else [s.logprob],
                                    None if s.top_logprobs is None else [s.top_logprobs], text)
            reason = self.judge(seq.request, len(seq.generated), s.token, seq.checker)
            if reason is not None:
                self._end(seq, reason)
        if failed:
            for seq in self.running:
                if id(seq.request) in failed and seq.finish is None:
                    seq.finish = "error"
                    self._leaving.append(seq)
        self.running = [seq for seq in self.running if seq.finish is None]

    def fail_step(self, step: Step | None, exc: BaseException) -> None:
        """A step failed outside the runner's own isolation: fail every running sequence and
        whatever the step was bringing in (so no request is left waiting)."""
        seqs = self.running + (step.rows if step is not None and step.kind == "prefill" else [])
        for seq in seqs:
            seq.request.stream.fail_with(exc)
            seq.finish = "error"
        for req in step.exact if step is not None else []:
            req.stream.fail_with(exc)
        self._leaving.extend(seqs)
        self.running = []
        self._exact_in_flight = 0

    # decisions (both lanes: the exact lane is handed them as `Step.rules`)
    def checker(self, request: GenerationRequest) -> StopChecker | None:
        """The text of one of the request's sequences, with its stop strings (None without a tokenizer)."""
        return None if self._text_checker is None else self._text_checker(request)

    def judge(self, request: GenerationRequest, generated: int, token: int,
              checker: StopChecker | None) -> FinishReason | None:
        """Whether a sequence ends after its `generated`-th token."""
        return finish_reason(request.params, generated, token, checker) or self.gone(request)

    def gone(self, request: GenerationRequest) -> FinishReason | None:
        """Whether a request was given up: its client went away or its deadline passed."""
        if request.stream.cancelled:
            return "cancelled"
        if request.deadline is not None and self._clock() > request.deadline:
            return "timeout"
        return None

    @staticmethod
    def end(request: GenerationRequest, index: int, reason: FinishReason,
            checker: StopChecker | None) -> None:
        """End a sequence: its finish event carries the text its checker still held back."""
        request.stream.finish(index, reason, checker.flush() if checker is not None else "")

    def _end(self, seq: Sequence, reason: FinishReason) -> None:
        if seq.finish is None:
            seq.finish = reason
            self.end(seq.request, seq.index, reason, seq.checker)
            self._leaving.append(seq)

    def _reap(self) -> None:
        for seq in self.running:
            reason = self.gone(seq.request)
            if reason is not None:
                self._end(seq, reason)
        self.running = [seq for seq in self.running if seq.finish is None]

    def _gone(self, req: GenerationRequest) -> bool:
        """End a queued request that was cancelled or expired, without running it."""
        reason = self.gone(req)
        if reason is None:
            return False
        for i in range(req.params.num_return_sequences):
            self.end(req, i, reason, None)
        return True

    def _path(self, path: str) -> None:
        if self._on_path is not None:
            self._on_path(path)

    def _route(self) -> None:
        """Move the waiting requests the batched step cannot run to the exact lane's queue."""
        if not any(not self.batching or needs_exact(r.params) for r in self.waiting):
            return
        keep: deque[GenerationRequest] = deque()
        for req in self.waiting:
            if not self.batching or needs_exact(req.params):
                self._path("exact")
                self.exact_waiting.append(req)
            else:
                keep.append(req)
        self.waiting = keep

    def _exact_group(self) -> list[GenerationRequest]:
        """The head of the exact queue and the requests with its parameters that fit one call."""
        live = [r for r in self.exact_waiting if not self._gone(r)]
        self.exact_waiting.clear()
        if not live:
            return []
        first, rest = live[0], deque()
        key, group, widest = exact_key(first.params, first.adapter_key), [first], first.prompt_tokens
        for r in live[1:]:
            wide = max(widest, r.prompt_tokens)
            fits = (len(group) < self.limits.max_batch_size
                    and (len(group) + 1) * exact_rows(r) * wide <= self.limits.max_prefill_tokens)
            if fits and exact_key(r.params, r.adapter_key) == key:
                group.append(r)
                widest = wide
            else:
                rest.append(r)
        self.exact_waiting = rest
        return group

    def _admit(self) -> list[GenerationRequest]:
        """Pop the FIFO head group that fits the free rows, the token budget and the prefill bound."""
        lim = self.limits
        rows = len(self.running)
        widest = max((s.bound for s in self.running), default=0)
        group: list[GenerationRequest] = []
        group_rows = prompt_width = 0
        while self.waiting:
            req = self.waiting[0]
            if self._gone(req):  # no prefill for nothing
                self.waiting.popleft()
                continue
            n = req.params.num_return_sequences
            width = max(widest, req.prompt_tokens + req.params.max_new_tokens)
            if rows and (rows + n > lim.max_batch_size or (rows + n) * width > lim.max_batch_tokens):
                break  # FIFO: later requests wait behind the head
            prompt = max(prompt_width, req.prompt_tokens)
            if group and (group_rows + n) * prompt > lim.max_prefill_tokens:
                break  # the rest joins at a later step
            self.waiting.popleft()
            group.append(req)
            rows, widest = rows + n, width
            group_rows, prompt_width = group_rows + n, prompt
        for _ in group:
            self._path("batched")
        return group

    def _prefill_plan(self, drop: list[Sequence], group: list[GenerationRequest]) -> Step:
        rows = [Sequence(req, j, self.checker(req))
                for req in group for j in range(req.params.num_return_sequences)]
        prefix = self._shared_prefix(group)
        self.stats.prefills += 1
        if prefix is not None:
            self.stats.prefix_rows += len(rows)
        return Step("prefill", drop, rows=rows, prefix=prefix)

    def _decode_plan(self, drop: list[Sequence]) -> Step:
        st = self.stats
        st.steps += 1
        st.peak_rows = max(st.peak_rows, len(self.running))
        st.peak_tokens = max(st.peak_tokens, len(self.running) * max(s.tokens for s in self.running))
        return Step("decode", drop, rows=list(self.running))

    def _shared_prefix(self, group: list[GenerationRequest]) -> tuple[int, ...] | None:
        """A kept prefix that starts every prompt of the group, or a new one when the group's
        prompts (or a lone prompt and the one before it) share at least `prefix_min_tokens`. It is
        kept under each adapter of the group (the runner computes each one's keys/values)."""
        if not self.limits.prefix_min_tokens:
            return None
        prompts = [r.input_ids for r in group]
        previous, self._last_prompt = self._last_prompt, prompts[-1]
        kept = {ids for _, ids in self._prefixes if all(_covers(ids, p) for p in prompts)}
        prefix = max(kept, key=len, default=None)
        if prefix is None:
            others = prompts if len(prompts) > 1 else prompts + ([previous] if previous else [])
            if len(others) < 2:
                return None
            n = min(common_prefix_len(others), min(len(ids) for ids in prompts) - 1)
            if n < self.limits.prefix_min_tokens:
                return None
            prefix = tuple(prompts[0][:n])
        for adapter in dict.fromkeys(r.adapter_key for r in group):
            key = (adapter, prefix)
            self._prefixes[key] = None
            self._prefixes.move_to_end(key)
            # `prefix_slots` per adapter (requests spread over adapters must not evict each
            # other's), and at most 8 adapters' worth in all
            mine = [p for p in self._prefixes if p[0] == adapter]
            for old in mine[: max(0, len(mine) - self.limits.prefix_slots)]:
                del self._prefixes[old]
        while len(self._prefixes) > 8 * self.limits.prefix_slots:
            self._prefixes.popitem(last=False)
        return prefix


def _covers(prefix: tuple[int, ...], ids: list[int]) -> bool:
    """The prefix starts the prompt and leaves at least one token to prefill."""
    n = len(prefix)
    return len(ids) > n and tuple(ids[:n]) == prefix


def common_prefix_len(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for k in range(n):
        t = first[k]
        if any(s[k] != t for s in seqs):
            return k
    return n
