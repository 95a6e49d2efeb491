"""Per-row token choice for a batched decode step.

Each row of a running batch carries its own parameters, history and random generator, so a row's
tokens do not depend on its neighbours. Processors run in the order transformers' `generate` applies
them (repetition penalty, n-gram ban, min-new-tokens EOS mask, then temperature, top-k, top-p, min-p,
typical-p), and the warpers are transformers' own classes, applied to groups of rows that share
parameters, so the distributions match `generate`'s. A row with an output constraint has its own
matcher: after the processors and before the warpers, the tokens it disallows get -inf (one mask
fill for all constrained rows: constraint_mask.py), and the chosen token advances it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import llguidance
import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from server.engine.constraint_mask import MaskApplier
from server.engine.request import GenerationParams
from server.engine.speculative import NgramDrafter

WarperKey = tuple[float, int, float, float, float]


def warpers_for(key: WarperKey) -> list[LogitsProcessor]:
    """transformers' sampling warpers for (temperature, top_k, top_p, min_p, typical_p)."""
    temperature, top_k, top_p, min_p, typical_p = key
    out: list[LogitsProcessor] = []
    if temperature != 1.0:
        out.append(TemperatureLogitsWarper(temperature))
    if top_k:
        out.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        out.append(TopPLogitsWarper(top_p=top_p))
    if min_p:
        out.append(MinPLogitsWarper(min_p=min_p))
    if typical_p < 1.0:
        out.append(TypicalLogitsWarper(mass=typical_p))
    return out


class RowSampler:
    """One sequence's sampling state: parameters, token history, n-gram table, generator."""

    __slots__ = ("params", "history", "generated", "generator", "_ngrams", "_eos", "warper_key",
                 "needs_processing", "matcher", "drafter")

    def __init__(self, params: GenerationParams, prompt_ids: list[int], index: int,
                 device: torch.device, matcher: llguidance.LLMatcher | None = None) -> None:
        self.params = params
        self.matcher = matcher  # the row's output constraint, advanced with every chosen token
        self.history = list(prompt_ids)  # prompt + generated: what repetition penalty sees
        self.generated = 0
        self.generator: torch.Generator | None = None
        if params.do_sample:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed((params.seed + index) % 2**63)
            else:
                self.generator.seed()
        self._eos = list(params.eos_token_ids)
        self._ngrams: dict[tuple[int, ...], set[int]] | None = None
        n = params.no_repeat_ngram_size
        if n > 0:
            self._ngrams = defaultdict(set)
            for i in range(len(self.history) - n + 1):
                self._ngrams[tuple(self.history[i:i + n - 1])].add(self.history[i + n - 1])
        self.warper_key: WarperKey = (params.temperature, params.top_k, params.top_p, params.min_p,
                                      params.typical_p)
        self.needs_processing = (params.repetition_penalty != 1.0 or n > 0
                                 or (params.min_new_tokens > 0 and bool(self._eos)))
        # speculative decoding (speculative.py): greedy rows with no per-position mask or logprobs
        drafts = (params.draft_tokens > 0 and not params.do_sample and matcher is None
                  and not params.logprobs)
        self.drafter = NgramDrafter(self.history, params.draft_tokens, params.draft_ngram) if drafts else None

    def append(self, token: int) -> None:
        n = self.params.no_repeat_ngram_size
        self.history.append(token)
        self.generated += 1
        if self.drafter is not None:
            self.drafter.append(token)
        if self._ngrams is not None and len(self.history) >= n:
            self._ngrams[tuple(self.history[len(self.history) - n:-1])].add(token)

    def process(self, scores: torch.Tensor) -> None:
        """Apply the history-dependent processors to this row's scores `[V]` in place."""
        p = self.params
        if p.repetition_penalty != 1.0 and self.history:
            ids = torch.tensor(self.history, device=scores.device)
            picked = scores.gather(0, ids)
            picked = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
            scores.scatter_(0, ids, picked)
        n = p.no_repeat_ngram_size
        if self._ngrams is not None and len(self.history) + 1 >= n:
            prefix = tuple(self.history[len(self.history) - n + 1:]) if n > 1 else ()
            banned = self._ngrams.get(prefix)
            if banned:
                scores[list(banned)] = -float("inf")
        # a constraint decides where its output may end (banning EOS could leave no token at all)
        if self.generated < p.min_new_tokens and self._eos and self.matcher is None:
            scores[self._eos] = -float("inf")


    def draft(self) -> list[int]:
        """Tokens proposed to follow this row's newest token (none past its token limit: the
        verify step adds one token of its own)."""
        if self.drafter is None:
            return []
        return self.drafter.draft(self.params.max_new_tokens - self.generated - 1)


