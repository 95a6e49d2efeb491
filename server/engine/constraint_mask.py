"""Constraints applied to logits: the allowed-token bitmask of every constrained row of a step.

The batched step fills one bitmask for all its constrained rows with a single llguidance call
(its own threads, the GIL released), unpacks it, and sets disallowed tokens to -inf before any
warper sees the scores; unconstrained rows of the same batch are not touched. The exact lane
(`generate`) gets the same masks through `ConstraintProcessor`, a logits processor.

EOS: llguidance allows the model's EOS tokens exactly when the constraint is satisfied (and only
them once nothing can follow). A request that names its own `eos_token_id` gets that permission on
its own EOS ids instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import numpy as np
import torch
from llguidance.numpy import fill_next_token_bitmask_par
from transformers import LogitsProcessor

from server.engine.grammar import Constraint


class MaskApplier:
    """Fills and applies the bitmasks of one step's constrained rows."""

    def __init__(self, vocab_size: int, eos_token_ids: tuple[int, ...]) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = eos_token_ids
        self._words = (vocab_size + 31) // 32
        self._executor = llguidance.LLExecutor()

    def allowed(self, matchers: Sequence[llguidance.LLMatcher],
                eos: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """`[n, vocab]` booleans: the tokens each matcher allows next (one fill call for all; a
        matcher listed twice, as beams that agree so far share one, is filled once)."""
        slot: dict[int, int] = {}
        unique: list[llguidance.LLMatcher] = []
        for m in matchers:
            if id(m) not in slot:
                slot[id(m)] = len(unique)
                unique.append(m)
        mask = np.zeros((len(unique), self._words), dtype=np.int32)
        fill_next_token_bitmask_par(self._executor, [(m, j) for j, m in enumerate(unique)], mask)
        if len(unique) < len(matchers):
            mask = mask[[slot[id(m)] for m in matchers]]
        bits = np.unpackbits(mask.view(np.uint8), axis=1, bitorder="little")[:, :self.vocab_size]
        allowed = torch.from_numpy(bits.astype(bool))
        model_eos = list(self.eos_token_ids)
        for j, row_eos in enumerate(eos):
            if row_eos and tuple(row_eos) != self.eos_token_ids:
                ok = bool(allowed[j, model_eos].any()) if model_eos else False
                allowed[j, model_eos] = False
                allowed[j, list(row_eos)] = ok
        return allowed

    def apply(self, scores: torch.Tensor, rows: Sequence[int], matchers: Sequence[llguidance.LLMatcher],
              eos: Sequence[tuple[int, ...]]) -> list[int]:
        """Mask `scores [B, V]` in place at `rows`; return the rows left with no allowed token."""
        allowed = self.allowed(matchers, eos)
        width = scores.shape[1]
        if width > allowed.shape[1]:  # logits wider than the vocabulary: the padding is never allowed
            allowed = torch.cat([allowed, allowed.new_zeros((len(rows), width - allowed.shape[1]))], 1)
        allowed = allowed[:, :width].to(scores.device)
        index = torch.tensor(list(rows), dtype=torch.long, device=scores.device)
        scores[index] = scores.index_select(0, index).masked_fill(~allowed, -float("inf"))
        dead = (~allowed.any(dim=1)).tolist()
        return [r for r, d in zip(rows, dead, strict=True) if d]


class ConstraintProcessor(LogitsProcessor):
    """The exact lane's constraints: `generate`'s rows (beams, returned sequences) are told apart
    by their tokens so far, each with its own matcher state, kept from one step to the next."""

    def __init__(self, constraints: Sequence[Constraint | None], prompt_width: int,
                 applier: MaskApplier, eos: Sequence[tuple[int, ...]]) -> None:
        self.constraints = list(constraints)
        self.prompt_width = prompt_width
        self.applier = applier
        self.eos = list(eos)
        self._states: dict[tuple[int, tuple[int, ...]], llguidance.LLMatcher] = {}

    def _state(self, request: int, tokens: tuple[int, ...]) -> llguidance.LLMatcher:
        key = (request, tokens)
        matcher = self._states.get(key)
        if matcher is not None:
            return matcher
        parent = self._states.get((request, tokens[:-1])) if tokens else None
        if parent is not None:
            matcher = parent.deep_copy()
            matcher.consume_token(tokens[-1])
        else:
            matcher = self.constraints[request].matcher()  # type: ignore[union-attr]
            if tokens:
                matcher.consume_tokens(list(tokens))
        return matcher

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        per = max(1, input_ids.shape[0] // len(self.constraints))
        generated = input_ids[:, self.prompt_width:].tolist()
        states: dict[tuple[int, tuple[int, ...]], llguidance.LLMatcher] = {}
        rows, matchers, eos = [], [], []
        for i, tokens in enumerate(generated):
            request = i // per
            if self.constraints[request] is None:
                continue
            key = (request, tuple(tokens))
            matcher = states.get(key) or self._state(*key)
            states[key] = matcher
            # a row past its EOS (generate pads it from there on) is finished: leave it alone
            if matcher.is_error() or (tokens and tokens[-1] in self.eos[request]):
                continue
            rows.append(i)
            matchers.append(matcher)
            eos.append(self.eos[request])
        self._states = states
        if rows:
            self.applier.apply(scores, rows, matchers, eos)
        return scores
