"""A constrained request on a LoRA adapter: the mask is per row, so it shares a batch with other
adapters' rows and the base model's, and gives the same tokens as alone."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from server.adapters import AdapterRef
from server.engine.grammar import ConstraintSpec
from server.engine.request import GenerationRequest, collect
from tests.support.adapters import make_request

pytestmark = pytest.mark.model

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                           "population": {"type": "integer", "minimum": 0,
                                                          "maximum": 99_999_999}},
          "required": ["city", "population"], "additionalProperties": False}


def _constrained(engine, adapter: str) -> GenerationRequest:
    req = make_request(engine, "Describe a city as JSON.", AdapterRef(adapter), max_new_tokens=40)
    req.constraint = engine.compile_constraint(ConstraintSpec("json_schema", SCHEMA))
    return req


def test_a_constrained_adapter_row_in_a_mixed_batch(adapters_dir: Path, start_engine) -> None:
    engine = start_engine(adapters_dir=str(adapters_dir))
    alone = _constrained(engine, "adapter1")
    engine.submit(alone)
    ref = collect(alone, 120)[0]
    jsonschema.validate(json.loads(engine.decode(ref.token_ids)), SCHEMA)

    batch = [_constrained(engine, "adapter1"), _constrained(engine, "adapter2")]
    batch += [make_request(engine, "Say hello.", AdapterRef(name), max_new_tokens=12)
              for name in ("base", "adapter3")]
    for r in batch:
        engine.submit(r)
    out = [collect(r, 120)[0] for r in batch]
    assert out[0].token_ids == ref.token_ids
    jsonschema.validate(json.loads(engine.decode(out[1].token_ids)), SCHEMA)
    assert all(o.token_ids for o in out[2:])

