"""The per-row LoRA forward (server/adapters/runtime.py) on a tiny random llama: a mixed batch
equals peft's own mixed-batch forward (`adapter_names`), a base row is untouched bit for bit,
and a batch on one adapter is exactly peft's forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from server.adapters.runtime import LoraRuntime, RowAdapters, stacked_adapters, use_adapters
from tools.adapters import make_adapter, make_tiny_base

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_base(root / "base", vocab_size=128)
    shapes = [(2, ("q_proj", "v_proj")), (4, ("q_proj", "o_proj")), (3, ("v_proj",))]
    paths = [make_adapter(base, root / f"a{i}", rank=r, seed=i, b_std=1.0, target_modules=mods)
             for i, (r, mods) in enumerate(shapes)]
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    runtime = LoraRuntime(model)
    fresh = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    reference = PeftModel.from_pretrained(fresh, str(paths[0]), adapter_name="a0").eval()
    for i, p in enumerate(paths):
        runtime.load(f"a{i}", str(p))
        if i:
            reference.load_adapter(str(p), adapter_name=f"a{i}")
    return model, runtime, reference


def _logits(model, ids, **kw) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, **kw).logits


def test_mixed_rows_equal_peft_and_base_rows_are_untouched(tiny) -> None:
    model, _, reference = tiny
    ids = torch.randint(0, 128, (5, 7), generator=torch.Generator().manual_seed(0))
    keys = [None, "a0", "a1", "a2", "a0"]
    with use_adapters(keys):
        ours = _logits(model, ids)
    theirs = _logits(reference, ids, adapter_names=[k or "__base__" for k in keys])
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    base = _logits(model, ids)  # no adapters set on this thread: the base model
    assert torch.equal(ours[0], base[0])
    assert not torch.allclose(ours[1], base[1])  # the adapters do something here
    for k in ("a0", "a1", "a2"):  # one adapter for all rows: peft's forward exactly
        with use_adapters(k):
            one = _logits(model, ids)
        reference.set_adapter(k)
        assert torch.equal(one, _logits(reference, ids))


def test_row_plans() -> None:
    assert RowAdapters.of(None) is None and RowAdapters.of([None, None]) is None
    assert RowAdapters.of("a").single == "a" and RowAdapters.of(["a", "a"]).single == "a"
    plan = RowAdapters.of([None, "a", "b", "a"])
    assert plan.single is None
    mask, scale = plan.mask((("a", 0, 2, 0.5), ("b", 2, 5, 2.0)), torch.device("cpu"))
    assert mask.tolist() == [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert scale.flatten().tolist() == [0.0, 0.5, 2.0, 0.5]
    assert plan.mask((("c", 0, 2, 1.0),), torch.device("cpu")) is None  # no row uses this layer's adapter


def test_deleting_an_adapter_restacks(tiny, tmp_path: Path) -> None:
    model, runtime, _ = tiny
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert stacked_adapters(q)[0] == ["a0", "a1"]
    runtime.delete("a1")
    assert stacked_adapters(q) == (["a0"], 2)
