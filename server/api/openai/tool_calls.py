"""Function tools shared by the OpenAI dialects (chat completions and Responses): validating the
tools, the grammar a `tool_choice` asks for, rendering tools and calls into the prompt, and parsing
calls out of the generated text, whole or streamed.

Calls use the Hermes format (Qwen, SmolLM3, Hermes and most tool-tuned chat templates):
`<tool_call>\\n{"name": "NAME", "arguments": {...}}\\n</tool_call>`, several separated by "\\n".
- `required` and a named function: a grammar forces one call (or several, with parallel calls)
  whose arguments follow that tool's `parameters` schema.
- `auto`: a grammar of either free text (not starting with `<` or blank space) or calls, so the
  model chooses at its first token, and a call once begun is enforced to the end.
- `none`: no constraint, and the tools are left out of the prompt.
Templates that render `<tool_call>` themselves get `tools=`; for the others (the embedded SmolLM2)
a system-prompt section describes the tools and the format, and the history is rendered as text.
Pure functions: no Flask, so both dialects share them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from server.api.common.errors import ApiError
from server.api.common.structured import check_schema
from server.api.openai.tool_stream import (
    CLOSE,
    OPEN,
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    ToolCallStream,
    ToolEvent,
)
from server.engine.grammar import ConstraintSpec

__all__ = ["ArgumentsDelta", "CallStarted", "ContentDelta", "Tool", "ToolCall", "ToolCallStream", "ToolEvent",
           "chat_messages", "parse_tool_calls", "tool_choice_constraint", "validate_tools"]

NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI accepts for a function name
# arguments laid out as the prompt shows them, so the text is deterministic for a given call
ARGS_LAYOUT = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
_TEXT = r"/[^<\s](.|\n)*/"  # an `auto` answer in text: anything not starting like a call


@dataclass(frozen=True)
class Tool:
    name: str
    description: str | None
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        """The chat-completions form, which chat templates' `tools=` take."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        return {"type": "function", "function": {**fn, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text the model wrote

    def as_openai(self) -> dict[str, Any]:
        fn = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": fn}


def validate_tools(raw: list[dict[str, Any]] | None, param: str = "tools", flat: bool = False) -> list[Tool]:
    """The function tools of a request, or a 400 naming the bad one. `flat`: Responses' form
    `{"type": "function", "name", ...}`; else chat's `{"type": "function", "function": {...}}`."""
    tools: list[Tool] = []
    for i, item in enumerate(raw or []):
        where = f"{param}[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise ApiError(400, f"{where}.type: only tools of type function are supported",
                           param=f"{where}.type")
        fn = item if flat else item.get("function")
        if not flat:
            where += ".function"
            if not isinstance(fn, dict):
                raise ApiError(400, f"{where} is required", param=where)
        assert isinstance(fn, dict)
        name = fn.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ApiError(400, f"{where}.name: a function name of 1 to 64 letters, digits, _ or - "
                           "is required", param=f"{where}.name")
        if any(t.name == name for t in tools):
            raise ApiError(400, f"{where}.name: duplicate function name {name!r}", param=f"{where}.name")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise ApiError(400, f"{where}.description must be a string", param=f"{where}.description")
        parameters = fn.get("parameters", EMPTY_PARAMETERS)
        parameters = check_schema(parameters, f"{where}.parameters")
        if parameters.get("type", "object") != "object":
            raise ApiError(400, f"{where}.parameters: the schema must be of type object (the arguments "
                           "are a JSON object)", param=f"{where}.parameters")
        tools.append(Tool(name, description, parameters))
    return tools


def tool_choice_constraint(tools: list[Tool], choice: Any, parallel: bool = True,
                           param: str = "tool_choice") -> ConstraintSpec | None:
    """The grammar `tool_choice` asks for (None: no tools in play). `choice`: "none", "auto",
    "required", or a named function (chat's `{"type": "function", "function": {"name"}}` or
    Responses' `{"type": "function", "name"}`); None means auto with tools, none without."""
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else choice.get("name")
        if choice.get("type") != "function" or not isinstance(name, str):
            raise ApiError(400, f"{param}: a named choice is {{\"type\": \"function\", \"function\": "
                           "{\"name\": ...}}", param=param)
        chosen = [t for t in tools if t.name == name]
        if not chosen:
            raise ApiError(400, f"{param}: function {name!r} is not in tools", param=param)
        # a named function is called exactly once, as OpenAI does, whatever parallel_tool_calls says
        return ConstraintSpec("tools", _grammar(chosen, parallel=False, text=False))
    if choice == "none" or (choice == "auto" and not tools):
        return None
    if choice not in ("auto", "required"):
        raise ApiError(400, f"{param} must be none, auto, required or a named function; got {choice!r}",
                       param=param)
    if not tools:
        raise ApiError(400, f"{param}: {choice} needs tools", param=param)
    return ConstraintSpec("tools", _grammar(tools, parallel=parallel, text=choice == "auto"))


