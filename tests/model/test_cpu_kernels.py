"""oneDNN linear layers on the CPU: same results as PyTorch's default kernel, greedy output unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from bench.workload import messages
from server.config import Settings
from server.model import cpu_kernels, kernel_choice, loader
from server.model.cpu_kernels import onednn_works, use_onednn_linear
from tests.support.models import tiny_model_dir
from tests.support.servers import MODEL_DIR

pytestmark = [pytest.mark.model,
              pytest.mark.skipif(not onednn_works(), reason="this torch build has no oneDNN")]


def _patched(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if type(m) is nn.Linear and "forward" in m.__dict__]


def test_every_float32_linear_is_routed_and_logits_agree() -> None:
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 300, (3, 17))
    with torch.inference_mode():
        before = model(ids).logits
        n = use_onednn_linear(model)
        after = model(ids).logits
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert n == len(linears) == len(_patched(model)) > 0
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tying untouched
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    with torch.enable_grad():  # training-style calls fall back to F.linear (oneDNN op: inference only)
        model(ids).logits.sum().backward()
    assert model.lm_head.weight.grad is not None


def test_other_dtypes_and_subclasses_keep_their_kernel() -> None:
    class Adapter(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(8, 8).to(torch.float16), Adapter(8, 8), nn.Linear(8, 8))
    assert use_onednn_linear(model) == 1
    assert _patched(model) == ["2"]


def test_loader_pins_a_kernel_without_timing(tmp_path: Path, monkeypatch) -> None:
    def no_timing(*args, **kwargs):
        raise AssertionError("a pinned CPU_LINEAR must not time")

    monkeypatch.setattr(kernel_choice, "time_buckets", no_timing)
    path = tiny_model_dir(tmp_path)
    model = loader.load(Settings(model_path=str(path), cpu_linear="onednn", kernel_cache_dir="off")).model
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert len(_patched(model)) == len(linears) > 0
    assert all(m.onednn_rows == (True,) * len(cpu_kernels.ROW_BUCKETS) for m in linears)
    assert not _patched(loader.load(Settings(model_path=str(path), cpu_linear="torch")).model)
    assert not list(tmp_path.glob("**/cpu-kernels-*.json"))


def test_embedded_model_greedy_output_is_unchanged() -> None:
    """Plain transformers vs the same model through oneDNN: greedy text identical, token for token."""
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail("run `make model`")
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    prompts = [tok.apply_chat_template(messages(i), add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)["input_ids"] for i in range(4)]

    def greedy() -> list[list[int]]:
        with torch.inference_mode():
            return [model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=48, do_sample=False,
                                   pad_token_id=tok.eos_token_id)[0].tolist() for p in prompts]

    plain = greedy()
    assert use_onednn_linear(model) > 0
    assert greedy() == plain


def _count_onednn(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cpu_kernels._onednn

    def counted(x, w, b):
        calls.append(x.numel() // x.shape[-1])
        return real(x, w, b)

    monkeypatch.setattr(cpu_kernels, "_onednn", counted)
    return calls


def test_onednn_mode_uses_onednn_at_every_row_count(monkeypatch) -> None:
    layer = nn.Linear(16, 8)
    assert use_onednn_linear(nn.Sequential(layer)) == 1
    assert layer.onednn_rows == (True,) * len(cpu_kernels.ROW_BUCKETS)
    calls = _count_onednn(monkeypatch)
    with torch.inference_mode():
        for rows in (1, 2):
            layer(torch.randn(rows, 16))
        layer(torch.randn(1, 3, 16))  # rows count every position
        layer(torch.randn(300, 16))
    assert calls == [1, 2, 3, 300]


def test_a_table_routes_by_rows_and_unroute_restores(monkeypatch) -> None:
    layer = nn.Linear(16, 8)
    cpu_kernels.route([layer], [rows >= 4 for rows in cpu_kernels.ROW_BUCKETS])
    calls = _count_onednn(monkeypatch)
    with torch.inference_mode():
        for rows in (1, 2, 3, 4, 300):
            layer(torch.randn(rows, 16))
    assert calls == [3, 4, 300]
    cpu_kernels.unroute([layer])
    assert "forward" not in layer.__dict__ and not hasattr(layer, "onednn_rows")
    with pytest.raises(ValueError, match="one flag per row bucket"):
        cpu_kernels.route([layer], [True])


def test_bfloat16_layers_are_routed_only_where_onednn_runs_them() -> None:
    model = nn.Sequential(nn.Linear(8, 8).to(torch.bfloat16), nn.Linear(8, 8))
    assert [m.weight.dtype for m in cpu_kernels.eligible(model)] == (
        [torch.bfloat16, torch.float32] if onednn_works(torch.bfloat16) else [torch.float32])
