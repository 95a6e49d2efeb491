"""`python -m tools.tiny_model OUT`: a small random Llama with the embedded model's tokenizer and chat
template, for trying what the embedded model cannot show: tensor parallelism over 2 ranks (SmolLM2's
9 attention heads split over 3 ranks, not 2), in seconds on any CPU. Its answers are random tokens.

    python -m tools.tiny_model models/tiny-llama
    TENSOR_PARALLEL=2 MODEL_PATH=models/tiny-llama make run
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from server.config import DEFAULT_MODEL_PATH

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def build(out: Path | str, *, heads: int = 8, kv_heads: int = 4, hidden: int = 128, layers: int = 2,
          intermediate: int = 256, seed: int = 0, tokenizer_from: Path | str = DEFAULT_MODEL_PATH) -> Path:
    """Write the model to `out` (a Hugging Face folder: safetensors, config, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    source = Path(tokenizer_from)
    if not (source / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer in {source}: run `make model` first")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         tie_word_embeddings=True, dtype="float32")
    # a larger spread than the default init, so that greedy choices are clear-cut (not near-ties)
    config.initializer_range = 0.2
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out)
    model.save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=256)
    args = parser.parse_args(argv)
    path = build(args.out, heads=args.heads, kv_heads=args.kv_heads, hidden=args.hidden, layers=args.layers,
                 intermediate=args.intermediate)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
