"""The Responses API's items: input items as chat messages, the constraint a request asks for, and
output items (messages and function calls), whole or as the SDK's stream of item events.

- `text.format` (json_schema / json_object) and `tools` + `tool_choice` become one constraint
  (structured_dialects.py, tool_calls.py); both at once are a 400 naming the second.
- Input `function_call` items join the assistant turn before them as its `tool_calls`;
  `function_call_output` items become `tool` messages, and must answer a call earlier in `input`.
  tool_calls.chat_messages renders them for the chat template.
- Calls are parsed out of the generated text (tool_calls.parse_tool_calls / ToolCallStream) into
  `function_call` items; text besides them stays a message item.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from server.api.common import structured
from server.api.common.errors import ApiError
from server.api.common.structured_dialects import responses_text_format
from server.api.openai.responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputMessage,
    ResponsesRequest,
    UnsupportedPart,
)
from server.api.openai.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    Tool,
    ToolCall,
    ToolEvent,
    parse_tool_calls,
    tool_choice_constraint,
    validate_tools,
)
from server.engine.grammar import ConstraintSpec

Event = Callable[..., str]  # (type, **fields) -> one SSE event


def constraint_spec(body: ResponsesRequest) -> tuple[ConstraintSpec | None, str | None, list[Tool]]:
    """The constraint spec, the field it came from, and the tools in play (none when tool_choice
    is none: then they stay out of the prompt and no calls are parsed)."""
    fmt = body.text.format if body.text else None
    fmt_spec = responses_text_format(fmt.model_dump(by_alias=True, exclude_none=True) if fmt else None)
    tools = validate_tools(body.tools, "tools", flat=True)
    tool_spec = tool_choice_constraint(tools, body.tool_choice, body.parallel_tool_calls is not False)
    spec, param = structured.one_of(
        (fmt_spec, "text.format"), (tool_spec, "tool_choice" if body.tool_choice is not None else "tools"))
    return spec, param, tools if tool_spec is not None else []


def _text(content: Any, where: str) -> str:
    """Text parts joined; images, files and audio refused with the part named."""
    if isinstance(content, str):
        return content
    pieces = []
    for j, part in enumerate(content):
        if isinstance(part, UnsupportedPart):
            raise ApiError(400, f"{where}[{j}]: {part.type} parts are not supported by this server (only "
                           "input_text)", param=f"{where}[{j}]")
        pieces.append(part.text)
    return "".join(pieces)


def input_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` + `input` as chat messages (assistant `tool_calls`, `tool` results)."""
    out: list[dict[str, Any]] = []
    if body.instructions:
        out.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*out, {"role": "user", "content": body.input}]
    calls: dict[str, str] = {}  # call_id -> function name, for the results that answer them
    for i, item in enumerate(body.input):
        if isinstance(item, InputMessage):
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": _text(item.content, f"input[{i}].content")})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if out and out[-1]["role"] == "assistant":  # the same turn as the text or calls before it
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            calls[item.call_id] = item.name
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in calls:
                raise ApiError(400, f"input[{i}].call_id: no function_call with call_id {item.call_id!r} "
                               "comes before this output in `input`", param=f"input[{i}].call_id")
            out.append({"role": "tool", "tool_call_id": item.call_id, "name": calls[item.call_id],
                        "content": _text(item.output, f"input[{i}].output")})
        else:
            raise ApiError(400, f"input[{i}]: items of type '{item.type}' are not supported by this server "
                           "(only message, function_call and function_call_output)", param=f"input[{i}]")
    return out


# ---------------------------------------------------------------- the response object

def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


def status_of(finish_reason: str | None) -> str:
    """A reply cut by the token limit (or the server's deadline) is incomplete, as OpenAI's."""
    return "incomplete" if finish_reason in ("length", "timeout", None) else "completed"


