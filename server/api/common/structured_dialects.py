"""The constraint fields of TGI, LoRAX and the Responses API, turned into one engine `ConstraintSpec`.

Like structured.py (OpenAI chat's and vLLM's fields), each function only reads the field's shape and
raises a 400 naming the field; compiling (structured.compile_constraint) comes after the readiness
check, so a model that cannot take constraints answers as it does for any generation request.

- TGI `parameters.grammar`: `{"type": "json" | "regex", "value": ...}`; `json_object` is TGI's alias
  of `json`, and a JSON value may be the schema as JSON text (TGI's router parses it the same way).
- LoRAX `parameters.response_format`: `{"type": "json_object", "schema": <schema>}`; without a schema,
  any JSON object. `text` (no constraint) and `json_schema` (`schema`, or OpenAI's nested
  `json_schema.schema`) are accepted too, as LoRAX's OpenAI-style routes spell them.
- Responses `text.format`: `{"type": "json_schema", "name", "schema", "strict"}` or `json_object`.
"""

from __future__ import annotations

from typing import Any

from server.api.common.errors import ApiError
from server.api.common.structured import response_format, schema_value
from server.engine.grammar import ConstraintSpec


def tgi_grammar(value: Any, param: str = "grammar") -> ConstraintSpec | None:
    """TGI's `parameters.grammar`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{param} must be an object {{\"type\": \"json\" | \"regex\", \"value\": ...}}",
                       param=param)
    kind, body = value.get("type"), value.get("value")
    if kind not in ("json", "json_object", "regex"):
        raise ApiError(400, f"{param}.type must be json or regex; got {kind!r}", param=f"{param}.type")
    if body is None or body == "":
        raise ApiError(400, f"{param}.value is required for a {kind} grammar", param=f"{param}.value")
    if kind == "regex":
        if not isinstance(body, str):
            raise ApiError(400, f"{param}.value: a regex grammar's value must be a string",
                           param=f"{param}.value")
        return ConstraintSpec("regex", body)
    return ConstraintSpec("json_schema", schema_value(body, f"{param}.value"))


def lorax_response_format(value: Any, param: str = "response_format") -> ConstraintSpec | None:
    """LoRAX's `parameters.response_format`."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"{param} must be an object {{\"type\": \"json_object\", \"schema\": ...}}",
                       param=param)
    kind = value.get("type")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise ApiError(400, f"{param}.type must be json_object (or text, json_schema); got {kind!r}",
                       param=f"{param}.type")
    schema, where = value.get("schema"), f"{param}.schema"
    nested = value.get("json_schema")
    if schema is None and isinstance(nested, dict) and nested.get("schema") is not None:
        schema, where = nested["schema"], f"{param}.json_schema.schema"
    if schema is None:
        if kind == "json_schema":
            raise ApiError(400, f"{param}.schema is required for type json_schema", param=f"{param}.schema")
        return ConstraintSpec("json_object")
    return ConstraintSpec("json_schema", schema_value(schema, where))


def responses_text_format(value: dict[str, Any] | None, param: str = "text.format") -> ConstraintSpec | None:
    """The Responses API's `text.format` (flat: name, schema and strict sit beside `type`)."""
    return response_format(value, param, ("schema",))