def _grammar(tools: list[Tool], parallel: bool, text: bool) -> str:
    """Lark (llguidance): one rule per tool, arguments by its schema through `%json`."""
    calls = 'call ("\\n" call)*' if parallel else "call"
    lines = [f"start: TEXT | {calls}" if text else f"start: {calls}"]
    if text:
        lines.append(f"TEXT: {_TEXT}")
    lines.append("call: " + " | ".join(f"call{i}" for i in range(len(tools))))
    tail = json.dumps("}\n" + CLOSE)
    for i, tool in enumerate(tools):
        head = f'{OPEN}\n{{"name": {json.dumps(tool.name)}, "arguments": '
        lines.append(f"call{i}: {json.dumps(head)} args{i} {tail}")
        lines.append(f"args{i}: %json {json.dumps({**tool.parameters, 'x-guidance': ARGS_LAYOUT})}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- prompt

def template_text(tokenizer: Any) -> str:
    """The chat template as text (a tokenizer may hold several, by name)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return json.dumps(template) if isinstance(template, dict) else str(template)


def renders_tools(template: str) -> bool:
    """Whether the chat template renders tools and calls itself, in the format we parse."""
    return OPEN in template and "tools" in template


def render_call(name: str, arguments: Any) -> str:
    """One call as the model writes it (arguments: a dict, or JSON text as clients send it back)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass  # sent back as it came; the model sees what it was given
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return f'{OPEN}\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n{CLOSE}'


def tools_section(tools: list[Tool]) -> str:
    """The system-prompt section for templates without tool support (Hermes' wording)."""
    sigs = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{sigs}\n"
            "</tools>\n\nFor each function call, return a json object with function name and arguments "
            f"within {OPEN}{CLOSE} XML tags:\n{OPEN}\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n' + CLOSE)


def chat_messages(messages: list[dict[str, Any]], tools: list[Tool],
                  template: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Messages (role, content, and assistant `tool_calls` / tool `tool_call_id`) ready for the
    chat template, and what to pass as its `tools=` (None: the tools are in the messages)."""
    if renders_tools(template):
        out = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": _as_dict(
                    c["function"].get("arguments"))}} for c in m["tool_calls"]]
            out.append(m)
        return out, [t.as_openai() for t in tools] or None
    out = []
    after_tool = False
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role == "tool":
            wrapped = f"<tool_response>\n{content}\n</tool_response>"
            if after_tool:  # consecutive results: one user turn
                out[-1]["content"] += "\n" + wrapped
            else:
                out.append({"role": "user", "content": wrapped})
            after_tool = True
            continue
        after_tool = False
        msg = {k: v for k, v in m.items() if k not in ("tool_calls", "tool_call_id")}
        msg["content"] = content
        if role == "assistant" and m.get("tool_calls"):
            calls = "\n".join(render_call(c["function"]["name"], c["function"].get("arguments"))
                              for c in m["tool_calls"])
            msg["content"] = f"{content}\n{calls}" if content else calls
        out.append(msg)
    if tools:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{tools_section(tools)}"}
        else:
            out.insert(0, {"role": "system", "content": tools_section(tools)})
    return out, None


def _as_dict(arguments: Any) -> Any:
    """Arguments as templates expect them (a dict; they JSON-encode it themselves)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


# ---------------------------------------------------------------- parsing

def parse_tool_calls(text: str) -> tuple[str | None, list[ToolCall]]:
    """A whole answer's content (None when it is only calls, or empty) and calls, exactly as
    `ToolCallStream` would stream them."""
    stream = ToolCallStream()
    content: list[str] = []
    calls: list[list[str]] = []  # [id, name, arguments]
    for event in stream.feed(text) + stream.finish():
        if isinstance(event, ContentDelta):
            content.append(event.text)
        elif isinstance(event, CallStarted):
            calls.append([event.id, event.name, ""])
        else:
            calls[event.index][2] += event.text
    joined = "".join(content)
    if calls:
        return joined.strip() or None, [ToolCall(*c) for c in calls]
    return joined or None, []
