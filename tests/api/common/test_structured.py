"""The dialects' structured-output fields turned into engine constraint specs (no server, no model)."""

from __future__ import annotations

import pytest

from server.api.common.errors import ApiError
from server.api.common.structured import check_schema, one_of, openai_response_format, vllm_fields
from server.engine.grammar import ConstraintSpec

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_openai_response_format_shapes():
    assert openai_response_format(None) is None
    assert openai_response_format({"type": "text"}) is None
    assert openai_response_format({"type": "json_object"}) == ConstraintSpec("json_object")
    spec = openai_response_format({"type": "json_schema",
                                   "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}})
    assert spec == ConstraintSpec("json_schema", SCHEMA)


@pytest.mark.parametrize(("value", "param"), [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "foo"}}},
     "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": []}}, "response_format.json_schema.schema"),
    ("json", "response_format"),
])
def test_openai_response_format_errors_name_the_field(value, param):
    with pytest.raises(ApiError) as err:
        openai_response_format(value)
    assert err.value.status == 400 and err.value.param == param


def test_vllm_fields():
    assert vllm_fields() == (None, None)
    assert vllm_fields(structured_outputs={"regex": "a+"}) == (ConstraintSpec("regex", "a+"),
                                                              "structured_outputs.regex")
    assert vllm_fields(guided_choice=["a", "b"]) == (ConstraintSpec("choice", ["a", "b"]), "guided_choice")
    obj = {"type": "object"}
    assert vllm_fields(guided_json='{"type": "object"}')[0] == ConstraintSpec("json_schema", obj)
    assert vllm_fields(structured_outputs={"grammar": "start: /a/"})[0].kind == "grammar"
    with pytest.raises(ApiError, match="only one output constraint"):
        vllm_fields(structured_outputs={"regex": "a"}, guided_json=SCHEMA)
    with pytest.raises(ApiError, match="not valid JSON"):
        vllm_fields(guided_json="{nope")
    with pytest.raises(ApiError):
        vllm_fields(structured_outputs="regex")


def test_one_of_and_check_schema():
    spec = ConstraintSpec("regex", "a")
    assert one_of((None, None), (spec, "x")) == (spec, "x")
    with pytest.raises(ApiError, match="only one output constraint per request; got x, y"):
        one_of((spec, "x"), (spec, "y"))
    assert check_schema(SCHEMA, "p") is SCHEMA
    with pytest.raises(ApiError, match="p: invalid JSON schema at properties/a"):
        check_schema({"type": "object", "properties": {"a": {"type": 3}}}, "p")
