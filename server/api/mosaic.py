"""MosaicML inference API: `/predict`, `/predict_stream` (also under `/v1/`), translation only.

`inputs` is a list of prompts answered as one batch: every prompt is submitted before any is
awaited, so the scheduler batches them. `parameters` take MosaicML's defaults (temperature 0.8 with
0 = greedy, top_p 0.95, top_k 50, max_new_tokens 256) and any other `generate` option.
`/predict_stream` answers one prompt as newline-delimited JSON (what `mcli.predict(stream=True)`
reads): one `{"outputs": ["<new text>"]}` object per chunk. Errors: `{"error": "<message>",
"code": <status>}` with a 4xx/5xx status (mid-stream: one such line, then the stream ends).
`Authorization: <key>` (without `Bearer`) is read by the key check once keys exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.api import engine_calls
from server.api.errors import ApiError, pydantic_message, read_json_object, register_renderer
from server.api.streaming import ndjson
from server.engine.service import Engine
from server.observability import metrics

bp = Blueprint("mosaic", __name__)

MOSAIC_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 50,
                                   "max_new_tokens": 256}
MAX_INPUTS = 64


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1, max_length=MAX_INPUTS)
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Any `generate` option; defaults temperature 0.8 (0 = greedy), top_p 0.95, top_k 50, "
                    "max_new_tokens 256. `stop` (str or list) cuts the output at a stop string.")


class PredictStreamRequest(PredictRequest):
    inputs: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1, max_length=1)


class PredictResponse(BaseModel):
    outputs: list[str]


class PredictStreamChunk(BaseModel):
    """One line of /predict_stream (newline-delimited JSON)."""

    outputs: list[str]


class ErrorResponse(BaseModel):
    error: str
    code: int


def _engine() -> Engine:
    return current_app.extensions["inferbox.engine"]


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    resp = jsonify({"error": exc.message, "code": exc.status})
    resp.status_code = exc.status
    resp.headers.update(exc.headers)
    return resp


register_renderer(bp.name, _api_error)


def _prepare(model: type[PredictRequest]) -> tuple[Engine, list[Any], PredictRequest]:
    engine = _engine()
    try:
        body = model.model_validate(read_json_object(request))
    except ValidationError as exc:
        raise ApiError(400, pydantic_message(exc)) from None
    engine_calls.require_ready(engine)
    reqs = []
    for k, text in enumerate(body.inputs):
        ids = engine.encode(text)
        if not ids:
            raise ApiError(400, f"inputs.{k}: empty after tokenization")
        try:
            params = engine_calls.make_params(engine, body.parameters, len(ids), MOSAIC_DEFAULTS)
        except ApiError as exc:
            raise ApiError(exc.status, exc.message.replace("generate_kwargs", "parameters"), exc.kind,
                           exc.param, exc.headers) from None
        reqs.append(engine_calls.new_request(engine, ids, params))
    return engine, reqs, body


@bp.post("/predict")
@bp.post("/v1/predict")
def predict() -> Response:
    engine, reqs, _ = _prepare(PredictRequest)
    results = engine_calls.run_many(engine, reqs)
    outputs = [engine_calls.final_text(engine, res[0], r.params.stop)[0] for r, res in zip(reqs, results,
                                                                                            strict=True)]
    metrics.record_tokens(sum(r.prompt_tokens for r in reqs), sum(len(res[0].token_ids) for res in results))
    return jsonify({"outputs": outputs})


@bp.post("/predict_stream")
@bp.post("/v1/predict_stream")
def predict_stream() -> Response:
    engine, reqs, _ = _prepare(PredictStreamRequest)
    req = reqs[0]
    deltas = engine_calls.stream_text(engine, req)

    def lines() -> Iterator[str]:
        tokens = 0
        try:
            for d in deltas:
                tokens += len(d.token_ids)
                if d.text:
                    yield ndjson({"outputs": [d.text]})
            metrics.record_tokens(req.prompt_tokens, tokens)
        except ApiError as exc:
            yield ndjson({"error": exc.message, "code": exc.status})
        finally:
            deltas.close()

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
