"""Speculative decoding from the prompt (prompt lookup, or n-gram drafting) inside the batch.

A row's draft is what followed the latest earlier occurrence of its last n tokens (n from
`max_matching_ngram_size` down to 1) in its prompt and output: text that repeats its input
(summaries, edits, answers quoting retrieved passages) gets whole runs of tokens proposed for free.
One batched forward verifies every row's draft (rows with shorter or no drafts are padded); a row
keeps the longest prefix of its draft that its own greedy choice reproduces, plus the token the
model chose after it. The result is exactly greedy decoding, several tokens a step.

Who drafts: greedy rows without an output constraint or log-probabilities (sampled rows would need
rejection sampling to keep their distribution: they decode one token a step, as does a row
whose constraint or logprobs need one mask or distribution per position).

How much: each row's draft length adapts between 1 and its `prompt_lookup_num_tokens` (k): it grows
by two when the whole draft was accepted and shrinks by one otherwise (transformers' "heuristic"
schedule for assistant tokens), so a row whose drafts keep failing costs little.
"""

from __future__ import annotations

from dataclasses import dataclass


class NgramDrafter:
    """One row's n-gram index over its tokens (prompt + output), kept as tokens arrive."""

    __slots__ = ("k", "max_ngram", "length", "tokens", "_latest", "_previous")

    def __init__(self, tokens: list[int], k: int, max_ngram: int) -> None:
        self.k = k  # the row's limit (prompt_lookup_num_tokens)
        self.length = k  # the current draft length, adapted by `feedback`
        self.max_ngram = max(1, max_ngram)
        self.tokens: list[int] = []
        # per n: n-gram -> end index of its latest occurrence; and, for the current suffix, the end
        # index of the occurrence before it (where a draft continues from)
        self._latest: list[dict[tuple[int, ...], int]] = [{} for _ in range(self.max_ngram)]
        self._previous: list[int | None] = [None] * self.max_ngram
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        self.tokens.append(token)
        end = len(self.tokens) - 1
        for n in range(1, self.max_ngram + 1):
            if end + 1 < n:
                self._previous[n - 1] = None
                continue
            gram = tuple(self.tokens[end + 1 - n:])
            table = self._latest[n - 1]
            self._previous[n - 1] = table.get(gram)
            table[gram] = end

    def draft(self, limit: int) -> list[int]:
        """Up to min(limit, current length) tokens proposed after the current tokens; [] for none."""
        want = min(limit, self.length)
        if want <= 0:
            return []
        for n in range(self.max_ngram, 0, -1):
            prev = self._previous[n - 1]
            if prev is not None:
                proposal = self.tokens[prev + 1: prev + 1 + want]
                if proposal:
                    return proposal
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.length = min(self.k, self.length + 2) if accepted == drafted else max(1, self.length - 1)


@dataclass
class DraftStats:
    """Tokens drafted and accepted (the metrics' counters read these per step)."""

    drafted: int = 0
    accepted: int = 0
