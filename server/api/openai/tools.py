"""OpenAI chat and legacy completions: the output constraint a request asks for, its messages as
the chat template takes them, and answers that carry tool calls (whole and streamed).

One constraint per request, from `response_format`, vLLM's `structured_outputs` / `guided_*`, or
`tools` with a `tool_choice` other than none; two at once are a 400 naming the second. The spec is
built and checked before the model is touched; it is compiled after the readiness check
(structured.compile_constraint), on the HTTP thread.
"""

from __future__ import annotations

from typing import Any

from server.api.common import structured
from server.api.openai.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest
from server.api.openai.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    Tool,
    ToolEvent,
    parse_tool_calls,
    tool_choice_constraint,
    validate_tools,
)
from server.engine.grammar import ConstraintSpec

Spec = tuple[ConstraintSpec | None, str | None]


def _vllm(body: ChatCompletionRequest | CompletionRequest) -> Spec:
    return structured.vllm_fields(structured_outputs=body.structured_outputs, guided_json=body.guided_json,
                                  guided_regex=body.guided_regex, guided_choice=body.guided_choice,
                                  guided_grammar=body.guided_grammar)


def completion_spec(body: CompletionRequest) -> Spec:
    """/v1/completions: `response_format` (as vLLM accepts it there) or vLLM's fields."""
    return structured.one_of((structured.openai_response_format(body.response_format), "response_format"),
                             _vllm(body))


def chat_spec(body: ChatCompletionRequest) -> tuple[ConstraintSpec | None, str | None, list[Tool]]:
    """The constraint spec, the field it came from, and the tools in play (empty when
    `tool_choice` is none or there are none: then they stay out of the prompt and no calls are
    parsed)."""
    tools = validate_tools(body.tools, "tools", flat=False)
    tool_spec = tool_choice_constraint(tools, body.tool_choice, body.parallel_tool_calls is not False)
    spec, param = structured.one_of(
        (structured.openai_response_format(body.response_format), "response_format"), _vllm(body),
        (tool_spec, "tool_choice" if isinstance(body.tool_choice, (str, dict)) else "tools"))
    return spec, param, tools if tool_spec is not None else []


def message_dicts(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The request's messages as plain dicts for tool_calls.chat_messages (text parts joined,
    `developer` as `system`)."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(p.text for p in m.content)
        role = "system" if m.role == "developer" else m.role
        msg: dict[str, Any] = {"role": role, "content": content or ""}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        out.append(msg)
    return out


def answer(text: str, reason: str, with_tools: bool) -> tuple[dict[str, Any], str]:
    """A choice's message and finish_reason: calls parsed out when tools are in play (content
    null, finish_reason tool_calls unless the token limit cut it)."""
    if with_tools:
        content, calls = parse_tool_calls(text)
        if calls:
            message = {"role": "assistant", "content": content, "tool_calls": [c.as_openai() for c in calls]}
            return message, finish_with_calls(reason, True)
    return {"role": "assistant", "content": text}, reason


def finish_with_calls(reason: str, has_calls: bool) -> str:
    """OpenAI's finish_reason of an answer (`reason`: stop or length) that made calls."""
    return "tool_calls" if has_calls and reason == "stop" else reason


def stream_deltas(events: list[ToolEvent]) -> list[dict[str, Any]]:
    """Chat chunk deltas for parser events: a call's first delta carries its index, id, type, name
    and empty arguments; later ones only argument fragments, as OpenAI streams them."""
    out: list[dict[str, Any]] = []
    for e in events:
        if isinstance(e, ContentDelta):
            out.append({"role": "assistant", "content": e.text, "tool_calls": None})
        elif isinstance(e, CallStarted):
            fn = {"name": e.name, "arguments": ""}
            call = {"index": e.index, "id": e.id, "type": "function", "function": fn}
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(e, ArgumentsDelta) and e.text:
            out.append({"role": "assistant", "content": None,
                        "tool_calls": [{"index": e.index, "function": {"arguments": e.text}}]})
    return out
