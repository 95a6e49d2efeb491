"""Tiny random models for tests that need a real folder: a word-level tokenizer and a 2-layer Llama."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast


def tiny_model_dir(root: Path, with_bin: bool = False, hidden: int = 32, intermediate: int = 64) -> Path:
    vocab = {f"t{i}": i for i in range(64)}
    vocab.update({"<unk>": 64, "<s>": 65, "</s>": 66})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=67, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128,
                         bos_token_id=65, eos_token_id=66)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = root / "tiny"
    model.save_pretrained(path)
    if with_bin:  # the older PyTorch pickle format
        for f in path.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    fast.save_pretrained(path)
    return path
