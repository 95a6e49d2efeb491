"""Every exception the engine raises or reports, in one place (API modules import them from here)."""

from __future__ import annotations


class EngineError(RuntimeError):
    """Base class of the engine's own conditions."""


class QueueFull(EngineError):
    """More requests are waiting than MAX_QUEUED_REQUESTS allows."""


class EngineUnavailable(EngineError):
    """The engine is not running (not loaded yet, draining, or its thread died)."""


class InvalidParams(ValueError):
    """A client error in generation parameters; the message names the offending field."""


class InvalidConstraint(InvalidParams):
    """A structured-output constraint (schema, regex, grammar, tools) that cannot be enforced."""


class ConstraintDeadEnd(ValueError):
    """A constrained row reached a state where its constraint allows no token at all."""

    def __init__(self) -> None:
        super().__init__("the output constraint allows no further token (the grammar cannot be "
                         "completed from here)")


class InvalidDistribution(ValueError):
    """A row's sampling parameters broke its probability distribution (the request's fault)."""

    def __init__(self) -> None:
        super().__init__("the sampling parameters produced an invalid probability distribution "
                         "(try a larger temperature or looser top_p/typical_p/cutoffs)")


class StreamError(RuntimeError):
    """Generation failed inside the engine; `client_error` marks a problem with the request."""

    def __init__(self, message: str, client_error: bool = False) -> None:
        super().__init__(message)
        self.client_error = client_error


class EngineTimeout(StreamError):
    """The engine did not finish a request in time (overload, not a fault of the request)."""


class EngineLost(StreamError):
    """The engine stopped under this request for a reason outside it (a tensor-parallel rank was
    lost): a 503, so that the client retries on another replica."""


def is_client_fault(exc: BaseException) -> bool:
    """Whether a generation failure comes from the request's own parameters (a 4xx), not the server.

    Out-of-memory is the server's (torch's `OutOfMemoryError` is matched by name, so this module
    needs no torch); transformers rejecting an option, or sampling from a distribution that the
    options broke, is the request's.
    """
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return False
    if isinstance(exc, ValueError | TypeError | IndexError | KeyError | AttributeError):
        return True
    return isinstance(exc, RuntimeError) and any(
        m in str(exc) for m in ("probability tensor", "Could not infer dtype", "index out of range"))


def failure_message(exc: BaseException) -> tuple[str, bool]:
    """What a failed request's stream says (never prompt text), and whether it is a client error."""
    client = is_client_fault(exc)
    return (f"generation failed: {type(exc).__name__}: {exc}" if client else "generation failed"), client
