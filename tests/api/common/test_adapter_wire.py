"""How each dialect's adapter fields become an AdapterRef (server/api/common/adapters.py, tgi_protocol):
pure translation, no model (fast)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from server.adapters import AdapterError, AdapterInfo, AdapterRef, MergeRecipe
from server.api.common import adapters
from server.api.tgi.protocol import GenerateRequest


class _Manager:
    def __init__(self, names: list[str]) -> None:
        self.infos = [AdapterInfo(n, f"/mnt/adapter/{n}", 4, 1.0, "base-model") for n in names]

    def list(self) -> list[AdapterInfo]:
        return self.infos


def _engine(*names: str) -> SimpleNamespace:
    return SimpleNamespace(adapters=_Manager(list(names)))


def test_named_is_the_default_when_empty() -> None:
    assert adapters.named(None) is None and adapters.named("") is None
    assert adapters.named("sql") == AdapterRef(name="sql")


def test_openai_model_names_the_base_or_an_adapter() -> None:
    engine = _engine("sql")
    assert adapters.for_model(engine, "served", "served") == AdapterRef(name="base")
    assert adapters.for_model(engine, "base", "served") == AdapterRef(name="base")
    assert adapters.for_model(engine, "sql", "served") == AdapterRef(name="sql")
    assert adapters.for_model(engine, "gpt-4o", "served") == AdapterRef(name="gpt-4o")  # -> 404 at submit
    assert adapters.for_model(engine, None, "served") is None
    # no adapter at all: any model is accepted and served by DEFAULT_ADAPTER, as before adapters
    assert adapters.for_model(_engine(), "gpt-4o", "served") is None
    assert adapters.for_model(SimpleNamespace(adapters=None), "gpt-4o", "served") is None


def _params(**p: object) -> Any:
    return GenerateRequest.model_validate({"inputs": "x", "parameters": p}).parameters


def test_lorax_fields() -> None:
    p = _params(adapter_id="sql", adapter_source="hub", api_token="tok")
    ref = adapters.lorax(p.adapter_id, p.adapter_source, p.merged_adapters, p.api_token)
    assert ref == AdapterRef(name="sql", source="hub", api_token="tok")
    assert "tok" not in repr(ref)  # a token never reaches logs
    p = _params(adapter_id="sql")
    assert adapters.lorax(p.adapter_id, p.adapter_source, None, None).source == "local"
    assert adapters.lorax(None, None, None, None) is None and adapters.lorax("", "hub", None, None) is None
    p = _params(merged_adapters={"ids": ["a", "b"], "weights": [0.7, 0.3], "merge_strategy": "ties",
                                 "density": 0.5, "majority_sign_method": "frequency"})
    ref = adapters.lorax(None, None, p.merged_adapters, None)
    assert ref.name is None and ref.merge == MergeRecipe(("a", "b"), (0.7, 0.3), "ties", 0.5, "frequency")
    p = _params(merged_adapters={"ids": ["a"], "weights": [1], "merge_strategy": None, "density": 1.0})
    assert adapters.lorax(None, None, p.merged_adapters, None).merge == MergeRecipe(("a",), (1.0,))


@pytest.mark.parametrize("merged", [
    {"ids": [], "weights": []},
    {"ids": ["a"], "weights": [1.0], "merge_strategy": "svd"},
    {"ids": ["a"], "weights": [1.0], "density": 1.5},
    {"ids": ["a"], "weights": [1.0], "majority_sign_method": "most"},
    {"ids": [""], "weights": [1.0]},
    {"weights": [1.0]},
])
def test_lorax_merge_schema_errors(merged: dict) -> None:
    with pytest.raises(ValidationError):
        _params(merged_adapters=merged)


def test_adapter_errors_keep_their_status_and_kind() -> None:
    err = adapters.api_error(AdapterError("unknown_adapter", "no adapter named 'x'"), param="model")
    assert (err.status, err.kind, err.param) == (404, "unknown_adapter", "model")
    assert err.message == "no adapter named 'x'"
    assert adapters.api_error(AdapterError("forbidden_path", "outside")).status == 400
    assert set(adapters.ADAPTER_KINDS) >= {"unknown_adapter", "invalid_adapter", "forbidden_path",
                                           "unsupported_source", "bad_merge"}
