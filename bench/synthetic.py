"""A model folder with a real architecture and random weights, for benchmarks where no hub is
reachable (a GPU machine here takes at most 64 MiB of files, so it cannot bring an 8B checkpoint).

Speed does not depend on the weights' values, and the benchmark fixes every output's length with
`min_new_tokens`, so random weights measure what real ones would. The tokenizer is synthetic too: a
word-level vocabulary `w0 w1 ...` the size of the model's, so a prompt of k words is exactly k tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from server.model.plan import config_kwargs
from server.presets import Architecture, load_preset

# Shapes that are not presets: a 1B-class model for a quick GPU run, and a tiny one for CPU smoke tests.
SHAPES: dict[str, tuple[Architecture, int]] = {
    "1b": (Architecture(model_type="llama", num_hidden_layers=16, hidden_size=2048, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, intermediate_size=8192,
                        tie_word_embeddings=True), 8192),  # the Llama-3.2-1B shape
    "tiny": (Architecture(model_type="llama", num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=1024, intermediate_size=128), 2048),
}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"

# Peak memory bandwidth (GB/s) by GPU name, from the vendors' data sheets: the batch-1 decode
# ceiling is bandwidth / weight bytes (every step reads every weight once).
BANDWIDTH_GBS = {
    "H200": 4800, "H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 NVL": 3900, "H100 PCIe": 2000,
    "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555,
    "L40S": 864, "L40": 864, "A10G": 600, "A10": 600, "L4": 300, "T4": 320, "V100": 900,
}


def bandwidth_gbs(device_name: str) -> float | None:
    """The longest table key found in the device's name (e.g. "NVIDIA H100 80GB HBM3")."""
    hits = [k for k in BANDWIDTH_GBS if k.lower() in device_name.lower()]
    return float(BANDWIDTH_GBS[max(hits, key=len)]) if hits else None


def architecture(shape: str) -> tuple[str, Architecture, int]:
    """`shape` is a SHAPES key or a preset name: (name, architecture, context length)."""
    if shape in SHAPES:
        arch, context = SHAPES[shape]
        return shape, arch, context
    preset = load_preset(shape)
    return preset.name, preset.architecture, preset.context_length


def _tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 3)}
    vocab.update({"<unk>": vocab_size - 3, "<s>": vocab_size - 2, "</s>": vocab_size - 1})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(shape: str, out: Path, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, Any]:
    """Write a random-weight model folder for `shape`; returns a description of it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    name, arch, context = architecture(shape)
    config = AutoConfig.for_model(arch.model_type, **config_kwargs(arch, context))
    config.bos_token_id, config.eos_token_id = arch.vocab_size - 2, arch.vocab_size - 1
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = arch.vocab_size - 1
    model.save_pretrained(out)
    _tokenizer(arch.vocab_size).save_pretrained(out)
    described = {"shape": name, "model_type": arch.model_type, "layers": arch.num_hidden_layers,
                 "hidden_size": arch.hidden_size, "vocab_size": arch.vocab_size,
                 "parameters": sum(p.numel() for p in model.parameters()), "dtype": str(dtype).split(".")[-1]}
    (out / "inferbox-synthetic.json").write_text(json.dumps(described))
    del model
    return described


def prompt(i: int, words: int, vocab_size: int) -> str:
    """Request i's prompt: `words` distinct pseudo-random words, exactly `words` tokens."""
    n = vocab_size - 3
    return " ".join(f"w{(i * 7919 + j * 104729 + 1) % n}" for j in range(words))
