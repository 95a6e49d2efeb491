"""Real LoRA adapters for the tests, built with peft on the embedded model in a temporary folder.

`make_adapter` wraps a base model with peft's `get_peft_model`, fills `lora_A` and `lora_B` with
seeded random values (peft's own initialisation leaves `lora_B` at zero, which would make an
adapter a no-op) and saves it with `save_pretrained`: `adapter_config.json` +
`adapter_model.safetensors`, exactly what Kaito mounts at `/mnt/adapter/<name>/`. The scale is
chosen so that greedy outputs differ from the base model's while staying fluent enough to stop.
`make_tiny_base` builds a small random model of another shape, for "trained on another base" tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PreTrainedModel

DEFAULT_TARGETS = ("q_proj", "v_proj")
B_STD = 0.3  # lora_B std (lora_A: 1/sqrt(fan_in)); q,v at rank 4: ~27% of greedy tokens differ from base


def load_base(base_dir: Path | str) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()


def _fill(peft_model: torch.nn.Module, seed: int, b_std: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if ".lora_A." in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            elif ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * b_std)


def save_adapter(base: PreTrainedModel, out_dir: Path | str, *, rank: int, seed: int,
                 target_modules: Sequence[str] = DEFAULT_TARGETS, alpha: int | None = None,
                 b_std: float = B_STD) -> Path:
    """Add a seeded LoRA adapter to `base`, save it to `out_dir`, and take it off `base` again."""
    out = Path(out_dir)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, lora_dropout=0.0,
                        target_modules=list(target_modules), task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, config)
    _fill(peft_model, seed, b_std)
    peft_model.save_pretrained(str(out))
    peft_model.unload()  # the base model's own modules are put back
    return out


def make_adapter(base_dir: Path | str, out_dir: Path | str, *, rank: int, seed: int,
                 target_modules: Sequence[str] = DEFAULT_TARGETS, alpha: int | None = None,
                 b_std: float = B_STD) -> Path:
    """One real peft LoRA adapter for the model at `base_dir`, saved in `out_dir`."""
    return save_adapter(load_base(base_dir), out_dir, rank=rank, seed=seed,
                        target_modules=target_modules, alpha=alpha, b_std=b_std)


def make_adapters(base_dir: Path | str, root: Path | str, n: int = 3, *, ranks: Sequence[int] = (4, 4, 8),
                  seed: int = 1, target_modules: Sequence[str] = DEFAULT_TARGETS,
                  prefix: str = "adapter") -> list[Path]:
    """`n` adapters `root/<prefix>1..n` (ranks cycle through `ranks`), loading the base model once."""
    base = load_base(base_dir)
    root = Path(root)
    return [save_adapter(base, root / f"{prefix}{i + 1}", rank=ranks[i % len(ranks)], seed=seed + i,
                         target_modules=target_modules)
            for i in range(n)]


def make_tiny_base(out_dir: Path | str, *, hidden: int = 64, vocab_size: int = 49152, seed: int = 0) -> Path:
    """A small random llama model (another base model: other shapes, same module names)."""
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
                         max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


def make_foreign_adapters(root: Path | str, seed: int = 100) -> dict[str, Path]:
    """Adapters the embedded model must refuse: `shape` (trained on a model of another width) and
    `modules` (targets module names the embedded model does not have)."""
    root = Path(root)
    shape = make_adapter(make_tiny_base(root / "_tiny_llama"), root / "other-base", rank=4, seed=seed)
    torch.manual_seed(seed)
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                                       vocab_size=49152, bos_token_id=0, eos_token_id=0))
    modules = save_adapter(gpt2, root / "other-modules", rank=4, seed=seed + 1, target_modules=("c_attn",))
    return {"shape": shape, "modules": modules}
