"""The handler interface (MosaicML's model handlers) and how its failures reach clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, TypedDict, runtime_checkable


class ModelRequest(TypedDict):
    """One input of a batch, as MosaicML hands it to `predict`."""

    input: Any
    parameters: dict[str, Any]


@runtime_checkable
class ModelHandler(Protocol):
    """What a handler class must offer. Built once: `Handler(**model_parameters)`.

    Optional methods, looked up by name: `predict_stream(**request) -> Iterator[str]` (the
    `/predict_stream` route), `cost(model_request) -> int` (tokens an input adds to a batch, and a
    place to reject bad input with ValueError before it is queued) and `describe() -> dict`.
    """

    def predict(self, model_requests: list[ModelRequest]) -> list[Any]: ...


StreamFn = Any  # Callable[..., Iterator[str]]


class HandlerFailure(Exception):
    """A handler call raised. ValueError/KeyError are the caller's fault (400); anything else is a
    500 whose message names the handler class and never the input."""

    def __init__(self, handler: object, exc: BaseException) -> None:
        name = type(handler).__module__ + "." + type(handler).__qualname__
        self.client_error = isinstance(exc, (ValueError, KeyError))
        self.status = 400 if self.client_error else 500
        if self.client_error:
            detail = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            message = f"{name} rejected the input: {detail}"
        else:
            message = f"the model handler {name} failed ({type(exc).__name__})"
        super().__init__(message)
        self.message = message


def stream_of(handler: object) -> StreamFn | None:
    fn = getattr(handler, "predict_stream", None)
    return fn if callable(fn) else None


def iterate(handler: object, stream: Iterator[Any]) -> Iterator[str]:
    """A handler's stream as text chunks; its failures as HandlerFailure."""
    try:
        for chunk in stream:
            yield chunk if isinstance(chunk, str) else str(chunk)
    except Exception as exc:
        raise HandlerFailure(handler, exc) from exc
