"""Where adapters may come from: folders under ADAPTERS_DIR or ADAPTER_ROOTS, and nothing else.

A local reference is a folder name under ADAPTERS_DIR (`sql`), a path relative to it, or an
absolute path. It is resolved with every symlink followed and must then lie inside one of the
allowed roots (also resolved): `../`, absolute paths elsewhere and symlinks that point out are
refused alike. Messages name what the client sent, never the resolved path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from server.adapters.types import AdapterError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Roots:
    adapters_dir: Path  # ADAPTERS_DIR, as configured (names are relative to it)
    extra: tuple[Path, ...] = ()  # ADAPTER_ROOTS

    @classmethod
    def of(cls, adapters_dir: str, roots: tuple[str, ...] = ()) -> Roots:
        return cls(Path(adapters_dir), tuple(Path(r) for r in roots))

    def resolved(self) -> list[Path]:
        return [Path(os.path.realpath(r)) for r in (self.adapters_dir, *self.extra)]


def scan(adapters_dir: Path) -> list[tuple[str, Path]]:
    """Every subfolder of ADAPTERS_DIR that holds adapter_config.json, by name (Kaito's layout).
    Subfolders that resolve outside ADAPTERS_DIR (symlinks out) are skipped."""
    if not adapters_dir.is_dir():
        return []
    root = Path(os.path.realpath(adapters_dir))
    found = []
    for child in sorted(adapters_dir.iterdir()):
        real = Path(os.path.realpath(child))
        if real.is_relative_to(root) and real != root and (real / CONFIG_FILE).is_file():
            found.append((child.name, real))
    return found


def confine(spec: str, roots: Roots) -> Path:
    """The real folder a local adapter reference names, if it lies inside an allowed root.

    Raises AdapterError: forbidden_path (outside every root), unknown_adapter (no such folder),
    invalid_adapter (a folder without adapter_config.json)."""
    if not spec or "\x00" in spec or spec.strip() != spec:
        raise AdapterError("forbidden_path", f"adapter path {spec!r} is not allowed")
    given = Path(spec)
    candidate = given if given.is_absolute() else roots.adapters_dir / given
    real = Path(os.path.realpath(candidate))
    allowed = roots.resolved()
    if not any(real.is_relative_to(root) and real != root for root in allowed):
        raise AdapterError("forbidden_path", f"adapter path {spec!r} is outside ADAPTERS_DIR and "
                           "ADAPTER_ROOTS (no `..`, other absolute paths, or symlinks out)")
    if not real.is_dir():
        raise AdapterError("unknown_adapter", f"adapter {spec!r} not found")
    if not (real / CONFIG_FILE).is_file():
        raise AdapterError("invalid_adapter", f"adapter {spec!r} has no {CONFIG_FILE}")
    return real


def name_for(real: Path, roots: Roots) -> str:
    """The public name of a folder: its folder name directly under ADAPTERS_DIR, else its path."""
    top = Path(os.path.realpath(roots.adapters_dir))
    if real.parent == top:
        return real.name
    return str(real)


def is_path_like(spec: str) -> bool:
    return "/" in spec or spec.startswith(".") or os.sep in spec


def check_hub_id(spec: str) -> None:
    """A hub id is `owner/name`; anything else (paths, `..`) is refused before the cache is read."""
    if not _HUB_ID.match(spec) or ".." in spec:
        raise AdapterError("invalid_adapter", f"adapter_id {spec!r} is not a hub id (owner/name)")