class Reply:
    """The response object as it evolves: created -> in progress -> completed / incomplete / failed.
    `text`, `tools` and `tool_choice` echo what the request sent."""

    def __init__(self, body: ResponsesRequest, model: str) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.body = body
        self.model = model

    @staticmethod
    def message(item_id: str, text: str, status: str) -> dict[str, Any]:
        return {"type": "message", "id": item_id, "status": status, "role": "assistant",
                "content": [text_part(text)]}

    @staticmethod
    def function_call(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
        return {"type": "function_call", "id": item_id, "call_id": call.id, "name": call.name,
                "arguments": call.arguments, "status": status}

    def output(self, text: str, status: str, with_tools: bool) -> list[dict[str, Any]]:
        """A finished answer's items: its text (if any, or if there is nothing else) and its calls."""
        content, calls = parse_tool_calls(text) if with_tools else (text, [])
        items = [self.message(_new_id("msg"), content or "", status)] if content or not calls else []
        return items + [self.function_call(_new_id("fc"), c, status) for c in calls]

    def snapshot(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 error: dict[str, str] | None = None) -> dict[str, Any]:
        b = self.body
        done = status in ("completed", "incomplete")
        fmt = b.text.format if b.text else None
        return {
            "id": self.id, "object": "response", "created_at": self.created_at,
            "completed_at": int(time.time()) if done else None, "status": status, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": b.instructions, "max_output_tokens": b.max_output_tokens, "model": self.model,
            "output": output, "parallel_tool_calls": b.parallel_tool_calls is not False,
            "previous_response_id": None, "reasoning": {"effort": None, "summary": None}, "store": False,
            "temperature": 1.0 if b.temperature is None else b.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "tool_choice": b.tool_choice or "auto", "tools": b.tools or [],
            "top_p": 1.0 if b.top_p is None else b.top_p, "truncation": b.truncation or "disabled",
            "usage": usage, "user": b.user, "metadata": b.metadata or {},
        }


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- streaming

class ItemStream:
    """Output items as the SDK streams them. A message: output_item.added, content_part.added,
    output_text.delta..., output_text.done, content_part.done, output_item.done. A function call:
    output_item.added (arguments ""), function_call_arguments.delta..., function_call_arguments.done,
    output_item.done. An item is opened when its first event comes and closed when the next item
    starts or the answer ends; an answer with no items at all gets one empty message."""

    def __init__(self, reply: Reply, event: Event) -> None:
        self.reply = reply
        self.event = event
        self.items: list[dict[str, Any]] = []  # finished items
        self._open: dict[str, Any] | None = None  # the item being streamed

    def text(self, delta: str) -> Iterator[str]:
        if self._open is None or self._open["type"] != "message":
            yield from self._close("completed")
            yield from self._open_message()
        assert self._open is not None
        if not delta:
            return
        self._open["text"] += delta
        yield self.event("response.output_text.delta", **self._where(), content_index=0, delta=delta,
                         logprobs=[])

    def tool_events(self, events: list[ToolEvent]) -> Iterator[str]:
        for e in events:
            if isinstance(e, ContentDelta):
                yield from self.text(e.text)
            elif isinstance(e, CallStarted):
                yield from self._close("completed")
                self._open = {"type": "function_call", "id": _new_id("fc"), "index": len(self.items),
                              "call": ToolCall(e.id, e.name, "")}
                item = self.reply.function_call(self._open["id"], self._open["call"], "in_progress")
                yield self.event("response.output_item.added", output_index=len(self.items), item=item)
            elif isinstance(e, ArgumentsDelta) and e.text and self._open and "call" in self._open:
                call: ToolCall = self._open["call"]
                self._open["call"] = ToolCall(call.id, call.name, call.arguments + e.text)
                yield self.event("response.function_call_arguments.delta", **self._where(), delta=e.text)

    def finish(self, status: str) -> Iterator[str]:
        """Close the last item with the answer's status (an empty message if nothing came)."""
        if self._open is None and not self.items:
            yield from self._open_message()
        yield from self._close(status)

    def partial(self) -> list[dict[str, Any]]:
        """The items so far (for response.failed), the open one as incomplete."""
        return self.items + ([self._item(self._open, "incomplete")] if self._open else [])

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self.items)}

    def _open_message(self) -> Iterator[str]:
        self._open = {"type": "message", "id": _new_id("msg"), "text": ""}
        item = self.reply.message(self._open["id"], "", "in_progress") | {"content": []}
        yield self.event("response.output_item.added", output_index=len(self.items), item=item)
        yield self.event("response.content_part.added", **self._where(), content_index=0, part=text_part(""))

    def _item(self, item: dict[str, Any], status: str) -> dict[str, Any]:
        if item["type"] == "message":
            return self.reply.message(item["id"], item["text"], status)
        return self.reply.function_call(item["id"], item["call"], status)

    def _close(self, status: str) -> Iterator[str]:
        current = self._open
        if current is None:
            return
        where = self._where()
        if current["type"] == "message":
            yield self.event("response.output_text.done", **where, content_index=0, text=current["text"],
                             logprobs=[])
            yield self.event("response.content_part.done", **where, content_index=0,
                             part=text_part(current["text"]))
        else:
            yield self.event("response.function_call_arguments.done", **where,
                             arguments=current["call"].arguments)
        done = self._item(current, status)
        yield self.event("response.output_item.done", output_index=where["output_index"], item=done)
        self.items.append(done)
        self._open = None
