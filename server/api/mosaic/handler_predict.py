"""MosaicML `/predict` and `/predict_stream` (also under `/v1/`) on a handler-served model kind:
the built-in embedding kind or a user's model handler (translation only).

Every input of `{"inputs": [...], "parameters": {...}}` becomes one `{"input", "parameters"}` model
request; concurrent requests' inputs share `predict` calls, and each caller gets its outputs back
in input order as `{"outputs": [...]}`. `/predict_stream` calls the handler's
`predict_stream(input=..., parameters=...)` and sends each chunk as one NDJSON line
`{"outputs": ["<chunk>"]}`. Errors are MosaicML's `{"error": message, "code": status}`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify
from pydantic import BaseModel, ConfigDict, Field

from server.api.common import handler_calls
from server.api.common.dialect import Dialect, bad_request, current_engine
from server.api.common.errors import ApiError
from server.api.common.streaming import ndjson, ndjson_response
from server.api.mosaic.protocol import error_body
from server.kinds.service import HandlerEngine

# MosaicML's wire format (its error shape, 400 for a bad body), on its own blueprint: app.py registers
# this one instead of mosaic.bp when the model kind is not chat
dialect = Dialect("mosaic_handler", error_body, invalid=bad_request)
bp = dialect.bp


class HandlerPredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: list[Any] = Field(..., min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)


def _read(limit: int | None = None) -> tuple[HandlerEngine, HandlerPredictRequest]:
    engine: HandlerEngine = current_engine()  # type: ignore[assignment]
    body = dialect.read(HandlerPredictRequest)
    most = limit or engine.settings.max_client_batch_size
    if len(body.inputs) > most:
        raise ApiError(400, f"inputs: at most {most} inputs per request (MAX_CLIENT_BATCH_SIZE)"
                       if limit is None else f"inputs: /predict_stream takes exactly {limit} input")
    return engine, body


@bp.post("/predict")
@bp.post("/v1/predict")
def predict() -> Response:
    engine, body = _read()
    reqs = [{"input": x, "parameters": dict(body.parameters)} for x in body.inputs]
    outputs, _ = handler_calls.run(engine, reqs)  # type: ignore[arg-type]
    return jsonify({"outputs": outputs})


@bp.post("/predict_stream")
@bp.post("/v1/predict_stream")
def predict_stream() -> Response:
    engine, body = _read(limit=1)
    chunks = handler_calls.stream(engine, {"input": body.inputs[0], "parameters": dict(body.parameters)})

    def lines() -> Iterator[str]:
        try:
            for chunk in chunks:
                if chunk:
                    yield ndjson({"outputs": [chunk]})
        except Exception as exc:  # a handler failing mid-stream: one error line, then the end
            yield ndjson(error_body(handler_calls.to_api_error(exc))[1])

    return ndjson_response(lines())
