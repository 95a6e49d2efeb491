"""server/api/openai/tool_calls.py: tools, the grammar a tool_choice asks for, prompt rendering, and the
whole and streamed call parsers (fed in every split, down to one character at a time)."""

from __future__ import annotations

import json
import re

import llguidance
import pytest

from server.api.common.errors import ApiError
from server.api.openai.tool_calls import (
    ArgumentsDelta,
    CallStarted,
    ContentDelta,
    Tool,
    ToolCallStream,
    chat_messages,
    parse_tool_calls,
    render_call,
    renders_tools,
    tool_choice_constraint,
    validate_tools,
)

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
           "required": ["city"], "additionalProperties": False}
CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                                "parameters": WEATHER}},
              {"type": "function", "function": {"name": "now"}}]
SMOLLM2 = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
           "'<|im_end|>' + '\n'}}{% endfor %}")
HERMES = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %} ... <tool_call> ..."
CALL = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}ris \\"x\\"", "days": 3}}\n'
        '</tool_call>')
ID = re.compile(r"call_[0-9a-f]{24}")


def tools() -> list[Tool]:
    return validate_tools(CHAT_TOOLS, "tools", flat=False)


def test_validate_tools_chat_and_flat() -> None:
    got = tools()
    assert [t.name for t in got] == ["get_weather", "now"]
    assert got[0].parameters == WEATHER and got[0].description == "Weather"
    assert got[1].parameters == {"type": "object", "properties": {}}  # no parameters: no arguments
    flat = validate_tools([{"type": "function", "name": "f", "parameters": WEATHER}], "tools", flat=True)
    assert flat == [Tool("f", None, WEATHER)]
    assert got[0].as_openai() == CHAT_TOOLS[0]


@pytest.mark.parametrize("raw,param", [
    ([{"type": "code_interpreter"}], "tools[0].type"),
    ([{"type": "function"}], "tools[0].function"),
    ([{"type": "function", "function": {"description": "x"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "bad name"}}], "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "foo"}}}],
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": []}}], "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}],
     "tools[1].function.name"),
])
def test_bad_tools_are_400_naming_the_field(raw: list, param: str) -> None:
    with pytest.raises(ApiError) as info:
        validate_tools(raw, "tools", flat=False)
    assert info.value.status == 400 and info.value.param == param


def _compiles(grammar: str) -> None:
    assert llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_lark(grammar)) == ""


def test_tool_choice_grammars() -> None:
    assert tool_choice_constraint(tools(), "none", True) is None
    assert tool_choice_constraint([], None, True) is None and tool_choice_constraint([], "auto", True) is None
    auto = tool_choice_constraint(tools(), None, True)
    assert auto is not None and auto.kind == "tools" and "TEXT" in auto.value
    required = tool_choice_constraint(tools(), "required", False)
    assert required is not None and "TEXT" not in required.value and '("\\n" call)*' not in required.value
    parallel = tool_choice_constraint(tools(), "required", True)
    assert parallel is not None and '("\\n" call)*' in parallel.value
    for choice in ({"type": "function", "function": {"name": "now"}}, {"type": "function", "name": "now"}):
        named = tool_choice_constraint(tools(), choice, True)
        assert named is not None and "get_weather" not in named.value and '\\"now\\"' in named.value
    for spec in (auto, required, parallel, named):
        _compiles(spec.value)


@pytest.mark.parametrize("tools_,choice", [
    ("all", {"type": "function", "function": {"name": "missing"}}),
    ("all", {"type": "function"}),
    ("all", "sometimes"),
    ("none", "required"),
])
def test_bad_tool_choice_is_400(tools_: str, choice: object) -> None:
    with pytest.raises(ApiError) as info:
        tool_choice_constraint(tools() if tools_ == "all" else [], choice, True)
    assert info.value.status == 400 and info.value.param == "tool_choice"


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
]


def test_history_as_text_for_templates_without_tools() -> None:
    assert not renders_tools(SMOLLM2) and renders_tools(HERMES)
    messages, tools_kw = chat_messages(HISTORY, tools(), SMOLLM2)
    assert tools_kw is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "<tools>" in messages[0]["content"] and '"name": "get_weather"' in messages[0]["content"]
    assert messages[2]["content"] == (render_call("get_weather", {"city": "Paris"}) + "\n"
                                      + render_call("now", {}))
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in messages[2]["content"]
    assert messages[3]["content"] == ("<tool_response>\nsunny\n</tool_response>\n"
                                      "<tool_response>\nnoon\n</tool_response>")
    # a system message of the client's own keeps its text, the tools section follows it
    messages, _ = chat_messages([{"role": "system", "content": "Be brief."}, *HISTORY[:1]], tools(), SMOLLM2)
    assert messages[0]["content"].startswith("Be brief.\n\n# Tools")
    # no tools in play: the messages are as sent
    assert chat_messages(HISTORY[:1], [], SMOLLM2) == (HISTORY[:1], None)


