"""OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models` (translation only).

Mappings (docs/api/openai.md has the table):
- `n` choices are `n` engine requests submitted together; with `seed`, choice i samples with
  seed + i, so choices differ from each other and each is reproducible.
- `stop` strings are cut from the returned text (as OpenAI does); `finish_reason` is "stop" for an
  EOS token or a stop string, "length" for the token limit.
- Sampling follows OpenAI's defaults (temperature 1, top_p 1, no top-k) over the model's own
  generation config; temperature 0 or top_p 0 decode greedily.
- `presence_penalty`/`frequency_penalty` other than 0, `logit_bias`, non-text content and `suffix`
  are rejected with a 400 naming the field: transformers has no exact equivalent.
- `response_format`, vLLM's `structured_outputs` / `guided_*` and `tools` are enforced as one output
  constraint, or refused with a 400 (server/api/openai/tools.py, tool_calls.py).
- `model` names a LoRA adapter (server/api/common/adapters.py): the served name or "base" is the base
  model, an adapter's name that adapter (404 `model_not_found` when there is none); a server with
  no adapter accepts any `model` (clients often hard-code one). Answers name what served them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Response, current_app, jsonify, request
from pydantic import ValidationError

from server.api.common import adapters, engine_calls, structured
from server.api.common.dialect import Dialect, current_engine, tokenizing
from server.api.common.errors import ApiError
from server.api.openai.logprobs import chat_logprobs, keep_best, legacy_logprobs, visible_tokens
from server.api.openai.protocol import MAX_STOP, ChatCompletionRequest, CompletionRequest
from server.api.openai.streams import FINGERPRINT, Chunk, chat_stream, completion_stream, finish_reason, usage
from server.api.openai.tool_calls import Tool, chat_messages, template_text
from server.api.openai.tools import answer, chat_spec, completion_spec, message_dicts
from server.engine.engine import Engine
from server.engine.grammar import Constraint
from server.engine.request import GenerationRequest
from server.observability import metrics

# OpenAI's sampling defaults, over the model's generation_config.json
OPENAI_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_CREATED = int(time.time())
ADMIN_PATHS = ("/v1/load_lora_adapter", "/v1/unload_lora_adapter")  # server/api/openai/admin.py


def _served_name() -> str:
    return current_app.extensions["inferbox.settings"].served_model_name


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def _error(exc: ApiError) -> tuple[int, dict[str, Any]]:
    kind = _TYPES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    code = exc.kind if exc.kind not in ("invalid_request_error", kind) else None
    param = exc.param
    if exc.kind in adapters.ADAPTER_KINDS and request.path not in ADMIN_PATHS:
        param = param or "model"  # `model` is how OpenAI clients name an adapter
        if exc.kind == "unknown_adapter":
            code = "model_not_found"  # what OpenAI and vLLM answer for an unknown model
    return exc.status, {"error": {"message": exc.message, "type": kind, "param": param, "code": code}}


def _invalid(exc: ValidationError) -> ApiError:
    """The first failing field, named in `param`, as OpenAI answers."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return ApiError(400, f"{param}: {err['msg']}{more}", param=param)


dialect = Dialect("openai", _error, invalid=_invalid, defaults=OPENAI_DEFAULTS, url_prefix="/v1",
                  names={"max_new_tokens": "max_tokens", "generate_kwargs": "parameters"})
bp = dialect.bp


def _card(model_id: str, parent: str | None = None) -> dict[str, Any]:
    card: dict[str, Any] = {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "inferbox"}
    kind = current_engine().kind
    if kind != "chat":  # an embedding model (or a custom handler) says so
        card["type"] = kind
    else:
        card["parent"] = parent  # as vLLM: an adapter's parent is the base model, the base's is null
    return card


def _cards() -> list[dict[str, Any]]:
    """The base model, then each loaded adapter (vLLM's /v1/models with LoRA modules)."""
    name = _served_name()
    return [_card(name)] + [_card(a.name, a.parent or name) for a in adapters.loaded(current_engine())]


@bp.get("/models")
def models() -> Response:
    return jsonify({"object": "list", "data": _cards()})


@bp.get("/models/<path:model_id>")
def model(model_id: str) -> Response:
    for card in _cards():
        if card["id"] == model_id:
            return jsonify(card)
    raise ApiError(404, f"The model `{model_id}` does not exist", param="model", kind="model_not_found")


# ---------------------------------------------------------------- translation to engine requests

