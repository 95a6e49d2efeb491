"""What every dialect module shares, so that each one declares only what differs.

A dialect is a blueprint plus four declarations: how an `ApiError` looks on its wire, what status a
body that fails its request model gets, its sampling defaults, and what it calls the engine's option
names in error messages. A new dialect is:

    def _error(exc: ApiError) -> tuple[int, dict[str, Any]]:
        return exc.status, {"error": exc.message}

    dialect = Dialect("mine", _error, defaults={"max_new_tokens": 64})
    bp = dialect.bp  # app.py registers it

    @bp.post("/mine")
    def mine() -> Response:
        engine = current_engine()
        body = dialect.read(MineRequest)
        engine_calls.require_ready(engine)
        params = dialect.params(engine, body.options, prompt_tokens)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError

from server.api.common import engine_calls
from server.api.common.errors import ApiError, pydantic_message, read_json_object, register_renderer
from server.engine.engine import Engine
from server.engine.request import GenerationParams

Model = TypeVar("Model", bound=BaseModel)
ErrorBody = Callable[[ApiError], tuple[int, dict[str, Any]]]
# jinja's exceptions, by name: a template that fails on the messages is the client's fault
TEMPLATE_ERRORS = ("TemplateError", "TemplateSyntaxError", "UndefinedError")


def unprocessable(exc: ValidationError) -> ApiError:
    """A body that fails the request model: 422 listing every error (the default)."""
    return ApiError(422, pydantic_message(exc))


def bad_request(exc: ValidationError) -> ApiError:
    """The same as a 400, for dialects that answer bad fields that way."""
    return ApiError(400, pydantic_message(exc))


@dataclass
class Dialect:
    """One wire format: its blueprint, registered with its error renderer."""

    name: str
    error_body: ErrorBody  # ApiError -> (status, JSON body) in this dialect's shape
    invalid: Callable[[ValidationError], ApiError] = unprocessable
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling defaults over generation_config
    # engine option names as this dialect's clients know them, for error messages
    # the engine's option names as this dialect's clients know them (error messages use them)
    names: dict[str, str] = field(default_factory=lambda: {"generate_kwargs": "parameters"})
    url_prefix: str | None = None
    bp: Blueprint = field(init=False)

    def __post_init__(self) -> None:
        self.bp = Blueprint(self.name, __name__, url_prefix=self.url_prefix)  # root path: server/api
        self.bp.register_error_handler(ApiError, self.render)
        # checks made outside the blueprint (keys, rate limits, overload) answer in this shape too
        register_renderer(self.name, self.render)

    def render(self, exc: ApiError) -> Response:
        status, body = self.error_body(exc)
        resp = jsonify(body)
        resp.status_code = status
        resp.headers.update(exc.headers)
        return resp

    def read(self, model: type[Model]) -> Model:
        """The request body validated by `model`, or this dialect's validation error."""
        try:
            return model.model_validate(read_json_object(request))
        except ValidationError as exc:
            raise self.invalid(exc) from None

    def params(self, engine: Engine, kwargs: dict[str, Any], prompt_tokens: int) -> GenerationParams:
        """Engine parameters over this dialect's defaults; errors name options as its clients do."""
        return engine_calls.make_params(engine, kwargs, prompt_tokens, self.defaults, self.names)


def current_engine() -> Engine:
    return current_app.extensions["inferbox.engine"]


@contextmanager
def tokenizing(param: str | None = None) -> Iterator[None]:
    """Errors while encoding the client's text or applying the chat template to its messages are
    the client's: a 400 (naming `param` where the dialect names fields), not a 500."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(400, str(exc), param=param) from None
    except Exception as exc:
        if type(exc).__name__ in TEMPLATE_ERRORS:
            raise ApiError(400, f"chat template failed on these messages: {exc}", param=param) from None
        raise
