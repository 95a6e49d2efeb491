"""Adapter folders checked against the base model before it is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from server.adapters.types import AdapterError
from server.adapters.validate import check_adapter
from tests.support.servers import MODEL_DIR


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = nn.Linear(8, 8)
        self.v_proj = nn.Linear(8, 4)


class _Tiny(nn.Module):
    """The module tree of a two-layer model; enough for validation (no weights are read)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([nn.Module(), nn.Module()])
        for layer in self.model.layers:
            layer.self_attn = _Attn()


def _write(folder: Path, *, rank: int = 2, out_v: int = 4, in_q: int = 8, config: dict | None = None,
           modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i in range(2):
        for m in modules:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{m}"
            tensors[f"{prefix}.lora_A.weight"] = torch.zeros(rank, in_q)
            tensors[f"{prefix}.lora_B.weight"] = torch.zeros(out_v if m == "v_proj" else 8, rank)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": list(modules)}
    cfg.update(config or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def _refused(folder: Path, model: nn.Module, needle: str) -> AdapterError:
    with pytest.raises(AdapterError) as err:
        check_adapter(folder, model, "mine")
    assert (err.value.status, err.value.kind) == (400, "invalid_adapter")
    assert needle in err.value.message and "'mine'" in err.value.message
    return err.value


def test_a_fitting_adapter_passes(tmp_path: Path) -> None:
    spec = check_adapter(_write(tmp_path / "ok", rank=3), _Tiny(), "ok")
    assert spec.rank == 3 and len(spec.modules) == 4


def test_wrong_shapes_are_refused_with_the_reason(tmp_path: Path) -> None:
    _refused(_write(tmp_path / "a", in_q=16), _Tiny(), "expects 16 inputs")
    _refused(_write(tmp_path / "b", out_v=6), _Tiny(), "another base model")


def test_unknown_target_modules_are_refused(tmp_path: Path) -> None:
    err = _refused(_write(tmp_path / "a", modules=("q_proj", "c_attn")), _Tiny(), "does not have")
    assert "c_attn" in err.message


@pytest.mark.parametrize(("config", "needle"), [
    ({"peft_type": "PREFIX_TUNING"}, "only LoRA"),
    ({"use_dora": True}, "DoRA"),
    ({"r": 0}, "rank"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"lora_bias": True}, "lora_bias"),
])
def test_unsupported_configs(tmp_path: Path, config: dict, needle: str) -> None:
    _refused(_write(tmp_path / "a", config=config), _Tiny(), needle)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    folder = _write(tmp_path / "a")
    (folder / "adapter_model.safetensors").unlink()
    _refused(folder, _Tiny(), "adapter_model.safetensors is missing")
    folder = _write(tmp_path / "b")
    (folder / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    _refused(folder, _Tiny(), "corrupt")
    folder = _write(tmp_path / "c")
    (folder / "adapter_config.json").write_text("{\"peft_type\": ")
    _refused(folder, _Tiny(), "not valid JSON")
    folder = _write(tmp_path / "d")
    (folder / "adapter_config.json").unlink()
    _refused(folder, _Tiny(), "adapter_config.json is missing")
    folder = _write(tmp_path / "e")
    save_file({"other": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    _refused(folder, _Tiny(), "no LoRA weights")


@pytest.mark.model
def test_adapters_for_other_base_models_are_refused(foreign_adapters: dict[str, Path],
                                                    adapters_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(MODEL_DIR))
    assert check_adapter(adapters_dir / "adapter1", model, "adapter1").rank == 4
    _refused(foreign_adapters["shape"], model, "trained for another base model")
    err = _refused(foreign_adapters["modules"], model, "does not have")
    assert "c_attn" in err.message
    truncated = shutil.copytree(adapters_dir / "adapter1", tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(truncated, model, "corrupt")