def _reject_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    """Fields transformers has no exact equivalent for: a 400 naming the field, never dropped."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported by this server (only 0); use repetition_penalty",
                           param=name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")
    if isinstance(body, CompletionRequest):
        if body.suffix:
            raise ApiError(400, "suffix is not supported by this server", param="suffix")
        return
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs=true", param="top_logprobs")


def sampling_kwargs(temperature: float | None, top_p: float | None) -> dict[str, Any]:
    """OpenAI's temperature/top_p -> `generate` options (`top_p: 0` decodes greedily, as OpenAI does)."""
    kw: dict[str, Any] = {}
    if temperature is not None:
        kw["temperature"] = temperature
    if top_p is not None:
        if top_p == 0:
            kw["do_sample"] = False
        else:
            kw["top_p"] = top_p
    return kw


def _kwargs(body: Any, max_tokens: int | None) -> dict[str, Any]:
    """OpenAI fields -> `generate` keyword arguments (validated again by build_params)."""
    kw = sampling_kwargs(body.temperature, body.top_p)
    if max_tokens is not None:
        kw["max_new_tokens"] = max_tokens
    for src, dst in (("top_k", "top_k"), ("min_p", "min_p"), ("repetition_penalty", "repetition_penalty"),
                     ("min_tokens", "min_new_tokens")):
        if getattr(body, src) is not None:
            kw[dst] = getattr(body, src)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > MAX_STOP:
        raise ApiError(400, f"stop: at most {MAX_STOP} stop sequences", param="stop")
    if any(not s for s in stops):
        raise ApiError(400, "stop: stop sequences must not be empty", param="stop")
    if stops:
        kw["stop"] = stops
    return kw


def _requests(engine: Engine, prompts: list[list[int]], kw: dict[str, Any], count: int,
              seed: int | None, model: str | None,
              constraint: Constraint | None = None) -> list[GenerationRequest]:
    """`count` requests per prompt (choice i of a prompt seeded with seed + i), on the adapter
    `model` names, each under `constraint` (a fresh matcher per sequence)."""
    limits = engine.limits
    adapter = adapters.for_model(engine, model, _served_name())
    out = []
    for ids in prompts:
        if not ids:
            raise ApiError(400, "the prompt is empty after tokenization", param="prompt")
        kwargs = dict(kw)
        if "max_new_tokens" not in kwargs and limits is not None:
            kwargs["max_new_tokens"] = max(1, limits.context_length - len(ids))
        for i in range(count):
            if seed is not None:
                kwargs["seed"] = (seed + i) % (2**63)
            params = dialect.params(engine, kwargs, len(ids))
            out.append(engine_calls.new_request(engine, ids, params, adapter, constraint))
    return out


def answered_by(req: GenerationRequest) -> str:
    """The `model` an answer names: the adapter the client chose by name, else the served model."""
    ref = req.adapter
    if ref is not None and ref.name and ref.name != adapters.BASE:
        return ref.name
    return _served_name()


def _chat_ids(engine: Engine, body: ChatCompletionRequest, tools: list[Tool]) -> list[int]:
    """The prompt: messages (tool calls and results included) and tools through the chat template."""
    messages, tools_kw = chat_messages(message_dicts(body.messages), tools, template_text(engine.tokenizer))
    with tokenizing(param="messages"):
        return engine.encode_chat(messages, tools_kw)


# ---------------------------------------------------------------- /v1/chat/completions

@bp.post("/chat/completions")
def chat_completions() -> Response:
    engine = current_engine()
    body: ChatCompletionRequest = dialect.read(ChatCompletionRequest)
    _reject_unsupported(body)
    spec, param, tools = chat_spec(body)
    engine_calls.require_ready(engine)
    constraint = structured.compile_constraint(engine, spec, param)
    ids = _chat_ids(engine, body, tools)
    kw = _kwargs(body, body.max_completion_tokens or body.max_tokens)
    if body.logprobs:
        kw["logprobs"] = True
        kw["top_logprobs"] = body.top_logprobs or 0
    n = body.n or 1
    reqs = _requests(engine, [ids], kw, n, body.seed, body.model, constraint)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    name = answered_by(reqs[0])
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:
        chunk = Chunk(rid, "chat.completion.chunk", name, include_usage)
        return chat_stream(engine, reqs, chunk, bool(body.logprobs), bool(tools))

    results = engine_calls.run_many(engine, reqs)
    choices = []
    completion_tokens = 0
    for i, (r, res) in enumerate(zip(reqs, results, strict=True)):
        seq = res[0]
        text, reason = engine_calls.final_text(seq)
        completion_tokens += len(seq.token_ids)
        logprobs = None
        if body.logprobs:
            engine_calls.ensure_logprobs(engine, r, seq)
            k = visible_tokens(engine, seq.token_ids, len(text))
            logprobs = {"content": chat_logprobs(engine, seq.token_ids[:k], seq.logprobs[:k],
                                                 seq.top_logprobs[:k] if body.top_logprobs else None)}
        message, reason = answer(text, finish_reason(reason), bool(tools))
        choices.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": reason})
    metrics.record_tokens(len(ids), completion_tokens)
    return jsonify({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
                    "system_fingerprint": FINGERPRINT, "choices": choices,
                    "usage": usage(len(ids), completion_tokens)})


