"""OpenAI-compatible API: `/v1/chat/completions`, `/v1/completions`, `/v1/models` (translation only).

Mappings (README "API dialects" has the table):
- `n` choices are `n` engine requests submitted together; with `seed`, choice i samples with
  seed + i, so choices differ from each other and each is reproducible.
- `stop` strings are cut from the returned text (as OpenAI does); `finish_reason` is "stop" for an
  EOS token or a stop string, "length" for the token limit.
- Sampling follows OpenAI's defaults (temperature 1, top_p 1, no top-k) over the model's own
  generation config; temperature 0 or top_p 0 decode greedily.
- `presence_penalty`/`frequency_penalty` other than 0, `logit_bias`, tools, non-text content and
  `suffix` are rejected with a 400 naming the field: transformers has no exact equivalent.
- Any `model` value is accepted (clients often hard-code one); answers name the served model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from pydantic import BaseModel, ValidationError

from server.api import engine_calls
from server.api.errors import ApiError, read_json_object, register_renderer
from server.api.openai_protocol import MAX_STOP, ChatCompletionRequest, CompletionRequest
from server.api.streaming import SSE_HEADERS, sse
from server.engine.request import GenerationRequest, SequenceResult
from server.engine.service import Engine
from server.observability import metrics

bp = Blueprint("openai", __name__, url_prefix="/v1")

FINGERPRINT = "inferbox"
# OpenAI's sampling defaults, over the model's generation_config.json
OPENAI_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_CREATED = int(time.time())


def _engine() -> Engine:
    return current_app.extensions["inferbox.engine"]


def _served_name() -> str:
    return current_app.extensions["inferbox.settings"].served_model_name


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    kind = _TYPES.get(exc.status, "server_error" if exc.status >= 500 else "invalid_request_error")
    code = exc.kind if exc.kind not in ("invalid_request_error", kind) else None
    resp = jsonify({"error": {"message": exc.message, "type": kind, "param": exc.param, "code": code}})
    resp.status_code = exc.status
    resp.headers.update(exc.headers)
    return resp


register_renderer(bp.name, _api_error)


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ApiError(400, f"{param}: {err['msg']}{more}", param=param) from None


@bp.get("/models")
def models() -> Response:
    return jsonify({"object": "list", "data": [
        {"id": _served_name(), "object": "model", "created": _CREATED, "owned_by": "inferbox"}]})


@bp.get("/models/<path:model_id>")
def model(model_id: str) -> Response:
    if model_id != _served_name():
        raise ApiError(404, f"The model `{model_id}` does not exist", param="model", kind="model_not_found")
    return jsonify({"id": model_id, "object": "model", "created": _CREATED, "owned_by": "inferbox"})


# ---------------------------------------------------------------- translation to engine requests

def _reject_unsupported(body: Any) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name):
            raise ApiError(400, f"{name} is not supported by this server (only 0); use repetition_penalty",
                           param=name)
    if body.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server", param="logit_bias")


def _kwargs(body: Any, max_tokens: int | None) -> dict[str, Any]:
    """OpenAI fields -> `generate` keyword arguments (validated again by build_params)."""
    kw: dict[str, Any] = {}
    if max_tokens is not None:
        kw["max_new_tokens"] = max_tokens
    if body.temperature is not None:
        kw["temperature"] = body.temperature
    if body.top_p is not None:
        if body.top_p == 0:
            kw["do_sample"] = False
        else:
            kw["top_p"] = body.top_p
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
              seed: int | None) -> list[GenerationRequest]:
    """`count` requests per prompt (choice i of a prompt seeded with seed + i)."""
    limits = engine.limits
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
            params = _params(engine, kwargs, len(ids))
            out.append(engine_calls.new_request(engine, ids, params))
    return out


def _params(engine: Engine, kwargs: dict[str, Any], prompt_tokens: int) -> Any:
    try:
        return engine_calls.make_params(engine, kwargs, prompt_tokens, OPENAI_DEFAULTS)
    except ApiError as exc:
        msg = exc.message.replace("max_new_tokens", "max_tokens").replace("generate_kwargs", "parameters")
        raise ApiError(exc.status, msg, exc.kind, exc.param, exc.headers) from None


def _finish(reason: str | None) -> str:
    return "length" if reason in ("length", "timeout", None) else "stop"


def _chat_ids(engine: Engine, body: ChatCompletionRequest) -> list[int]:
    messages = []
    for m in body.messages:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(p.text for p in m.content)
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                               "content": content or ""}
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    try:
        return engine.encode_chat(messages)
    except ValueError as exc:
        raise ApiError(400, str(exc), param="messages") from None
    except Exception as exc:  # jinja template errors are the messages' fault
        if type(exc).__name__ in ("TemplateError", "TemplateSyntaxError", "UndefinedError"):
            raise ApiError(400, f"chat template failed on these messages: {exc}", param="messages") from None
        raise


def _read(model: type[BaseModel]) -> Any:
    return _validate(model, read_json_object(request))


# ---------------------------------------------------------------- logprobs rendering

@dataclass
class _Choice:
    """Per-choice state while streaming: token ids and logprobs seen, and what was sent."""

    ids: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    tops: list[list[tuple[int, float]]] = field(default_factory=list)
    sent_lp: int = 0
    tokens: int = 0
    started: bool = False
    text_offset: int = 0

    def add(self, d: engine_calls.TextDelta) -> None:
        self.ids.extend(d.token_ids)
        self.tokens += len(d.token_ids)
        if d.logprobs:
            self.lps.extend(d.logprobs)
            self.tops.extend(d.top_logprobs or [[] for _ in d.logprobs])

    def unsent_logprobs(self, engine: Engine, req: GenerationRequest, final: bool,
                        special: set[int]) -> tuple[list[int], list[float], list[list[tuple[int, float]]]]:
        """Tokens (special ones left out) whose logprobs are known and not sent yet; at the end,
        fills any the engine did not stream (exact lane) by scoring."""
        if final and len(self.lps) < len(self.ids):
            seq = SequenceResult(token_ids=self.ids, logprobs=self.lps, top_logprobs=self.tops)
            engine_calls.ensure_logprobs(engine, req, seq)
            self.lps, self.tops = seq.logprobs, seq.top_logprobs
        end = min(len(self.ids), len(self.lps))
        keep = [k for k in range(self.sent_lp, end) if self.ids[k] not in special]
        self.sent_lp = max(self.sent_lp, end)
        return ([self.ids[k] for k in keep], [self.lps[k] for k in keep],
                [self.tops[k] if k < len(self.tops) else [] for k in keep])


def _sse_stream(chunks: Iterator[str], deltas: Iterator[Any], states: list[_Choice], prompt_tokens: int,
                usage_chunk: Callable[[dict[str, int]], str] | None) -> Response:
    """What both OpenAI streams share around their chunks: token metrics, the usage chunk when
    asked, an error event if generation fails mid-stream, and the final `[DONE]`."""

    def body() -> Iterator[str]:
        try:
            yield from chunks
            completion = sum(s.tokens for s in states)
            metrics.record_tokens(prompt_tokens, completion)
            if usage_chunk is not None:
                yield usage_chunk(_usage(prompt_tokens, completion))
        except ApiError as exc:
            yield sse({"error": {"message": exc.message, "type": "server_error", "param": None,
                                 "code": exc.kind}})
        finally:
            deltas.close()
        yield sse("[DONE]")

    return Response(stream_with_context(body()), mimetype="text/event-stream", headers=SSE_HEADERS)


def _tok(engine: Engine, tid: int) -> str:
    return engine.tokenizer.decode([tid], skip_special_tokens=False)


def _chat_logprob_entries(engine: Engine, ids: list[int], lps: list[float],
                          tops: list[list[tuple[int, float]]] | None) -> list[dict[str, Any]]:
    entries = []
    for k, (tid, lp) in enumerate(zip(ids, lps, strict=False)):
        text = _tok(engine, tid)
        top = [{"token": (t := _tok(engine, i)), "logprob": v, "bytes": list(t.encode())}
               for i, v in (tops[k] if tops and k < len(tops) else [])]
        entries.append({"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": top})
    return entries


def _legacy_logprobs(engine: Engine, ids: list[int], lps: list[float | None],
                     tops: list[Any] | None, offset: int, want_top: bool) -> dict[str, Any]:
    tokens = [_tok(engine, t) for t in ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    top_out: list[dict[str, float] | None] | None = None
    if want_top:
        top_out = [({_tok(engine, i): v for i, v in tops[k]} if tops and k < len(tops) and tops[k] is not None
                    else None) for k in range(len(ids))]
    return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_out, "text_offset": offsets}


def _visible(engine: Engine, token_ids: list[int], text_len: int) -> int:
    """How many leading tokens produce the returned text (drops EOS and tokens after a stop)."""
    pos = 0
    for k, piece in enumerate(engine_calls.token_texts(engine, token_ids)):
        if pos >= text_len:
            return k
        pos += len(piece)
    return len(token_ids)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _best(engine: Engine, reqs: list[GenerationRequest], results: list[list[SequenceResult]],
          per_prompt: int, keep: int) -> list[tuple[GenerationRequest, SequenceResult]]:
    """Keep the `keep` candidates of each prompt with the highest total logprob (OpenAI best_of)."""
    out = []
    for p in range(0, len(reqs), per_prompt):
        group = [(reqs[j], results[j][0]) for j in range(p, p + per_prompt)]
        if keep < per_prompt:
            for r, res in group:
                engine_calls.ensure_logprobs(engine, r, res)
            group.sort(key=lambda rr: -sum(rr[1].logprobs))
        out.extend(group[:keep])
    return out


# ---------------------------------------------------------------- /v1/chat/completions

@bp.post("/chat/completions")
def chat_completions() -> Response:
    engine = _engine()
    body: ChatCompletionRequest = _read(ChatCompletionRequest)
    _reject_unsupported(body)
    if body.tools:
        raise ApiError(400, "tools are not supported by this server", param="tools")
    if body.tool_choice not in (None, "none", "auto"):
        raise ApiError(400, "tool_choice is not supported by this server", param="tool_choice")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise ApiError(400, "response_format other than text is not supported", param="response_format")
    if body.top_logprobs and not body.logprobs:
        raise ApiError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
    engine_calls.require_ready(engine)
    ids = _chat_ids(engine, body)
    kw = _kwargs(body, body.max_completion_tokens or body.max_tokens)
    if body.logprobs:
        kw["logprobs"] = True
        kw["top_logprobs"] = body.top_logprobs or 0
    n = body.n or 1
    reqs = _requests(engine, [ids], kw, n, body.seed)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    name = _served_name()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    if body.stream:
        return _chat_stream(engine, reqs, rid, name, include_usage, bool(body.logprobs))

    results = engine_calls.run_many(engine, reqs)
    choices = []
    completion_tokens = 0
    for i, (r, res) in enumerate(zip(reqs, results, strict=True)):
        seq = res[0]
        text, reason = engine_calls.final_text(engine, seq, r.params.stop)
        completion_tokens += len(seq.token_ids)
        logprobs = None
        if body.logprobs:
            engine_calls.ensure_logprobs(engine, r, seq)
            k = _visible(engine, seq.token_ids, len(text))
            logprobs = {"content": _chat_logprob_entries(engine, seq.token_ids[:k], seq.logprobs[:k],
                                                         seq.top_logprobs[:k] if body.top_logprobs else None)}
        choices.append({"index": i, "message": {"role": "assistant", "content": text},
                        "logprobs": logprobs, "finish_reason": _finish(reason)})
    metrics.record_tokens(len(ids), completion_tokens)
    return jsonify({"id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
                    "system_fingerprint": FINGERPRINT, "choices": choices,
                    "usage": _usage(len(ids), completion_tokens)})


def _chat_stream(engine: Engine, reqs: list[GenerationRequest], rid: str, name: str,
                 include_usage: bool, want_logprobs: bool) -> Response:
    created = int(time.time())
    deltas = engine_calls.stream_many(engine, reqs)
    special = set(engine.tokenizer.all_special_ids)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        data: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": created,
                                "model": name, "system_fingerprint": FINGERPRINT, "choices": choices}
        if include_usage:
            data["usage"] = usage
        return sse(data)

    def logprobs_of(i: int, st: _Choice, final: bool) -> dict[str, Any] | None:
        if not want_logprobs:
            return None
        ids, lps, tops = st.unsent_logprobs(engine, reqs[i], final, special)
        want_top = bool(reqs[i].params.top_logprobs)
        return {"content": _chat_logprob_entries(engine, ids, lps, tops if want_top else None)}

    states = [_Choice() for _ in reqs]

    def chunks() -> Iterator[str]:
        for i in range(len(reqs)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": "", "tool_calls": None},
                          "logprobs": None, "finish_reason": None}])
        for i, d in deltas:
            states[i].add(d)
            lp = logprobs_of(i, states[i], bool(d.finish_reason))
            if d.text or (lp and lp["content"]):
                delta = {"role": "assistant", "content": d.text, "tool_calls": None}
                yield chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}])
            if d.finish_reason:
                delta = {"role": "assistant", "content": None, "tool_calls": None}
                yield chunk([{"index": i, "delta": delta, "logprobs": None,
                              "finish_reason": _finish(d.finish_reason)}])

    return _sse_stream(chunks(), deltas, states, reqs[0].prompt_tokens,
                       (lambda usage: chunk([], usage)) if include_usage else None)


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
    engine = _engine()
    body: CompletionRequest = _read(CompletionRequest)
    _reject_unsupported(body)
    if body.suffix:
        raise ApiError(400, "suffix is not supported by this server", param="suffix")
    n = body.n or 1
    best_of = body.best_of or n
    if best_of < n:
        raise ApiError(400, "best_of must be greater than or equal to n", param="best_of")
    if body.stream and best_of > n:
        raise ApiError(400, "best_of > n cannot be streamed", param="best_of")
    engine_calls.require_ready(engine)
    prompt_ids, prompt_texts = _completion_prompts(engine, body.prompt)
    kw = _kwargs(body, body.max_tokens or COMPLETIONS_MAX_TOKENS)
    if body.logprobs is not None:
        kw["logprobs"] = True
        kw["top_logprobs"] = body.logprobs
    elif best_of > n:
        kw["logprobs"] = True
    reqs = _requests(engine, prompt_ids, kw, best_of, body.seed)
    rid = f"cmpl-{uuid.uuid4().hex}"
    name = _served_name()
    echo = bool(body.echo)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    prompt_tokens = sum(len(p) for p in prompt_ids)
    if body.stream:
        return _completion_stream(engine, reqs, rid, name, n, prompt_texts if echo else None,
                                  body.logprobs, include_usage, prompt_tokens)

    results = engine_calls.run_many(engine, reqs)
    chosen = _best(engine, reqs, results, best_of, n)
    choices = []
    completion_tokens = sum(len(res[0].token_ids) for res in results)
    for index, (r, seq) in enumerate(chosen):
        p = index // n
        text, reason = engine_calls.final_text(engine, seq, r.params.stop)
        logprobs = None
        if body.logprobs is not None:
            engine_calls.ensure_logprobs(engine, r, seq)
            k = _visible(engine, seq.token_ids, len(text))
            ids, lps = seq.token_ids[:k], list(seq.logprobs[:k])
            tops: list[Any] = list(seq.top_logprobs[:k])
            if echo:
                plps, ptops = engine.score(r.input_ids, 1, body.logprobs)
                ids = r.input_ids + ids
                lps = [None, *plps, *lps]
                tops = [None, *(ptops or [[] for _ in plps]), *tops]
            logprobs = _legacy_logprobs(engine, ids, lps, tops, 0, body.logprobs > 0)
        if echo:
            text = prompt_texts[p] + text
        choices.append({"index": index, "text": text, "logprobs": logprobs, "finish_reason": _finish(reason)})
    metrics.record_tokens(prompt_tokens, completion_tokens)
    return jsonify({"id": rid, "object": "text_completion", "created": int(time.time()), "model": name,
                    "system_fingerprint": FINGERPRINT, "choices": choices,
                    "usage": _usage(prompt_tokens, completion_tokens)})


def _completion_stream(engine: Engine, reqs: list[GenerationRequest], rid: str, name: str, n: int,
                       echo_texts: list[str] | None, logprobs: int | None, include_usage: bool,
                       prompt_tokens: int) -> Response:
    created = int(time.time())
    deltas = engine_calls.stream_many(engine, reqs)
    special = set(engine.tokenizer.all_special_ids)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        data: dict[str, Any] = {"id": rid, "object": "text_completion", "created": created, "model": name,
                                "system_fingerprint": FINGERPRINT, "choices": choices}
        if include_usage:
            data["usage"] = usage
        return sse(data)

    states = [_Choice() for _ in reqs]

    def chunks() -> Iterator[str]:
        if echo_texts is not None:
            for i in range(len(reqs)):
                states[i].text_offset = len(echo_texts[i // n])
                yield chunk([{"index": i, "text": echo_texts[i // n], "logprobs": None,
                              "finish_reason": None}])
        for i, d in deltas:
            st = states[i]
            st.add(d)
            lp = None
            if logprobs is not None:
                ids, lps, tops = st.unsent_logprobs(engine, reqs[i], bool(d.finish_reason), special)
                if ids:
                    lp = _legacy_logprobs(engine, ids, lps, tops, st.text_offset, logprobs > 0)
            if d.text or lp:
                yield chunk([{"index": i, "text": d.text, "logprobs": lp, "finish_reason": None}])
                st.text_offset += len(d.text)
            if d.finish_reason:
                yield chunk([{"index": i, "text": "", "logprobs": None,
                              "finish_reason": _finish(d.finish_reason)}])

    return _sse_stream(chunks(), deltas, states, prompt_tokens,
                       (lambda usage: chunk([], usage)) if include_usage else None)
