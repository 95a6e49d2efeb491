"""Constraints a request's output must satisfy: what they are, and compiling them with llguidance.

A dialect turns its own fields (OpenAI `response_format`, vLLM's `structured_outputs`, TGI's
`grammar`, tools...) into one `ConstraintSpec`; `Grammars.compile` turns the spec into a
`Constraint` on the HTTP thread, so that a bad schema is a 400 before the request queues and the
engine thread never compiles. A `Constraint` hands each output sequence its own matcher
(`matcher()`), which the sampler masks with and advances token by token (constraint_mask.py).

llguidance enforces a constraint exactly or refuses it: JSON-schema keywords it cannot enforce
(`not`, `if`/`then`, `contains`, unknown formats...) are compile errors, never silently dropped.
JSON is generated without free whitespace (`, ` and `: ` separators), so a model cannot loop on
blank space and the text parses with any JSON reader.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import llguidance.hf
from llguidance.gbnf_to_lark import any_to_lark

from server.engine.errors import InvalidConstraint

ConstraintKind = Literal["json_schema", "json_object", "regex", "choice", "grammar", "tools"]
KINDS: tuple[str, ...] = ("json_schema", "json_object", "regex", "choice", "grammar", "tools")

# How JSON is laid out: no free whitespace, the separators models usually write.
JSON_LAYOUT: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ConstraintSpec:
    """What a request's output must match, before compiling.

    `value` by kind: `json_schema` a JSON schema (dict); `json_object` None (any JSON object);
    `regex` a regular expression; `choice` a list of strings; `grammar` and `tools` a Lark grammar
    (llguidance's dialect: `%json {schema}` embeds a schema; GBNF is converted)."""

    kind: ConstraintKind
    value: Any = None

    def grammar(self) -> str:
        """The llguidance grammar text (raises InvalidConstraint for a value of the wrong shape)."""
        kind, value = self.kind, self.value
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(ANY_JSON_OBJECT, defaults=JSON_LAYOUT)
        if kind == "json_schema":
            if not isinstance(value, dict):
                raise InvalidConstraint("the JSON schema must be a JSON object")
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(value, defaults=JSON_LAYOUT)
            except ValueError as exc:
                raise InvalidConstraint(f"invalid JSON schema: {exc}") from None
        if kind == "regex":
            if not isinstance(value, str) or not value:
                raise InvalidConstraint("the regex must be a non-empty string")
            return llguidance.LLMatcher.grammar_from_regex(value)
        if kind == "choice":
            if (not isinstance(value, list) or not value
                    or not all(isinstance(c, str) and c for c in value)):
                raise InvalidConstraint("choice must be a non-empty list of non-empty strings")
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in dict.fromkeys(value)))
        if kind in ("grammar", "tools"):
            if not isinstance(value, str) or not value.strip():
                raise InvalidConstraint("the grammar must be a non-empty string")
            return llguidance.LLMatcher.grammar_from_lark(_as_lark(value))
        raise InvalidConstraint(f"unknown constraint kind {kind!r}")


def _as_lark(text: str) -> str:
    """Lark as is; GBNF (llama.cpp's `root ::= ...`) converted to Lark."""
    try:
        return any_to_lark(text)
    except Exception as exc:  # the converter's own parse errors
        raise InvalidConstraint(f"invalid GBNF grammar: {exc}") from None


class Constraint:
    """A compiled constraint: a fresh matcher per output sequence, all from one compiled grammar."""

    def __init__(self, kind: ConstraintKind, compiled: llguidance.LLMatcher) -> None:
        self.kind = kind
        self._compiled = compiled

    def matcher(self) -> llguidance.LLMatcher:
        return self._compiled.deep_copy()


@dataclass(frozen=True)
class GrammarLimits:
    max_bytes: int = 65_536  # grammar text, after a schema is turned into one
    compile_timeout_s: float = 5.0
    cache_size: int = 256  # compiled grammars kept, by grammar text


class Grammars:
    """The model's tokenizer as llguidance needs it (built once, at model load) and a cache of
    compiled grammars keyed by grammar text: the same schema compiles once."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: tuple[int, ...],
                 limits: GrammarLimits | None = None, matcher: Callable[..., Any] | None = None) -> None:
        self.limits = limits or GrammarLimits()
        self._matcher = matcher or llguidance.LLMatcher  # what compiles a grammar (tests hold it back)
        self.vocab_size = max(vocab_size, len(tokenizer))
        self.eos_token_ids = eos_token_ids
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                      eos_token=list(eos_token_ids))
        # llguidance's own bounds on grammar size and lexer work: they bound compile time too
        self._parser_limits = llguidance.LLParserLimits(verbose_errors=False)
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        # compiling drops the GIL: a pool lets the HTTP thread give up waiting after the timeout
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar-compile")

    @property
    def cached(self) -> int:
        """Compiled grammars held in the cache."""
        with self._lock:
            return len(self._cache)

    def compile(self, spec: ConstraintSpec) -> Constraint:
        """Compile (or take from the cache); InvalidConstraint for anything that cannot be enforced."""
        grammar = spec.grammar()
        if len(grammar.encode()) > self.limits.max_bytes:
            raise InvalidConstraint(f"the {_what(spec.kind)} is too large: {len(grammar.encode())} bytes "
                                    f"as a grammar, the limit is {self.limits.max_bytes} (MAX_GRAMMAR_BYTES)")
        with self._lock:
            compiled = self._cache.get(grammar)
            if compiled is not None:
                self._cache.move_to_end(grammar)
                return Constraint(spec.kind, compiled)
        future = self._pool.submit(self._matcher, self.tokenizer, grammar, log_level=0,
                                   limits=self._parser_limits)
        try:
            compiled = future.result(timeout=self.limits.compile_timeout_s)
        except FutureTimeout:
            raise InvalidConstraint(f"the {_what(spec.kind)} took longer than "
                                    f"{self.limits.compile_timeout_s:g} s to compile "
                                    "(GRAMMAR_COMPILE_TIMEOUT_S)") from None
        if compiled.is_error():
            raise InvalidConstraint(f"invalid {_what(spec.kind)}: {_first_line(compiled.get_error())}")
        with self._lock:
            self._cache[grammar] = compiled
            while len(self._cache) > self.limits.cache_size:
                self._cache.popitem(last=False)
        return Constraint(spec.kind, compiled)


def supported(tokenizer: Any) -> tuple[bool, str]:
    """Whether llguidance can work with this tokenizer (it needs a fast, `tokenizers`-backed one)."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        return False, "the model's tokenizer is not a fast (tokenizers-backed) tokenizer"
    return True, ""


def _what(kind: str) -> str:
    return {"json_schema": "JSON schema", "json_object": "JSON constraint", "regex": "regex",
            "choice": "choice list", "grammar": "grammar", "tools": "tool schema"}.get(kind, kind)


def _first_line(message: str) -> str:
    """llguidance's error, without the grammar it may append (which can be long)."""
    text = message.split("<state>")[0].split("<grammar>")[0].strip()
    return text if len(text) <= 600 else text[:600] + "..."
