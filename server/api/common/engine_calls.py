"""How API modules hand a request to the engine and read its results, in one place.

Translates engine conditions (queue full, not ready, failed generation) into `ApiError`s that each
dialect renders in its own shape. The text comes from the engine, decoded once with the request's
`TextOptions` (stop strings cut or kept, as the dialect asked); the API modules only render it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from server.adapters import AdapterError, AdapterRef
from server.api.common import adapters
from server.api.common.errors import ApiError
from server.engine.detokenize import IncrementalDetokenizer
from server.engine.engine import Engine
from server.engine.errors import (
    EngineLost,
    EngineTimeout,
    EngineUnavailable,
    InvalidParams,
    QueueFull,
    StreamError,
)
from server.engine.grammar import Constraint
from server.engine.params import build_params
from server.engine.request import (
    FinishEvent,
    FinishReason,
    GenerationParams,
    GenerationRequest,
    SequenceResult,
    TextOptions,
    TokenEvent,
    collect,
)
from server.observability import access_log, metrics


def require_ready(engine: Engine) -> None:
    """503 (with Retry-After) until the model is loaded, before anything touches the tokenizer;
    400 when the served model is not a chat model (an embedding model, a custom handler)."""
    kind = engine.kind
    if kind != "chat":
        what = "an embedding model" if kind == "embedding" else "a custom model handler"
        raise ApiError(400, f"this server serves {what}, not a text generation model; use "
                       f"{'/v1/embeddings, /embed or /predict' if kind == 'embedding' else '/predict'}",
                       kind="unsupported_model")
    if engine.limits is None or engine.loaded is None:
        raise ApiError(503, "the model is not loaded yet", kind="unavailable", headers={"Retry-After": "5"})
    if engine.draining:
        raise ApiError(503, "the server is shutting down", kind="unavailable", headers={"Retry-After": "5"})


def make_params(engine: Engine, kwargs: dict[str, Any], prompt_tokens: int,
                defaults: dict[str, Any] | None = None, names: dict[str, str] | None = None
                ) -> GenerationParams:
    if engine.limits is None:
        raise ApiError(503, "the model is not loaded yet", kind="unavailable", headers={"Retry-After": "5"})
    limit = engine.settings.max_input_tokens
    if limit and prompt_tokens > limit:
        raise ApiError(400, f"the prompt is {prompt_tokens} tokens; this server accepts at most {limit} "
                       f"(MAX_INPUT_TOKENS)", kind="context_length_exceeded", param="prompt")
    try:
        return build_params(kwargs, prompt_tokens, engine.limits, defaults, names)
    except InvalidParams as exc:
        raise ApiError(400, str(exc)) from None


def new_request(engine: Engine, input_ids: list[int], params: GenerationParams,
                adapter: AdapterRef | None = None, constraint: Constraint | None = None,
                text_options: TextOptions = TextOptions()) -> GenerationRequest:
    """`adapter`: what the client named (server/api/common/adapters.py); None = DEFAULT_ADAPTER.
    `constraint`: what the output must match, compiled on this thread (server/api/common/structured.py).
    `text_options`: how the engine decodes the output (default: special tokens skipped, stop strings
    cut from the text)."""
    deadline = time.monotonic() + engine.settings.request_timeout_s
    usage = access_log.usage()
    if usage is not None:
        usage.prompt_tokens += len(input_ids)
    return GenerationRequest(input_ids=input_ids, params=params, adapter=adapter, deadline=deadline,
                             constraint=constraint, text_options=text_options)


def _account(request: GenerationRequest, completion_tokens: int) -> None:
    """Token counts and time to first token for the access log and metrics (never any text)."""
    ttft = None
    if request.stream.first_token_at is not None:
        ttft = request.stream.first_token_at - request.arrival
        metrics.record_ttft(ttft)
    usage = access_log.usage()
    if usage is not None:
        usage.completion_tokens += completion_tokens
        if ttft is not None and usage.ttft_s is None:
            usage.ttft_s = ttft


def submit(engine: Engine, request: GenerationRequest) -> None:
    try:
        engine.submit(request)
    except QueueFull as exc:
        raise ApiError(503, f"server is overloaded: {exc}; retry later", kind="overloaded",
                       headers={"Retry-After": "1"}) from None
    except EngineUnavailable as exc:
        raise ApiError(503, str(exc), kind="unavailable", headers={"Retry-After": "5"}) from None
    except AdapterError as exc:  # the engine resolves the request's adapter as it takes it
        raise adapters.api_error(exc) from None


def _wait_limit(engine: Engine) -> float:
    return engine.settings.request_timeout_s + 30.0


def run(engine: Engine, request: GenerationRequest) -> list[SequenceResult]:
    """Submit and wait for every sequence; map engine failures to ApiError."""
    return run_many(engine, [request])[0]


def run_many(engine: Engine, requests: list[GenerationRequest]) -> list[list[SequenceResult]]:
    """Submit every request first (so the engine can batch them), then wait for each."""
    out: list[list[SequenceResult]] = []
    deadline = time.monotonic() + _wait_limit(engine)  # one bound for the whole group, not each
    try:
        for r in requests:
            submit(engine, r)
        for r in requests:
            try:
                out.append(collect(r, timeout=max(0.0, deadline - time.monotonic())))
            except StreamError as exc:
                raise _stream_error(exc) from None
        return out
    finally:
        for i, r in enumerate(requests):
            r.stream.cancel()  # no-op when finished; frees the slots when we bail out
            _account(r, sum(len(x.token_ids) for x in out[i]) if i < len(out) else 0)


def score(engine: Engine, input_ids: list[int], start: int, top_n: int,
          adapter: AdapterRef | None) -> tuple[list[float], list[list[tuple[int, float]]] | None]:
    """Logprobs of given tokens under the request's adapter (prompt scoring, logprobs the engine
    did not deliver); an adapter refused meanwhile (unloaded) is the dialect's 4xx."""
    try:
        return engine.score(input_ids, start, top_n, adapter)
    except AdapterError as exc:
        raise adapters.api_error(exc) from None


