"""OpenAI's Server-Sent Event streams for chat and legacy completions, and the pieces of an answer both
the streamed and the whole responses share (fingerprint, finish reason, usage)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Response

from server.api.common import engine_calls
from server.api.common.errors import ApiError
from server.api.common.streaming import sse, sse_response
from server.api.openai.logprobs import ChoiceState, chat_logprobs, legacy_logprobs
from server.api.openai.tool_calls import ToolCallStream
from server.api.openai.tools import finish_with_calls, stream_deltas
from server.engine.engine import Engine
from server.engine.request import GenerationRequest
from server.observability import metrics

FINGERPRINT = "inferbox"


def finish_reason(reason: str | None) -> str:
    return "length" if reason in ("length", "timeout", None) else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Chunk:
    """Renders one stream's chunks: the envelope (id, object, created, model) every chunk repeats."""

    rid: str
    object: str
    model: str
    include_usage: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def __call__(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        data: dict[str, Any] = {"id": self.rid, "object": self.object, "created": self.created,
                                "model": self.model, "system_fingerprint": FINGERPRINT, "choices": choices}
        if self.include_usage:
            data["usage"] = usage
        return sse(data)


def chat_stream(engine: Engine, reqs: list[GenerationRequest], chunk: Chunk, want_logprobs: bool,
                with_tools: bool = False) -> Response:
    """Chat chunks: a role chunk per choice, then content deltas (with chat logprobs), then each
    choice's finish chunk. `with_tools`: calls are parsed out of the text as it comes
    (server/api/openai/tool_stream.py) and sent as `tool_calls` deltas."""
    deltas = engine_calls.stream_many(engine, reqs)
    special = set(engine.tokenizer.all_special_ids)

    def logprobs_of(i: int, st: ChoiceState, final: bool) -> dict[str, Any] | None:
        if not want_logprobs:
            return None
        ids, lps, tops = st.unsent_logprobs(engine, reqs[i], final, special)
        want_top = bool(reqs[i].params.top_logprobs)
        return {"content": chat_logprobs(engine, ids, lps, tops if want_top else None)}

    states = [ChoiceState() for _ in reqs]
    parsers = [ToolCallStream() for _ in reqs] if with_tools else None

    def delta_dicts(i: int, d: engine_calls.TextDelta) -> list[dict[str, Any]]:
        if parsers is None:
            return [{"role": "assistant", "content": d.text, "tool_calls": None}] if d.text else []
        events = parsers[i].feed(d.text) + (parsers[i].finish() if d.finish_reason else [])
        return stream_deltas(events)

    def chunks() -> Iterator[str]:
        for i in range(len(reqs)):
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": "", "tool_calls": None},
                          "logprobs": None, "finish_reason": None}])
        for i, d in deltas:
            states[i].add(d)
            lp = logprobs_of(i, states[i], bool(d.finish_reason))
            found = delta_dicts(i, d)
            if not found and lp and lp["content"]:
                found = [{"role": "assistant", "content": None if parsers else "", "tool_calls": None}]
            for k, delta in enumerate(found):  # the token's logprobs ride on its first chunk
                yield chunk([{"index": i, "delta": delta, "logprobs": lp if k == 0 else None,
                              "finish_reason": None}])
            if d.finish_reason:
                delta = {"role": "assistant", "content": None, "tool_calls": None}
                reason = finish_with_calls(finish_reason(d.finish_reason), bool(parsers and parsers[i].calls))
                yield chunk([{"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}])

    return _stream(chunks(), deltas, states, reqs[0].prompt_tokens, chunk)


def completion_stream(engine: Engine, reqs: list[GenerationRequest], chunk: Chunk, n: int,
                      echo_texts: list[str] | None, logprobs: int | None, prompt_tokens: int) -> Response:
    """Completion chunks: the echoed prompt when asked, then text deltas (with legacy logprobs and
    their text offsets), then each choice's finish chunk; choice i belongs to prompt i // n."""
    deltas = engine_calls.stream_many(engine, reqs)
    special = set(engine.tokenizer.all_special_ids)
    states = [ChoiceState() for _ in reqs]

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
                    lp = legacy_logprobs(engine, ids, lps, tops, st.text_offset, logprobs > 0)
            if d.text or lp:
                yield chunk([{"index": i, "text": d.text, "logprobs": lp, "finish_reason": None}])
                st.text_offset += len(d.text)
            if d.finish_reason:
                yield chunk([{"index": i, "text": "", "logprobs": None,
                              "finish_reason": finish_reason(d.finish_reason)}])

    return _stream(chunks(), deltas, states, prompt_tokens, chunk)


def _stream(chunks: Iterator[str], deltas: Iterator[Any], states: list[ChoiceState], prompt_tokens: int,
            chunk: Chunk) -> Response:
    """What both OpenAI streams share around their chunks: token metrics, the usage chunk when
    asked, an error event if generation fails mid-stream, and the final `[DONE]`."""

    def body() -> Iterator[str]:
        try:
            yield from chunks
            completion = sum(s.tokens for s in states)
            metrics.record_tokens(prompt_tokens, completion)
            if chunk.include_usage:
                yield chunk([], usage(prompt_tokens, completion))
        except ApiError as exc:
            yield sse({"error": {"message": exc.message, "type": "server_error", "param": None,
                                 "code": exc.kind}})
        finally:
            deltas.close()
        yield sse("[DONE]")

    return sse_response(body())
