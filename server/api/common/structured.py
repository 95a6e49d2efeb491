"""Structured outputs as the dialects send them, turned into one engine `ConstraintSpec`.

Every dialect's constraint field maps here (OpenAI `response_format`, vLLM's `structured_outputs`
and `guided_*`, TGI's `grammar`, LoRAX's `response_format`); `compile_constraint` compiles it
through the engine on the HTTP thread. A constraint is enforced or refused with a 400 naming the
field, never dropped.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from server.api.common.errors import ApiError
from server.engine.engine import Engine
from server.engine.errors import InvalidConstraint
from server.engine.grammar import Constraint, ConstraintSpec

VLLM_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
               "guided_grammar": "grammar"}
_VLLM_KINDS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar"}


def check_schema(schema: Any, param: str) -> dict[str, Any]:
    """A JSON schema that is itself valid (by its meta-schema), else a 400 naming `param`."""
    if not isinstance(schema, dict):
        raise ApiError(400, f"{param}: the JSON schema must be an object", param=param)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ApiError(400, f"{param}: invalid JSON schema{f' at {where}' if where else ''}: {exc.message}",
                       param=param) from None
    return schema


def schema_value(value: Any, param: str) -> dict[str, Any]:
    """A schema given as an object or as JSON text (vLLM and TGI accept both), checked."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ApiError(400, f"{param}: the JSON schema is not valid JSON", param=param) from None
    return check_schema(value, param)


def compile_constraint(engine: Engine, spec: ConstraintSpec | None, param: str | None) -> Constraint | None:
    """The compiled constraint (None for none); a 400 naming `param` for one that can't be enforced."""
    if spec is None:
        return None
    if spec.kind == "json_schema":
        check_schema(spec.value, param or "schema")
    try:
        return engine.compile_constraint(spec)
    except InvalidConstraint as exc:
        raise ApiError(400, f"{param}: {exc}" if param else str(exc), param=param) from None


def response_format(value: Any, param: str, schema_key: tuple[str, ...]) -> ConstraintSpec | None:
    """A `{"type": "text" | "json_object" | "json_schema", ...}` format object, its schema found
    under `schema_key` (OpenAI chat nests it in `json_schema.schema`, Responses' `text.format` has
    it at `schema`); errors name the field under `param`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{param} must be an object", param=param)
    kind = value.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return ConstraintSpec("json_object")
    if kind != "json_schema":
        raise ApiError(400, f"{param}.type must be text, json_object or json_schema; got {kind!r}",
                       param=f"{param}.type")
    holder: Any = value
    for key in schema_key[:-1]:
        holder = holder.get(key) if isinstance(holder, dict) else None
    where = ".".join((param, *schema_key))
    if not isinstance(holder, dict) or holder.get(schema_key[-1]) is None:
        missing = ".".join((param, *schema_key[:-1])) if len(schema_key) > 1 else where
        raise ApiError(400, f"{where} is required for type json_schema", param=missing)
    return ConstraintSpec("json_schema", check_schema(holder[schema_key[-1]], where))


def openai_response_format(value: Any, param: str = "response_format") -> ConstraintSpec | None:
    """OpenAI chat's `response_format`: text, json_object, or json_schema {name, schema, strict}."""
    return response_format(value, param, ("json_schema", "schema"))


def vllm_fields(structured_outputs: Any = None, **guided: Any) -> tuple[ConstraintSpec | None, str | None]:
    """vLLM's `structured_outputs {json|regex|choice|grammar}` and the older `guided_*` fields: the
    spec and the field it came from. More than one constraint in a request is a 400."""
    found: list[tuple[str, str, Any]] = []  # (param, vllm kind, value)
    if structured_outputs is not None:
        if not isinstance(structured_outputs, dict):
            raise ApiError(400, "structured_outputs must be an object", param="structured_outputs")
        for key, value in structured_outputs.items():
            if key in _VLLM_KINDS and value is not None:
                found.append((f"structured_outputs.{key}", key, value))
            elif key == "json_object" and value:
                found.append(("structured_outputs.json_object", "json_object", None))
    for name, value in guided.items():
        if value is not None:
            found.append((name, VLLM_GUIDED[name], value))
    if not found:
        return None, None
    if len(found) > 1:
        names = ", ".join(p for p, _, _ in found)
        raise ApiError(400, f"only one output constraint per request; got {names}", param=found[1][0])
    param, kind, value = found[0]
    if kind == "json_object":
        return ConstraintSpec("json_object"), param
    if kind == "json":
        value = schema_value(value, param)
    return ConstraintSpec(_VLLM_KINDS[kind], value), param  # type: ignore[arg-type]


def one_of(*specs: tuple[ConstraintSpec | None, str | None]) -> tuple[ConstraintSpec | None, str | None]:
    """The one constraint given among several fields (a 400 when more than one is)."""
    given = [(s, p) for s, p in specs if s is not None]
    if len(given) > 1:
        names = ", ".join(str(p) for _, p in given)
        raise ApiError(400, f"only one output constraint per request; got {names}", param=given[1][1])
    return given[0] if given else (None, None)
