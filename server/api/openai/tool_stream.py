"""The streaming parser of Hermes-style tool calls in generated text (`<tool_call>`, a JSON object
with `name` and `arguments`, `</tool_call>`): content and call events as text deltas arrive.
tool_calls.py re-exports it; parse_tool_calls uses it too, so whole and streamed answers agree."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# a call's opening up to its arguments (after `<tool_call>`): the name is a plain JSON string
_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStarted:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


ToolEvent = ContentDelta | CallStarted | ArgumentsDelta


class ToolCallStream:
    """Generated text in, content and call events out, as deltas arrive (tags may be split across
    deltas anywhere). Text that may still become `<tool_call>` is held back, never sent as content;
    a call starts once its name is known, and its arguments are sent as they come, exactly the
    JSON text the model wrote. A block that does not parse as a call is sent back as content."""

    def __init__(self) -> None:
        self._buf = ""
        self._mode = "text"  # text | header | args | tail
        self.calls = 0
        self._args = _ValueScanner()

    def feed(self, text: str) -> list[ToolEvent]:
        self._buf += text
        events: list[ToolEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[ToolEvent]:
        events: list[ToolEvent] = []
        rest, self._buf = self._buf, ""
        if self._mode == "text" and (rest.strip() or (rest and not self.calls)):
            events.append(ContentDelta(rest))
        elif self._mode == "header":  # cut off before its name: what there is, as text
            events.append(ContentDelta(OPEN + rest))
        self._mode = "text"
        return events

    def _step(self, events: list[ToolEvent]) -> bool:
        """Consume what the buffer allows in the current mode; True when the mode changed."""
        buf = self._buf
        if self._mode == "text":
            at = buf.find(OPEN)
            if at >= 0:
                if buf[:at].strip():  # blank space alone before a call only separates
                    events.append(ContentDelta(buf[:at]))
                self._buf, self._mode = buf[at + len(OPEN):], "header"
                return True
            keep = _held(buf)
            if buf[:keep].strip():  # blank space is held until text follows (none before a call)
                events.append(ContentDelta(buf[:keep]))
                self._buf = buf[keep:]
            return False
        if self._mode == "header":
            m = _HEADER.match(buf)
            if m:
                events.append(CallStarted(self.calls, new_call_id(), json.loads(m.group(1))))
                self._buf, self._mode, self._args = buf[m.end():], "args", _ValueScanner()
                return True
            end = buf.find(CLOSE)
            if end < 0:
                return False
            self._whole_block(events, buf[:end])
            self._buf, self._mode = buf[end + len(CLOSE):], "text"
            return True
        if self._mode == "args":
            used = self._args.feed(buf)
            if used:
                events.append(ArgumentsDelta(self.calls, buf[:used]))
            self._buf = buf[used:]
            if self._args.done:
                self.calls += 1
                self._mode = "tail"
                return True
            return False
        end = buf.find(CLOSE)  # tail: the rest of the call object, up to its closing tag
        if end < 0:
            return False
        self._buf, self._mode = buf[end + len(CLOSE):], "text"
        return True

    def _whole_block(self, events: list[ToolEvent], block: str) -> None:
        """A complete block whose opening did not match the usual layout: a call if it parses."""
        try:
            obj = json.loads(block)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("name"), str) and "arguments" in obj:
            args = obj["arguments"]
            text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
            events.append(CallStarted(self.calls, new_call_id(), obj["name"]))
            events.append(ArgumentsDelta(self.calls, text))
            self.calls += 1
        else:
            events.append(ContentDelta(OPEN + block + CLOSE))


def _held(buf: str) -> int:
    """Where the text that must wait starts: trailing blank space, and a tail that could begin
    `<tool_call>`."""
    for k in range(min(len(OPEN) - 1, len(buf)), 0, -1):
        if OPEN.startswith(buf[-k:]):
            return len(buf[:-k].rstrip())
    return len(buf.rstrip())


class _ValueScanner:
    """Finds where one JSON value ends, fed piece by piece (strings, escapes and nesting)."""

    def __init__(self) -> None:
        self.depth = 0
        self.started = False
        self.scalar = False
        self.in_string = False
        self.escape = False
        self.done = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value (all of it until the value ends)."""
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
                    if self.depth == 0:
                        self.done = True
                        return i + 1
                continue
            if not self.started:
                self.started = True
                self.scalar = ch not in '{["'
            if self.scalar:
                if ch in ",}] \t\r\n":
                    self.done = True
                    return i
                continue
            if ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.done = True
                    return i + 1
        return len(text)
