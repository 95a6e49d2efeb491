"""MosaicML inference API: `/predict`, `/predict_stream` (also under `/v1/`), translation only.

`inputs` is a list of prompts answered as one batch: every prompt is submitted before any is
awaited, so the engine batches them. `parameters` take MosaicML's defaults (temperature 0.8 with
0 = greedy, top_p 0.95, top_k 50, max_new_tokens 256) and any other `generate` option.
`/predict_stream` answers one prompt as newline-delimited JSON (what `mcli.predict(stream=True)`
reads): one `{"outputs": ["<new text>"]}` object per chunk. Errors: `{"error": "<message>",
"code": <status>}` with a 4xx/5xx status (mid-stream: one such line, then the stream ends).
`Authorization: <key>` (without `Bearer`) is read by the key check once keys exist.
`parameters.adapter` names the LoRA adapter (absent: DEFAULT_ADAPTER).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify

from server.api.common import adapters, engine_calls
from server.api.common.dialect import Dialect, bad_request, current_engine
from server.api.common.errors import ApiError
from server.api.common.streaming import ndjson, ndjson_response
from server.api.mosaic.protocol import MOSAIC_DEFAULTS, PredictRequest, PredictStreamRequest, error_body
from server.engine.engine import Engine
from server.observability import metrics

dialect = Dialect("mosaic", error_body, invalid=bad_request, defaults=MOSAIC_DEFAULTS)
bp = dialect.bp


def _prepare(model: type[PredictRequest]) -> tuple[Engine, list[Any], PredictRequest]:
    engine = current_engine()
    body = dialect.read(model)
    engine_calls.require_ready(engine)
    options = dict(body.parameters)
    adapter = options.pop("adapter", None)  # not a `generate` option: the LoRA adapter to use
    if adapter is not None and not isinstance(adapter, str):
        raise ApiError(400, "parameters.adapter: must be a string (an adapter name)")
    reqs = []
    for k, text in enumerate(body.inputs):
        ids = engine.encode(text)
        if not ids:
            raise ApiError(400, f"inputs.{k}: empty after tokenization")
        params = dialect.params(engine, options, len(ids))
        reqs.append(engine_calls.new_request(engine, ids, params, adapters.named(adapter)))
    return engine, reqs, body


@bp.post("/predict")
@bp.post("/v1/predict")
def predict() -> Response:
    engine, reqs, _ = _prepare(PredictRequest)
    results = engine_calls.run_many(engine, reqs)
    outputs = [res[0].text for res in results]
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
            yield ndjson(error_body(exc)[1])
        finally:
            deltas.close()

    return ndjson_response(lines())
