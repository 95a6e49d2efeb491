"""Embeddings over HTTP (translation only): OpenAI `POST /v1/embeddings` and text-embeddings-inference
`POST /embed`. Both answer 400 unless the served model is an embedding model.

- `/v1/embeddings`: `input` is a string, a list of strings, token ids or a list of token-id lists;
  `encoding_format` `float` or `base64` (little-endian float32, as OpenAI sends it); `dimensions`
  only where the preset lists Matryoshka sizes (400 otherwise); `usage` counts input tokens.
  Errors in OpenAI's shape.
- `/embed`: `inputs` a string or a list of strings, `normalize` (default true), `truncate` (default
  false: a longer input is refused with 413); answers a list of vectors. Errors in TEI's shape,
  `{"error", "error_type"}` (400/422 validation, 413 too large, 503 overloaded).

Every input becomes one model request of the embedding handler, so these batch with each other and
with MosaicML `/predict` inputs.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from flask import Response, current_app, jsonify

from server.api.common import handler_calls
from server.api.common.dialect import Dialect, current_engine
from server.api.common.errors import ApiError
from server.api.openai import routes as openai
from server.api.openai.embeddings_protocol import EmbeddingRequest, EmbedRequest

_TEI_TYPES = {400: "Validation", 413: "Validation", 422: "Validation", 401: "Unauthorized",
              429: "Overloaded", 503: "Overloaded"}


def _tei_error(exc: ApiError) -> tuple[int, dict[str, Any]]:
    return exc.status, {"error": exc.message, "error_type": _TEI_TYPES.get(exc.status, "Backend")}


openai_bp = openai.dialect.bp  # /v1/embeddings is one more OpenAI route, in OpenAI's error shape
tei = Dialect("tei", _tei_error)  # a body that fails the request model: 422, as TEI answers
tei_bp = tei.bp


def _engine(what: str) -> Any:
    return handler_calls.require_kind(current_engine(), "embedding", what)


def _too_many(n: int, field: str) -> None:
    most = current_app.extensions["inferbox.settings"].max_client_batch_size
    if n > most:
        raise ApiError(413 if field == "inputs" else 400,
                       f"{field}: at most {most} inputs per request (MAX_CLIENT_BATCH_SIZE); got {n}",
                       param=field)


@openai_bp.post("/embeddings")
def embeddings() -> Response:
    engine = _engine("/v1/embeddings")
    body = openai.dialect.read(EmbeddingRequest)
    raw = body.input
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        inputs = [{"token_ids": list(raw)}]
    else:
        inputs = [x if isinstance(x, str) else {"token_ids": list(x)} for x in raw]  # type: ignore[union-attr]
    if not inputs:
        raise ApiError(400, "input: must not be empty", param="input")
    _too_many(len(inputs), "input")
    params: dict[str, Any] = {}
    if body.dimensions is not None:
        params["dimensions"] = body.dimensions
    reqs = [{"input": x, "parameters": params} for x in inputs]
    vectors, tokens = handler_calls.run(engine, reqs, field="input")  # type: ignore[arg-type]
    data_out = [{"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
                for i, v in enumerate(vectors)]
    return jsonify({"object": "list", "data": data_out,
                    "model": current_app.extensions["inferbox.settings"].served_model_name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _encode(vector: list[float], fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@tei_bp.post("/embed")
def embed() -> Response:
    engine = _engine("/embed")
    body = tei.read(EmbedRequest)
    inputs = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    if not inputs:
        raise ApiError(422, "inputs: must not be empty")
    _too_many(len(inputs), "inputs")
    params: dict[str, Any] = {"normalize": body.normalize, "truncate": body.truncate}
    if body.dimensions is not None:
        params["dimensions"] = body.dimensions
    reqs = [{"input": x, "parameters": params} for x in inputs]
    try:
        vectors, _ = handler_calls.run(engine, reqs)  # type: ignore[arg-type]
    except ApiError as exc:
        if exc.status == 400 and "tokens; this model accepts at most" in exc.message:
            raise ApiError(413, exc.message) from None  # TEI's status for an input that is too long
        raise
    return jsonify(vectors)