def test_history_through_the_template_when_it_renders_tools() -> None:
    messages, tools_kw = chat_messages(HISTORY, tools(), HERMES)
    assert tools_kw == [t.as_openai() for t in tools()] and tools_kw[0] == CHAT_TOOLS[0]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert messages[2]["tool_call_id"] == "call_1"


def test_parse_whole_answers() -> None:
    content, calls = parse_tool_calls(CALL)
    assert content is None and len(calls) == 1 and ID.fullmatch(calls[0].id)
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": 'Pa}ris "x"', "days": 3}
    assert calls[0].as_openai()["type"] == "function"
    content, calls = parse_tool_calls(CALL + "\n" + CALL.replace("get_weather", "now"))
    assert content is None and [c.name for c in calls] == ["get_weather", "now"]
    assert calls[0].id != calls[1].id
    assert parse_tool_calls("Just text, < not a call.\n") == ("Just text, < not a call.\n", [])
    assert parse_tool_calls("") == (None, [])
    content, calls = parse_tool_calls("Let me look.\n" + CALL)
    assert content == "Let me look." and len(calls) == 1
    # another layout of the object still parses, once the block is complete
    content, calls = parse_tool_calls('<tool_call>\n{"arguments": {"a": 1}, "name": "f"}\n</tool_call>')
    assert content is None and calls[0].name == "f" and json.loads(calls[0].arguments) == {"a": 1}
    # a block that is not a call stays text
    assert parse_tool_calls("<tool_call>oops</tool_call>") == ("<tool_call>oops</tool_call>", [])


def test_cut_off_answers() -> None:
    content, calls = parse_tool_calls(CALL[:60])  # the token limit cut the arguments
    start = CALL.index('{"city')
    assert content is None and calls[0].name == "get_weather" and calls[0].arguments == CALL[start:60]
    content, calls = parse_tool_calls('<tool_call>\n{"na')  # before the name: the text as it is
    assert content == '<tool_call>\n{"na' and calls == []
    assert parse_tool_calls("Hello <tool_") == ("Hello <tool_", [])


def _stream(text: str, size: int) -> list:
    parser = ToolCallStream()
    events = []
    for i in range(0, len(text), size):
        events += parser.feed(text[i:i + size])
    return events + parser.finish()


@pytest.mark.parametrize("text", [
    CALL,
    CALL + "\n" + CALL.replace("get_weather", "now"),
    "Sure thing <b>bold</b> <tool_cal and more\n\n",
    "Checking.\n" + CALL,
    '<tool_call>\n{"name": "f", "arguments": 42}\n</tool_call>',
    '<tool_call>\n{"name": "f", "arguments": "text \\" } ]"}\n</tool_call>',
    CALL[:70],
])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_stream_matches_the_whole_parse_in_any_split(text: str, size: int) -> None:
    events = _stream(text, size)
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert "<tool_call" not in content or "<tool_call>" not in text or not any(
        isinstance(e, CallStarted) for e in events)  # a tag never leaks into content beside a call
    whole_content, whole_calls = parse_tool_calls(text)
    started = [e for e in events if isinstance(e, CallStarted)]
    assert [e.index for e in started] == list(range(len(whole_calls)))
    assert [e.name for e in started] == [c.name for c in whole_calls]
    for call in whole_calls:
        i = whole_calls.index(call)
        args = "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == i)
        assert args == call.arguments
        first = events.index(started[i])  # the name comes before any of its arguments
        assert all(events.index(e) > first for e in events if isinstance(e, ArgumentsDelta) and e.index == i)
    assert (content.strip() or None) == (whole_content.strip() if whole_content else None)


def test_stream_holds_back_a_split_tag() -> None:
    parser = ToolCallStream()
    assert parser.feed("Hi <tool") == [ContentDelta("Hi")]
    assert parser.feed("_ca") == []
    events = parser.feed('ll>\n{"name": "now", "arguments": {')
    assert [type(e) for e in events] == [CallStarted, ArgumentsDelta]
    assert events[1] == ArgumentsDelta(0, "{")
    assert parser.feed("}}\n</tool_") == [ArgumentsDelta(0, "}")]
    assert parser.feed("call>") == [] and parser.finish() == [] and parser.calls == 1


def test_plain_text_streams_exactly() -> None:
    text = "Paris is the capital of France.  \n<"
    for size in (1, 4):
        events = _stream(text, size)
        assert "".join(e.text for e in events) == text and all(isinstance(e, ContentDelta) for e in events)
