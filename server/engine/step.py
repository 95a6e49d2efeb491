"""The plain data that crosses the seam between the scheduling policy and the model runner.

The policy builds a `Step` of `Sequence`s; the runner executes it and answers with a
`StepOutput`. No torch here: a step can be built and checked without a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from server.engine.request import FinishReason, GenerationRequest
from server.engine.stops import StopChecker

StepKind = Literal["idle", "prefill", "decode", "exact"]
# A kept prompt prefix: the adapter its keys/values were computed with (None: the base model) and
# its token ids. Keys/values are never shared across adapters: each adapter has its own.
PrefixKey = tuple[str | None, tuple[int, ...]]


@dataclass(eq=False)
class Sequence:
    """One output sequence of one request on the batched path."""

    request: GenerationRequest
    index: int
    checker: StopChecker | None = None  # its text and stop strings (None only without a tokenizer)
    generated: list[int] = field(default_factory=list)
    finish: FinishReason | None = None

    @property
    def bound(self) -> int:
        """The most tokens this sequence can occupy in the cache before it must finish."""
        return self.request.prompt_tokens + self.request.params.max_new_tokens

    @property
    def tokens(self) -> int:
        """Prompt and generated tokens so far."""
        return self.request.prompt_tokens + len(self.generated)


@dataclass(frozen=True)
class EndRules:
    """The policy's decisions, handed to the exact lane, whose `generate` call runs many tokens in one
    step: the text of a sequence (`checker`), whether it ends after a token (`judge`: EOS, length,
    stop strings, cancellation, deadline), whether a whole call has been given up (`gone`), and
    ending a sequence with the text its checker held back (`end`)."""

    checker: Callable[[GenerationRequest], StopChecker | None]
    judge: Callable[[GenerationRequest, int, int, StopChecker | None], FinishReason | None]
    gone: Callable[[GenerationRequest], FinishReason | None]
    end: Callable[[GenerationRequest, int, FinishReason, StopChecker | None], None]


@dataclass
class Step:
    """What the runner does in one step. `drop` leave the running batch first; then, by `kind`:
    prefill `rows` (with the shared `prefix`, if any), decode `rows` (every running sequence),
    or run the `exact` group through `generate`. `prefixes` are the prefixes worth keeping, each
    under one adapter: a prefill on `prefix` uses each row's adapter's own keys/values."""

    kind: StepKind
    drop: list[Sequence] = field(default_factory=list)
    rows: list[Sequence] = field(default_factory=list)
    exact: list[GenerationRequest] = field(default_factory=list)
    prefix: tuple[int, ...] | None = None
    prefixes: tuple[PrefixKey, ...] = ()
    rules: EndRules | None = None  # with `exact`: how its sequences end (the policy's)


@dataclass
class Sampled:
    seq: Sequence
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


@dataclass
class StepOutput:
    """What the runner hands back: one token per row it ran, and the requests that failed."""

    sampled: list[Sampled] = field(default_factory=list)
    failed: list[tuple[GenerationRequest, BaseException]] = field(default_factory=list)