def ensure_logprobs(engine: Engine, request: GenerationRequest, result: SequenceResult) -> None:
    """Fill a finished sequence's logprobs by scoring it, where the engine did not deliver them."""
    params = request.params
    if not params.logprobs or not result.token_ids:
        return
    have_top = not params.top_logprobs or len(result.top_logprobs) >= len(result.token_ids)
    if len(result.logprobs) >= len(result.token_ids) and have_top:
        return
    lps, tops = score(engine, request.input_ids + result.token_ids, request.prompt_tokens,
                      params.top_logprobs, request.adapter)
    result.logprobs, result.top_logprobs = lps, tops or []


def token_texts(engine: Engine, token_ids: list[int], skip_special_tokens: bool = True,
                clean_up_tokenization_spaces: bool = False) -> list[str]:
    """Text each token adds, such that "".join(...) equals the decoded sequence."""
    detok = IncrementalDetokenizer(engine.tokenizer, skip_special_tokens, clean_up_tokenization_spaces)
    texts = [detok.add([t]) for t in token_ids]
    if texts:
        texts[-1] += detok.flush()
    return texts


def _stream_error(exc: StreamError) -> ApiError:
    if isinstance(exc, EngineLost):
        return ApiError(503, str(exc), kind="unavailable", headers={"Retry-After": "5"})
    if isinstance(exc, EngineTimeout):
        return ApiError(503, f"{exc}; the server is overloaded, retry later", kind="overloaded",
                        headers={"Retry-After": "5"})
    if exc.client_error:
        return ApiError(400, str(exc))
    return ApiError(500, str(exc), kind="server_error")


@dataclass
class TextDelta:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    finish_reason: FinishReason | None = None


def stream_text(engine: Engine, request: GenerationRequest) -> Iterator[TextDelta]:
    """Submit now (overload errors raise here, before any response starts), then return an iterator
    of text deltas per sequence; the last delta of each carries finish_reason.

    The text is the engine's (the request's `TextOptions`): with `strip_stop`, stop strings are cut
    (never sent) and text that could start one is held back until it is known not to; without it,
    the text ends with the stop string, as transformers' `stop_strings` leave it. Cancels the
    request if the caller goes away.
    """
    submit(engine, request)
    return _text_deltas(engine, request)


def _text_deltas(engine: Engine, request: GenerationRequest) -> Iterator[TextDelta]:
    generated = 0
    try:
        for event in request.stream.events(timeout=_wait_limit(engine)):
            if isinstance(event, TokenEvent):
                generated += len(event.token_ids)
                yield TextDelta(event.index, event.text, event.token_ids, event.logprobs, event.top_logprobs)
            elif isinstance(event, FinishEvent):
                yield TextDelta(event.index, event.text, [], finish_reason=event.reason)
    except StreamError as exc:
        raise _stream_error(exc) from None
    finally:
        request.stream.cancel()
        _account(request, generated)


def final_text(result: SequenceResult) -> tuple[str, FinishReason]:
    """A finished sequence's text (the engine's, stop string cut where the request asked) and why it
    ended."""
    return result.text, result.finish_reason or "length"


def stream_many(engine: Engine, requests: list[GenerationRequest]) -> Iterator[tuple[int, TextDelta]]:
    """Submit every request now (errors raise here), then yield (request index, delta) as they come.

    One request is read on the calling thread; several are read by one pump thread each into a
    shared queue. Closing the iterator cancels whatever is still running.
    """
    try:
        for r in requests:
            submit(engine, r)
    except ApiError:
        for r in requests:
            r.stream.cancel()
        raise
    return _merge(engine, requests)


def _merge(engine: Engine, requests: list[GenerationRequest]) -> Iterator[tuple[int, TextDelta]]:
    import queue
    import threading

    if len(requests) == 1:
        for d in _text_deltas(engine, requests[0]):
            yield 0, d
        return
    items: queue.Queue[tuple[int, TextDelta | ApiError | None]] = queue.Queue()

    def pump(i: int, r: GenerationRequest) -> None:
        try:
            for d in _text_deltas(engine, r):
                items.put((i, d))
        except ApiError as exc:
            items.put((i, exc))
        except Exception:  # never leave the reader waiting
            items.put((i, ApiError(500, "generation failed", kind="server_error")))
        finally:
            items.put((i, None))

    for i, r in enumerate(requests):
        threading.Thread(target=pump, args=(i, r), name=f"stream-{r.id}", daemon=True).start()
    open_count = len(requests)
    try:
        while open_count:
            i, item = items.get(timeout=_wait_limit(engine) + 5)
            if item is None:
                open_count -= 1
            elif isinstance(item, ApiError):
                raise item
            else:
                yield i, item
    except queue.Empty:
        raise ApiError(500, "request timed out waiting for the engine", kind="server_error") from None
    finally:
        for r in requests:
            r.stream.cancel()
