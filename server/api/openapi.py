"""`GET /openapi.json`: one OpenAPI 3.1 document for every dialect, built from the pydantic models.

Request schemas are the very models the handlers validate with, so the document and the server
agree (it feeds schemathesis). `generate_kwargs` (Kaito) and `parameters` (MosaicML) are described
from server/engine/params.py: the keys build_params accepts and the types it checks.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flask import Blueprint, Response, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from server.api.kaito import protocol as kaito_protocol
from server.api.mosaic import protocol as mosaic_protocol
from server.api.openai import admin, embeddings_protocol, responses_protocol, tokenize_protocol
from server.api.openai import protocol as openai_protocol
from server.api.tgi import protocol as tgi_protocol
from server.engine import params as engine_params

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


def _generate_kwargs_schema() -> dict[str, Any]:
    """The `generate` options a client may send, with the types build_params enforces."""
    typed = engine_params._Typed.model_json_schema(ref_template=_REF)
    props = typed.get("properties", {})
    for p in props.values():
        p.pop("default", None)
    return {
        "type": "object",
        "description": "Hugging Face `GenerationConfig` options (plus seed, stop, logprobs, top_logprobs).",
        "propertyNames": {"enum": sorted(engine_params.ALLOWED)},
        "properties": props,
    }


def _with_adapter(schema: dict[str, Any]) -> dict[str, Any]:
    """`generate` options plus `adapter` (a LoRA adapter's name; absent: DEFAULT_ADAPTER)."""
    names = sorted({*schema["propertyNames"]["enum"], "adapter"})
    props = {**schema["properties"], "adapter": {"type": "string", "description": "LoRA adapter name"}}
    return {**schema, "propertyNames": {"enum": names}, "properties": props}


def _json(description: str, ref: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = ref or {"type": "object"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _sse_event(payload: dict[str, Any] | None = None, note: str = "") -> dict[str, Any]:
    """One Server-Sent Event as OpenAPI 3.1 tools read it: `data` is the text after `data:`."""
    data: dict[str, Any] = {"type": "string", "description": note}
    if payload is not None:
        data.update(contentMediaType="application/json", contentSchema=payload)
    return {"type": "object", "required": ["data"],
            "properties": {"data": data, "event": {"type": "string"}, "id": {"type": "string"}}}


def _sse(description: str, event: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"text/event-stream": {"schema": event}}}


def _exactly_one_of_prompt_and_messages(schemas: dict[str, Any], ref: dict[str, Any]) -> None:
    schemas[ref["$ref"].rsplit("/", 1)[-1]]["oneOf"] = [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]


def _text_only_responses_input(schemas: dict[str, Any], ref: dict[str, Any]) -> None:
    """Advertise only what /v1/responses serves: message, function_call and function_call_output
    items with text parts (the models also let other items and parts through, so the handler can
    name them in a 400)."""
    body = schemas[ref["$ref"].rsplit("/", 1)[-1]]
    part = _REF.format(model="InputTextPart")
    kinds = [{"$ref": _REF.format(model=m)}
             for m in ("InputMessage", "FunctionCallItem", "FunctionCallOutputItem")]
    for branch in body["properties"]["input"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"] = {"anyOf": kinds}
    for model, field in (("InputMessage", "content"), ("FunctionCallOutputItem", "output")):
        for branch in schemas[model]["properties"][field]["anyOf"]:
            if branch.get("type") == "array":
                branch["items"] = {"$ref": part}
    schemas.pop("UnsupportedItem", None)
    schemas.pop("UnsupportedPart", None)


@cache
def document() -> dict[str, Any]:
    requests: list[type[BaseModel]] = [
        kaito_protocol.ChatRequest, openai_protocol.ChatCompletionRequest, openai_protocol.CompletionRequest,
        tgi_protocol.GenerateRequest, tgi_protocol.CompatRequest, mosaic_protocol.PredictRequest,
        mosaic_protocol.PredictStreamRequest, responses_protocol.ResponsesRequest,
        tokenize_protocol.TokenizeRequest, tokenize_protocol.DetokenizeRequest,
        embeddings_protocol.EmbeddingRequest, embeddings_protocol.EmbedRequest,
        admin.LoadLoraAdapterRequest, admin.UnloadLoraAdapterRequest,
    ]
    responses: list[type[BaseModel]] = [
        openai_protocol.ChatCompletion, openai_protocol.Completion, openai_protocol.ModelList,
        openai_protocol.Model, openai_protocol.ErrorResponse, tgi_protocol.GenerateResponse,
        tgi_protocol.StreamResponse, tgi_protocol.Info, tgi_protocol.ErrorResponse,
        mosaic_protocol.PredictResponse, mosaic_protocol.PredictStreamChunk, mosaic_protocol.ErrorResponse,
        responses_protocol.ResponseObject, responses_protocol.StreamEvent, tokenize_protocol.TokenizeResponse,
        tokenize_protocol.DetokenizeResponse,
        embeddings_protocol.EmbeddingResponse, embeddings_protocol.EmbedError,
    ]
    keys, defs = models_json_schema([(m, "validation") for m in requests]
                                    + [(m, "serialization") for m in responses], ref_template=_REF)
    schemas: dict[str, Any] = defs.get("$defs", {})

    def ref(model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
        return keys[(model, mode)]

    def out(model: type[BaseModel]) -> dict[str, Any]:
        return ref(model, "serialization")

    # generate_kwargs / parameters: the accepted keys and their types
    gk = _generate_kwargs_schema()
    for model, field in ((kaito_protocol.ChatRequest, "generate_kwargs"),
                         (mosaic_protocol.PredictRequest, "parameters"),
                         (mosaic_protocol.PredictStreamRequest, "parameters")):
        name = keys[(model, "validation")]["$ref"].rsplit("/", 1)[-1]
        desc = schemas[name]["properties"][field].get("description")
        schemas[name]["properties"][field] = {**gk, **({"description": desc} if desc else {})}
        if field == "parameters":  # MosaicML's `parameters.adapter` names the LoRA adapter
            schemas[name]["properties"][field] = _with_adapter(schemas[name]["properties"][field])

    kaito_name = keys[(kaito_protocol.ChatRequest, "validation")]["$ref"].rsplit("/", 1)[-1]
    schemas[kaito_name]["oneOf"] = [  # exactly one of a prompt string or a messages list
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}}},
    ]
    _exactly_one_of_prompt_and_messages(schemas, keys[(tokenize_protocol.TokenizeRequest, "validation")])
    _text_only_responses_input(schemas, keys[(responses_protocol.ResponsesRequest, "validation")])
    detail = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
    schemas["KaitoError"] = detail
    kaito_err = {"$ref": _REF.format(model="KaitoError")}
    oa_err = out(openai_protocol.ErrorResponse)
    tgi_err = out(tgi_protocol.ErrorResponse)
    mosaic_err = out(mosaic_protocol.ErrorResponse)

    def errors(schema: dict[str, Any], codes: tuple[str, ...]) -> dict[str, Any]:
        return {c: _json("error", schema) for c in codes}

    def post(summary: str, tag: str, body: dict[str, Any], ok: dict[str, Any], err: dict[str, Any],
             codes: tuple[str, ...] = ("400", "404", "413", "503")) -> dict[str, Any]:
        return {"post": {"summary": summary, "tags": [tag],
                         "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                         "responses": {"200": ok, **errors(err, codes)}}}

    def get(summary: str, tag: str, ok: dict[str, Any]) -> dict[str, Any]:
        return {"get": {"summary": summary, "tags": [tag], "responses": {"200": ok}}}

    oa_event = _sse_event(note="a JSON chunk, then the literal [DONE]")
    tgi_event = _sse_event({"anyOf": [out(tgi_protocol.StreamResponse), tgi_err]})
    kaito_chat = post("Kaito chat / text generation (`prompt` or `messages`; `stream` for SSE)", "kaito",
                      ref(kaito_protocol.ChatRequest),
                      {"description": "`{\"Result\": text}`, or SSE when stream=true", "content": {
                          "application/json": {"schema": {"type": "object",
                                                          "properties": {"Result": {"type": "string"}}}},
                          "text/event-stream": {"schema": oa_event}}},
                      kaito_err, ("400", "404", "413", "415", "422", "503"))
    chat = post("OpenAI chat completion (SSE when stream=true)", "openai",
                ref(openai_protocol.ChatCompletionRequest),
                {"description": "completion or SSE chunks", "content": {
                    "application/json": {"schema": out(openai_protocol.ChatCompletion)},
                    "text/event-stream": {"schema": oa_event}}}, oa_err)
    completions = post("OpenAI legacy completion (SSE when stream=true)", "openai",
                       ref(openai_protocol.CompletionRequest),
                       {"description": "completion or SSE chunks", "content": {
                           "application/json": {"schema": out(openai_protocol.Completion)},
                           "text/event-stream": {"schema": oa_event}}}, oa_err)
    tgi_codes = ("400", "404", "413", "422", "424", "429", "503")  # 404: an unknown adapter
    generate = post("TGI generate", "tgi", ref(tgi_protocol.GenerateRequest),
                    _json("generated text", out(tgi_protocol.GenerateResponse)), tgi_err, tgi_codes)
    generate_stream = post("TGI generate, one SSE event per token", "tgi", ref(tgi_protocol.GenerateRequest),
                           _sse("`data:` events (StreamResponse)", tgi_event), tgi_err, tgi_codes)
    compat = post("TGI / LoRAX compatibility route (what their Python clients call)", "tgi",
                  ref(tgi_protocol.CompatRequest),
                  {"description": "a list of one GenerateResponse, or SSE when stream=true", "content": {
                      "application/json": {"schema": {"type": "array",
                                                      "items": out(tgi_protocol.GenerateResponse)}},
                      "text/event-stream": {"schema": tgi_event}}}, tgi_err, tgi_codes)
    predict = post("MosaicML predict: one output per input", "mosaicml", ref(mosaic_protocol.PredictRequest),
                   _json("outputs", out(mosaic_protocol.PredictResponse)), mosaic_err)
    predict_stream = post("MosaicML predict, one input, newline-delimited JSON chunks", "mosaicml",
                          ref(mosaic_protocol.PredictStreamRequest),
                          {"description": "one PredictStreamChunk per line",
                           "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, mosaic_err)

    rp = responses_protocol
    responses_api = post("OpenAI Responses API (`event:` + `data:` SSE when stream=true)", "openai",
                         ref(rp.ResponsesRequest),
                         {"description": "a response object, or its streamed events", "content": {
                             "application/json": {"schema": out(rp.ResponseObject)},
                             "text/event-stream": {"schema": _sse_event(out(rp.StreamEvent))}}},
                         oa_err)
    tp = tokenize_protocol
    tokenize_op = post("vLLM tokenize: `prompt`, or chat `messages` with the template applied", "tokenizer",
                       ref(tp.TokenizeRequest), _json("token ids", out(tp.TokenizeResponse)), oa_err)
    detokenize_op = post("vLLM detokenize: token ids to text", "tokenizer", ref(tp.DetokenizeRequest),
                         _json("text", out(tp.DetokenizeResponse)), oa_err)
    text = {"schema": {"type": "string"}}
    admin_codes = ("400", "401", "403", "404", "503")
    admin_ok = {"description": "vLLM's `Success: LoRA adapter '<name>' ...` line",
                "content": {"text/plain": text}}
    load_lora = post("Load a LoRA adapter at run time (vLLM's shape; needs an ADMIN_API_KEYS key)",
                     "adapters", ref(admin.LoadLoraAdapterRequest), admin_ok, oa_err, admin_codes)
    unload_lora = post("Unload a LoRA adapter once its running requests end (needs an ADMIN_API_KEYS key)",
                       "adapters", ref(admin.UnloadLoraAdapterRequest), admin_ok, oa_err, admin_codes)
    index = get("Kaito liveness (JSON); the chat page for browsers (Accept prefers text/html)", "kaito", {
        "description": "server is running, or the chat page",
        "content": {"application/json": {"schema": {"type": "object"}}, "text/html": text}})

    paths: dict[str, Any] = {
        "/": {**index, **compat},
        "/ui/app.js": get("The chat page's script", "ui", {"description": "script",
                                                            "content": {"text/javascript": text}}),
        "/ui/app.css": get("The chat page's style", "ui", {"description": "style",
                                                           "content": {"text/css": text}}),
        "/v1/responses": responses_api,
        "/tokenize": tokenize_op,
        "/detokenize": detokenize_op,
        "/health": {"get": {"summary": "Healthy once the model is loaded", "tags": ["kaito"], "responses": {
            "200": _json("healthy"), "503": _json("not ready", kaito_err)}}},
        "/metrics": get("Kaito JSON metrics, or Prometheus text when Accept asks for it", "kaito", {
            "description": "metrics", "content": {"application/json": {"schema": {"type": "object"}},
                                                  "text/plain": {"schema": {"type": "string"}}}}),
        "/chat": kaito_chat,
        "/v1/chat/completions": chat,
        "/v1/completions": completions,
        "/v1/load_lora_adapter": load_lora,
        "/v1/unload_lora_adapter": unload_lora,
        "/v1/models": get("OpenAI model list (the base model, then each loaded adapter with its parent)",
                          "openai",
                          _json("models", out(openai_protocol.ModelList))),
        "/v1/models/{model_id}": {"get": {
            "summary": "One model", "tags": ["openai"],
            "parameters": [{"name": "model_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json("model", out(openai_protocol.Model)),
                          "404": _json("unknown", oa_err)}}},
        "/generate": generate,
        "/generate_stream": generate_stream,
        "/info": get("TGI model info", "tgi", _json("info", out(tgi_protocol.Info))),
        "/predict": predict,
        "/v1/predict": predict,
        "/predict_stream": predict_stream,
        "/v1/predict_stream": predict_stream,
        # embedding models only (400 on a chat model); docs/api/embeddings.md
        "/v1/embeddings": post("OpenAI embeddings", "openai", ref(embeddings_protocol.EmbeddingRequest),
                               _json("vectors", out(embeddings_protocol.EmbeddingResponse)), oa_err),
        "/embed": post("text-embeddings-inference embed", "tei", ref(embeddings_protocol.EmbedRequest),
                       _json("one vector per input", {"type": "array", "items": {
                           "type": "array", "items": {"type": "number"}}}),
                       out(embeddings_protocol.EmbedError), ("400", "413", "422", "503")),
        "/openapi.json": get("This document", "meta", _json("OpenAPI 3.1 document")),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "inferbox", "version": "1.0.0",
                 "description": "One engine, four dialects: Kaito /chat, OpenAI, TGI/LoRAX, MosaicML."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document())