@dataclass
class Choice:
    tokens: list[int]
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]
    invalid: list[int] = field(default_factory=list)  # rows whose distribution was not finite
    dead_ends: list[int] = field(default_factory=list)  # constrained rows left with no allowed token
    mask_seconds: float | None = None  # time spent on constraint masks (None: no constrained row)


def choose(logits: torch.Tensor, rows: list[RowSampler], want_logprobs: list[int],
           masks: MaskApplier | None = None) -> Choice:
    """Pick one token per row from `logits [B, V]` (the model's last-position logits).

    `want_logprobs[i]` is -1 for no log-probabilities, else the number of top alternatives to return.
    Log-probabilities are of the model's raw distribution (as `output_logits` gives them).
    Constrained rows (a matcher) need `masks`; their matchers consume the chosen tokens.
    """
    raw = logits.float()
    processed = [i for i, r in enumerate(rows) if r.needs_processing]
    constrained = [i for i, r in enumerate(rows) if r.matcher is not None]
    any_lp = any(n >= 0 for n in want_logprobs)
    # keep raw logits for log-probabilities
    scores = raw.clone() if (processed or constrained) and any_lp else raw
    for i in processed:
        rows[i].process(scores[i])
    dead: list[int] = []
    mask_seconds = None
    if constrained:
        if masks is None:
            raise RuntimeError("constrained rows need a MaskApplier")
        started = time.perf_counter()
        dead = masks.apply(scores, constrained, [rows[i].matcher for i in constrained],
                           [rows[i].params.eos_token_ids for i in constrained])
        mask_seconds = time.perf_counter() - started

    tokens = scores.argmax(dim=-1)
    invalid: list[int] = []
    sampled = [i for i, r in enumerate(rows) if r.params.do_sample]
    if sampled:
        groups: dict[WarperKey, list[int]] = defaultdict(list)
        for i in sampled:
            groups[rows[i].warper_key].append(i)
        for key, idx in groups.items():
            sub = scores[idx] if len(idx) < len(rows) else scores
            for warper in warpers_for(key):
                sub = warper(None, sub)
            probs = torch.softmax(sub, dim=-1)
            # Extreme parameters (a temperature near zero, say) can overflow a row's distribution;
            # that row alone fails, never its neighbours.
            valid = (torch.isfinite(probs).all(dim=-1) & (probs.sum(dim=-1) > 0)).tolist()
            for j, i in enumerate(idx):
                if valid[j]:
                    tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
                else:
                    invalid.append(i)
    chosen = tokens.tolist()
    if constrained:
        started = time.perf_counter()
        invalid = sorted(set(invalid) - set(dead))
        for i in constrained:
            if i in dead or i in invalid or chosen[i] in rows[i].params.eos_token_ids:
                continue  # an EOS ends the row: nothing to advance (it may be the request's own)
            if not rows[i].matcher.consume_token(chosen[i]):
                dead.append(i)
        mask_seconds = (mask_seconds or 0.0) + time.perf_counter() - started

    lps: list[float | None] = [None] * len(rows)
    tops: list[list[tuple[int, float]] | None] = [None] * len(rows)
    if any_lp:
        idx = [i for i, n in enumerate(want_logprobs) if n >= 0]
        logp = torch.log_softmax(raw[idx], dim=-1)
        for j, i in enumerate(idx):
            lps[i] = float(logp[j, chosen[i]])
            n = want_logprobs[i]
            if n > 0:
                values, ids = logp[j].topk(n)
                tops[i] = [(int(t), float(v)) for t, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return Choice(chosen, lps, tops, invalid, dead, mask_seconds)
