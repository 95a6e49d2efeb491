"""The seam between API dialects and the engine: one request type and its token stream.

API modules build a `GenerationRequest` (token ids + `GenerationParams`) and read events from its
`TokenStream`; the engine loop's thread is the only producer. Nothing here knows about HTTP.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from server.adapters.types import AdapterRef
from server.engine.errors import EngineLost, EngineTimeout, StreamError, failure_message

if TYPE_CHECKING:  # the policy imports this module and must not pull in llguidance's transformers
    from server.engine.grammar import Constraint

FinishReason = Literal["length", "eos", "stop", "cancelled", "timeout", "error"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class GenerationParams:
    """Per-request generation parameters, already validated and normalised (see params.py).

    The named fields are the ones a batched decode step can apply per row; `extra` holds every
    other `GenerationConfig` option (beams, bad words, ...), which only exact `generate` honours.
    """

    max_new_tokens: int
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    num_return_sequences: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    # speculative decoding from the prompt (transformers' prompt_lookup_num_tokens and
    # max_matching_ngram_size): tokens drafted per step (0: off) and the longest n-gram matched
    draft_tokens: int = 0
    draft_ngram: int = 2
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def extra_dict(self) -> dict[str, Any]:
        return dict(self.extra)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `GenerationConfig`, reproducing these parameters exactly."""
        kw: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "min_new_tokens": self.min_new_tokens or None,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "num_return_sequences": self.num_return_sequences,
            "eos_token_id": list(self.eos_token_ids) or None,
            "pad_token_id": self.pad_token_id,
        }
        if self.do_sample:
            kw.update(
                temperature=self.temperature,
                top_k=self.top_k or None,
                top_p=self.top_p,
                typical_p=self.typical_p,
                min_p=self.min_p or None,
            )
        else:
            kw.update(temperature=None, top_k=None, top_p=None, typical_p=None, min_p=None)
        kw.update(self.extra_dict)
        return kw


@dataclass(frozen=True)
class TextOptions:
    """How the engine turns a sequence's tokens into the client's text, decoded once on its thread:
    the tokenizer's `decode` options, and whether a stop string is cut from the text (`strip_stop`)
    or left at its end, as transformers' `stop_strings` leave it (Kaito, TGI)."""

    skip_special_tokens: bool = True
    clean_up_tokenization_spaces: bool = False
    strip_stop: bool = True


@dataclass
class TokenEvent:
    index: int  # which returned sequence (0 unless num_return_sequences > 1)
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    text: str = ""  # the text these tokens release (some may be held back: a possible stop string)


@dataclass
class FinishEvent:
    index: int
    reason: FinishReason
    text: str = ""  # the sequence's last text, held back until its end


Event = TokenEvent | FinishEvent


class TokenStream:
    """Thread-safe channel of events from the engine loop to one waiting HTTP thread."""

    def __init__(self, num_sequences: int = 1) -> None:
        self._queue: queue.Queue[Event | StreamError] = queue.Queue()
        self._cancelled = threading.Event()
        self.num_sequences = num_sequences
        self._open = num_sequences
        self.first_token_at: float | None = None
        self.closed = threading.Event()
        self._on_close: list[Callable[[], None]] = []
        self._close_lock = threading.Lock()

    # producer side (the engine loop's thread)
    def push(self, index: int, token_ids: list[int], logprobs: list[float] | None = None,
             top_logprobs: list[list[tuple[int, float]]] | None = None, text: str = "") -> None:
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self._queue.put(TokenEvent(index, list(token_ids), logprobs, top_logprobs, text))

    def finish(self, index: int, reason: FinishReason, text: str = "") -> None:
        self._queue.put(FinishEvent(index, reason, text))
        self._open -= 1
        if self._open <= 0:
            self._close()

    def fail(self, message: str, client_error: bool = False) -> None:
        self._queue.put(StreamError(message, client_error))
        self._close()

    def abort(self, message: str) -> None:
        """End the stream because the engine itself is gone (EngineLost: a 503, not a 500)."""
        self._queue.put(EngineLost(message))
        self._close()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, when the stream ends (at once if it has): the engine no longer runs
        this request, e.g. its adapter may be unloaded."""
        with self._close_lock:
            if not self.closed.is_set():
                self._on_close.append(callback)
                return
        callback()

    def _close(self) -> None:
        with self._close_lock:
            if self.closed.is_set():
                return
            self.closed.set()
            callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def fail_with(self, exc: BaseException) -> None:
        """Fail this stream for an exception raised while generating (unless it already ended)."""
        if not self.closed.is_set():
            self.fail(*failure_message(exc))

    # consumer side (an HTTP thread)
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events until every sequence has finished; raise StreamError on failure."""
        deadline = None if timeout is None else time.monotonic() + timeout
        remaining = self.num_sequences
        while remaining > 0:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                self.cancel()
                raise EngineTimeout("request timed out waiting for the engine") from None
            if isinstance(item, StreamError):
                raise item
            if isinstance(item, FinishEvent):
                remaining -= 1
            yield item


@dataclass
class GenerationRequest:
    input_ids: list[int]
    params: GenerationParams
    adapter: AdapterRef | None = None  # set by the API module; None = DEFAULT_ADAPTER
    deadline: float | None = None  # time.monotonic() after which generation stops ("timeout")
    constraint: Constraint | None = None  # what the output must match (compiled: engine/grammar.py)
    text_options: TextOptions = field(default_factory=TextOptions)  # how the engine decodes the output
    id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    arrival: float = field(default_factory=time.monotonic)
    stream: TokenStream = field(init=False)
    # the loaded peft adapter this request runs with (None = the base model), set by Engine.submit
    adapter_key: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.stream = TokenStream(self.params.num_return_sequences)

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)


@dataclass
class SequenceResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded by the engine (the request's TextOptions)
    finish_reason: FinishReason | None = None
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)


def collect(request: GenerationRequest, timeout: float | None = None) -> list[SequenceResult]:
    """Wait for a request to finish and gather its sequences (non-streaming callers)."""
    results = [SequenceResult() for _ in range(request.params.num_return_sequences)]
    # Wait for the end once instead of waking at every token: with many requests in the batch,
    # per-token wake-ups of their HTTP threads compete with the decode step for the CPU.
    if not request.stream.closed.wait(timeout):
        request.stream.cancel()
        raise EngineTimeout("request timed out waiting for the engine")
    for event in request.stream.events(timeout=1.0):
        seq = results[event.index]
        seq.text += event.text
        if isinstance(event, TokenEvent):
            seq.token_ids.extend(event.token_ids)
            if event.logprobs is not None:
                seq.logprobs.extend(event.logprobs)
            if event.top_logprobs is not None:
                seq.top_logprobs.extend(event.top_logprobs)
        else:
            seq.finish_reason = event.reason
    return results