# ---------------------------------------------------------------- /v1/completions

def _completion_prompts(engine: Engine, prompt: Any) -> tuple[list[list[int]], list[str]]:
    """Token ids and texts of each prompt (OpenAI accepts text, texts, ids, or lists of ids)."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ApiError(400, "prompt: must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    vocab = engine.limits.vocab_size if engine.limits else None
    ids, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids.append(engine.encode(p))
            texts.append(p)
        else:
            if vocab is not None and any(not 0 <= t < vocab for t in p):
                raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            ids.append(list(p))
            texts.append(engine.decode(list(p), skip_special_tokens=False))
    return ids, texts


@bp.post("/completions")
def completions() -> Response:
    engine = current_engine()
    body: CompletionRequest = dialect.read(CompletionRequest)
    _reject_unsupported(body)
    spec, param = completion_spec(body)
    n = body.n or 1
    best_of = body.best_of or n
    if best_of < n:
        raise ApiError(400, "best_of must be greater than or equal to n", param="best_of")
    if body.stream and best_of > n:
        raise ApiError(400, "best_of > n cannot be streamed", param="best_of")
    engine_calls.require_ready(engine)
    constraint = structured.compile_constraint(engine, spec, param)
    prompt_ids, prompt_texts = _completion_prompts(engine, body.prompt)
    kw = _kwargs(body, body.max_tokens or COMPLETIONS_MAX_TOKENS)
    if body.logprobs is not None:
        kw["logprobs"] = True
        kw["top_logprobs"] = body.logprobs
    elif best_of > n:
        kw["logprobs"] = True
    reqs = _requests(engine, prompt_ids, kw, best_of, body.seed, body.model, constraint)
    rid = f"cmpl-{uuid.uuid4().hex}"
    name = answered_by(reqs[0])
    echo = bool(body.echo)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prompt_tokens = sum(len(p) for p in prompt_ids)
    if body.stream:
        chunk = Chunk(rid, "text_completion", name, include_usage)
        return completion_stream(engine, reqs, chunk, n, prompt_texts if echo else None, body.logprobs,
                                  prompt_tokens)

    results = engine_calls.run_many(engine, reqs)
    chosen = keep_best(engine, reqs, results, best_of, n)
    choices = []
    completion_tokens = sum(len(res[0].token_ids) for res in results)
    for index, (r, seq) in enumerate(chosen):
        p = index // n
        text, reason = engine_calls.final_text(seq)
        logprobs = None
        if body.logprobs is not None:
            engine_calls.ensure_logprobs(engine, r, seq)
            k = visible_tokens(engine, seq.token_ids, len(text))
            ids, lps = seq.token_ids[:k], list(seq.logprobs[:k])
            tops: list[Any] = list(seq.top_logprobs[:k])
            if echo:
                plps, ptops = engine_calls.score(engine, r.input_ids, 1, body.logprobs, r.adapter)
                ids = r.input_ids + ids
                lps = [None, *plps, *lps]
                tops = [None, *(ptops or [[] for _ in plps]), *tops]
            logprobs = legacy_logprobs(engine, ids, lps, tops, 0, body.logprobs > 0)
        if echo:
            text = prompt_texts[p] + text
        choices.append({"index": index, "text": text, "logprobs": logprobs,
                        "finish_reason": finish_reason(reason)})
    metrics.record_tokens(prompt_tokens, completion_tokens)
    return jsonify({"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                    "system_fingerprint": FINGERPRINT, "choices": choices,
                    "usage": usage(prompt_tokens, completion_tokens)})
