"""TGI / LoRAX API: `/generate`, `/generate_stream`, `POST /` (compat), `/info` (translation only).

Mappings (docs/api/tgi-lorax.md has the table):
- Sampling is on when `do_sample` is true or any of temperature/top_k/top_p/typical_p is set, as
  in TGI; a sampled request without `seed` gets a random one, reported in `details.seed`.
- `best_of` = n sampled candidates (each its own seed); the one with the highest total logprob is
  answered, the others go to `details.best_of_sequences`.
- `stop` sequences stay in `generated_text` (TGI does not strip them); finish reasons are
  `length`, `eos_token`, `stop_sequence`.
- `decoder_input_details` scores the prompt in one extra forward pass (server/engine/scoring.py).
- `truncate` keeps the last N input tokens; `watermark` uses transformers' WatermarkingConfig with
  TGI's gamma 0.5 / delta 2.0; LoRAX `ignore_eos_token` sets min_new_tokens = max_new_tokens.
- LoRAX adapters: `adapter_id` (+ `adapter_source`, `api_token`) or `merged_adapters` become the
  request's AdapterRef (server/api/common/adapters.py); a refused adapter keeps its status (404 unknown,
  400 invalid / outside the allowed roots / unsupported source / bad merge), `error_type`
  "validation".
- Structured output (server/api/common/structured_dialects.py): TGI `grammar` {"type": "json" | "regex",
  "value"} and LoRAX `response_format` {"type": "json_object", "schema"} are enforced per row; one that
  cannot be enforced (a bad schema or regex, an unknown type, both fields at once) is a 422
  `validation` error, as TGI answers an invalid grammar.
- Rejected: non-zero `frequency_penalty` (422).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from flask import Response, jsonify
from pydantic import BaseModel

from server.api.common import adapters, engine_calls, structured
from server.api.common.dialect import Dialect, current_engine
from server.api.common.errors import ApiError
from server.api.common.streaming import sse, sse_response
from server.api.common.structured_dialects import lorax_response_format, tgi_grammar
from server.api.tgi.protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    MAX_BEST_OF,
    MAX_STOP_SEQUENCES,
    CompatRequest,
    GenerateRequest,
    Parameters,
)
from server.engine.engine import Engine
from server.engine.request import GenerationRequest, SequenceResult, TextOptions
from server.observability import metrics

VERSION = "2.4.1-inferbox"  # the TGI API version whose wire format this follows
WATERMARK = {"greenlist_ratio": 0.5, "bias": 2.0}  # TGI's WATERMARK_GAMMA / WATERMARK_DELTA
_FINISH = {"eos": "eos_token", "stop": "stop_sequence"}
_TEXT = TextOptions(strip_stop=False)  # TGI's generated_text ends with the stop sequence


def _error_type(exc: ApiError) -> tuple[int, str]:
    if exc.kind == "overloaded":
        return 429, "overloaded"
    if exc.kind == "unavailable":
        return 503, "unavailable"
    if exc.status >= 500:
        return 424, "generation"
    if exc.kind == "unsupported_model":  # a request this server cannot serve at all
        return 400, "validation"
    if exc.kind in adapters.ADAPTER_KINDS:  # an adapter refused: its own status (404 unknown, 400 bad)
        return exc.status, "validation"
    if exc.status == 400:
        return 422, "validation"
    return exc.status, "validation"


def _error(exc: ApiError) -> tuple[int, dict[str, Any]]:
    status, kind = _error_type(exc)
    return status, {"error": exc.message, "error_type": kind}


# no dialect defaults beyond TGI's own: the model's generation config stays the base
dialect = Dialect("tgi", _error, defaults={"top_k": 0, "top_p": 1.0, "typical_p": 1.0, "temperature": 1.0})
bp = dialect.bp


@bp.get("/info")
def info() -> Response:
    engine = current_engine()
    if engine.kind != "chat":  # text-embeddings-inference's /info shape
        from server.api.common.handler_calls import info as handler_info

        return jsonify(handler_info(engine))
    settings = engine.settings
    loaded, limits = engine.loaded, engine.limits
    context = limits.context_length if limits else 0
    return jsonify({
        "model_id": settings.served_model_name,
        "model_sha": None,
        "model_dtype": str(loaded.dtype).removeprefix("torch.") if loaded else None,
        # inferbox's addition: which dtype TORCH_DTYPE resolved to, and why (e.g. auto on this CPU)
        "dtype": {"name": str(loaded.dtype).removeprefix("torch."), "reason": loaded.dtype_reason}
        if loaded else None,
        "model_device_type": loaded.device.type if loaded else None,
        "tensor_parallel": settings.tensor_parallel,  # inferbox's: ranks the model is split across
        "model_pipeline_tag": "text-generation",
        "quantize": settings.quantization if settings.quantization != "none" else None,
        "max_concurrent_requests": settings.max_queued_requests,
        "max_best_of": MAX_BEST_OF,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": max(0, context - 1),
        "max_input_length": max(0, context - 1),
        "max_total_tokens": context,
        "max_batch_total_tokens": settings.max_batch_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "inferbox",
        "version": VERSION,
        "sha": None,
        "docker_label": None,
    })


# ---------------------------------------------------------------- translation

class _Translation:
    """A validated TGI request turned into engine requests plus what the answer needs."""

    def __init__(self, engine: Engine, body: GenerateRequest) -> None:
        p = body.parameters or Parameters()
        if p.adapter_id and p.merged_adapters is not None:
            raise ApiError(422, "you must specify at most one of `adapter_id` or `merged_adapters`")
        merged = p.merged_adapters
        if merged is not None and len(merged.ids) != len(merged.weights):
            raise ApiError(400, f"merged_adapters: {len(merged.ids)} ids but {len(merged.weights)} weights "
                           "(one weight per adapter)", kind="bad_merge")
        self.adapter = adapters.lorax(p.adapter_id, p.adapter_source, merged, p.api_token)
        if p.frequency_penalty:
            raise ApiError(422, "frequency_penalty is not supported (only 0); use repetition_penalty")
        spec, param = structured.one_of((tgi_grammar(p.grammar), "grammar"),
                                        (lorax_response_format(p.response_format), "response_format"))
        self.constraint = structured.compile_constraint(engine, spec, param)
        if any(not s for s in p.stop or []):
            raise ApiError(422, "stop sequences must not be empty")
        self.p = p
        self.inputs = body.inputs
        self.sampling = bool(p.do_sample or p.temperature is not None and p.temperature != 1.0
                             or p.top_k or p.top_p is not None or p.typical_p is not None)
        self.best_of = p.best_of or 1
        if self.best_of > 1 and not self.sampling:
            raise ApiError(422, "you must use sampling when `best_of` is > 1")
        if self.best_of > 1 and p.seed is not None:
            raise ApiError(422, "`seed` must not be set when `best_of` is > 1")
        ids = engine.encode(body.inputs)
        if p.truncate is not None:
            ids = ids[-p.truncate:]
        if not ids:
            raise ApiError(422, "`inputs` is empty after tokenization")
        self.input_ids = ids
        self.top_n = max(p.top_n_tokens or 0, p.return_k_alternatives or 0)
        kw: dict[str, Any] = {"max_new_tokens": p.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                              "do_sample": self.sampling, "logprobs": True, "top_logprobs": self.top_n}
        for name in ("repetition_penalty", "temperature", "top_k", "top_p", "typical_p"):
            if getattr(p, name) is not None:
                kw[name] = getattr(p, name)
        if not self.sampling:
            kw.update(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0)
        if p.stop:
            kw["stop"] = list(p.stop)
        if p.watermark:
            kw["watermarking_config"] = dict(WATERMARK)
        if p.ignore_eos_token:
            kw["min_new_tokens"] = kw["max_new_tokens"]
        self.requests: list[GenerationRequest] = []
        self.seeds: list[int | None] = []
        for _ in range(self.best_of):
            seed = None
            if self.sampling:
                seed = p.seed if p.seed is not None else random.getrandbits(63)
                kw["seed"] = seed
            params = dialect.params(engine, kw, len(ids))
            self.requests.append(engine_calls.new_request(engine, ids, params, self.adapter,
                                                          self.constraint, _TEXT))
            self.seeds.append(seed)


def _token(engine: Engine, tid: int, text: str, logprob: float | None, special: set[int]) -> dict[str, Any]:
    if tid in special:
        text = engine.tokenizer.decode([tid], skip_special_tokens=False)
    return {"id": tid, "text": text, "logprob": logprob, "special": tid in special}


def _alternatives(engine: Engine, top: list[tuple[int, float]], special: set[int]) -> list[dict[str, Any]]:
    return [_token(engine, i, engine.tokenizer.decode([i], skip_special_tokens=False), v, special)
            for i, v in top]


def _finish(reason: str | None) -> str:
    return _FINISH.get(reason or "length", "length")


def _details(engine: Engine, tr: _Translation, req: GenerationRequest, seq: SequenceResult, seed: int | None,
             prefill: list[dict[str, Any]]) -> dict[str, Any]:
    special = set(engine.tokenizer.all_special_ids)
    engine_calls.ensure_logprobs(engine, req, seq)
    texts = engine_calls.token_texts(engine, seq.token_ids)
    tokens = []
    for k, (tid, text) in enumerate(zip(seq.token_ids, texts, strict=True)):
        tok = _token(engine, tid, text, seq.logprobs[k] if k < len(seq.logprobs) else None, special)
        if tr.p.return_k_alternatives:
            tok["alternative_tokens"] = [{"id": a["id"], "text": a["text"], "logprob": a["logprob"]}
                                         for a in _alternatives(engine, _top(seq, k), special)]
        tokens.append(tok)
    out: dict[str, Any] = {
        "finish_reason": _finish(seq.finish_reason),
        "prompt_tokens": req.prompt_tokens,
        "generated_tokens": len(seq.token_ids),
        "seed": seed,
        "prefill": prefill,
        "tokens": tokens,
    }
    if tr.p.top_n_tokens:
        out["top_tokens"] = [_alternatives(engine, _top(seq, k), special)[: tr.p.top_n_tokens]
                             for k in range(len(seq.token_ids))]
    return out


def _top(seq: SequenceResult, k: int) -> list[tuple[int, float]]:
    return seq.top_logprobs[k] if k < len(seq.top_logprobs) and seq.top_logprobs[k] else []


def _prefill(engine: Engine, tr: _Translation) -> list[dict[str, Any]]:
    if not tr.p.decoder_input_details:
        return []
    ids = tr.input_ids
    lps, _ = engine_calls.score(engine, ids, 1, 0, tr.adapter)
    texts = [engine.tokenizer.decode([t], skip_special_tokens=False) for t in ids]
    return [{"id": t, "text": texts[k], "logprob": None if k == 0 else lps[k - 1]} for k, t in enumerate(ids)]


def _generate(engine: Engine, tr: _Translation) -> dict[str, Any]:
    results = [r[0] for r in engine_calls.run_many(engine, tr.requests)]
    order = list(range(len(results)))
    if len(results) > 1:
        for req, seq in zip(tr.requests, results, strict=True):
            engine_calls.ensure_logprobs(engine, req, seq)
        order.sort(key=lambda j: -sum(results[j].logprobs))
    best = order[0]
    prefix = tr.inputs if tr.p.return_full_text else ""
    seq = results[best]
    metrics.record_tokens(len(tr.input_ids), sum(len(r.token_ids) for r in results))
    out: dict[str, Any] = {"generated_text": prefix + seq.text}
    if tr.p.details or tr.p.decoder_input_details:
        prefill = _prefill(engine, tr)
        details = _details(engine, tr, tr.requests[best], seq, tr.seeds[best], prefill)
        if len(results) > 1:
            details["best_of_sequences"] = []
            for j in order[1:]:
                other = _details(engine, tr, tr.requests[j], results[j], tr.seeds[j], prefill)
                other.pop("prompt_tokens")
                other["generated_text"] = prefix + results[j].text
                details["best_of_sequences"].append(other)
        out["details"] = details
    return out


def _stream(engine: Engine, tr: _Translation) -> Response:
    """SSE, one `data:` event per token; the last also carries generated_text and details."""
    if tr.best_of > 1:
        raise ApiError(422, "`best_of` != 1 is not supported when streaming")
    req, seed = tr.requests[0], tr.seeds[0]
    deltas = engine_calls.stream_text(engine, req)
    special = set(engine.tokenizer.all_special_ids)
    prefix = tr.inputs if tr.p.return_full_text else ""
    want_details = bool(tr.p.details)
    score_missing = want_details or bool(tr.top_n)

    def body() -> Iterator[str]:
        ids: list[int] = []
        lps: list[float] = []
        tops: list[list[tuple[int, float]]] = []
        text = ""
        pending: dict[str, Any] | None = None  # the newest token event, sent once the next one exists
        try:
            for d in deltas:
                if d.logprobs:
                    lps.extend(d.logprobs)
                    tops.extend(d.top_logprobs or [[] for _ in d.logprobs])
                text += d.text
                if d.token_ids:
                    if pending is not None:
                        yield sse(pending)
                    ids.extend(d.token_ids)
                    if len(lps) < len(ids) and score_missing:
                        # Stopgap for engines that deliver logprobs only after the last token: one
                        # forward pass per token, so only when the client asked for details.
                        got, top = engine_calls.score(engine, req.input_ids + ids,
                                                      req.prompt_tokens + len(lps), tr.top_n, req.adapter)
                        lps.extend(got)
                        tops.extend(top or [[] for _ in got])
                    logprob = lps[len(ids) - 1] if len(lps) >= len(ids) else None
                    token = _token(engine, ids[-1], d.text, logprob, special)
                    event: dict[str, Any] = {"index": len(ids), "token": token, "top_tokens": None,
                                             "generated_text": None, "details": None}
                    if tr.p.top_n_tokens:
                        step = tops[len(ids) - 1] if len(tops) >= len(ids) else []
                        event["top_tokens"] = _alternatives(engine, step, special)[: tr.p.top_n_tokens]
                    pending = event
                elif d.text and pending is not None:
                    pending["token"]["text"] += d.text
                if d.finish_reason and pending is not None:
                    pending["generated_text"] = prefix + text
                    if want_details:
                        pending["details"] = {"finish_reason": _finish(d.finish_reason),
                                              "prompt_tokens": req.prompt_tokens,
                                              "generated_tokens": len(ids), "seed": seed}
                    yield sse(pending)
                    pending = None
            metrics.record_tokens(req.prompt_tokens, len(ids))
        except ApiError as exc:
            yield sse(_error(exc)[1])
        finally:
            deltas.close()

    return sse_response(body())


def _translate(model: type[BaseModel]) -> tuple[Engine, _Translation, Any]:
    engine = current_engine()
    body = dialect.read(model)
    engine_calls.require_ready(engine)
    return engine, _Translation(engine, body), body


@bp.post("/generate")
def generate() -> Response:
    engine, tr, _ = _translate(GenerateRequest)
    return jsonify(_generate(engine, tr))


@bp.post("/generate_stream")
def generate_stream() -> Response:
    engine, tr, _ = _translate(GenerateRequest)
    return _stream(engine, tr)


@bp.post("/")
def compat() -> Response:
    """What the `text-generation` and `lorax-client` packages call: a list of one, or a stream."""
    engine, tr, body = _translate(CompatRequest)
    if body.stream:
        return _stream(engine, tr)
    return jsonify([_generate(engine, tr)])
