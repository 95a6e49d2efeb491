"""Where local adapters may come from (no model: plain folders)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from server.adapters.paths import Roots, check_hub_id, confine, name_for, scan
from server.adapters.types import AdapterError


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


@pytest.fixture
def layout(tmp_path: Path) -> Roots:
    _adapter(tmp_path / "mnt" / "sql")
    _adapter(tmp_path / "mnt" / "team" / "chat")
    _adapter(tmp_path / "extra" / "x")
    _adapter(tmp_path / "outside" / "secret")
    (tmp_path / "mnt" / "empty").mkdir()
    os.symlink(tmp_path / "outside" / "secret", tmp_path / "mnt" / "link-out")
    os.symlink(tmp_path / "mnt" / "sql", tmp_path / "mnt" / "link-in")
    return Roots.of(str(tmp_path / "mnt"), (str(tmp_path / "extra"),))


def test_names_relative_and_absolute_paths_inside_the_roots(layout: Roots, tmp_path: Path) -> None:
    mnt = (tmp_path / "mnt").resolve()
    assert confine("sql", layout) == mnt / "sql"
    assert confine("team/chat", layout) == mnt / "team" / "chat"
    assert confine(str(tmp_path / "mnt" / "sql"), layout) == mnt / "sql"
    assert confine(str(tmp_path / "extra" / "x"), layout) == (tmp_path / "extra" / "x").resolve()
    assert confine("link-in", layout) == mnt / "sql"  # a symlink that stays inside is fine
    assert name_for(confine("sql", layout), layout) == "sql"
    assert name_for(confine("team/chat", layout), layout) == str(mnt / "team" / "chat")


@pytest.mark.parametrize("spec", ["../outside/secret", "sql/../../outside/secret", "link-out", "/etc",
                                  "/etc/passwd", "..", ".", "", " sql", "sql\x00"])
def test_paths_out_of_the_roots_are_forbidden(layout: Roots, tmp_path: Path, spec: str) -> None:
    with pytest.raises(AdapterError) as err:
        confine(spec, layout)
    assert err.value.kind == "forbidden_path" and err.value.status == 400
    assert str(tmp_path) not in err.value.message  # the resolved path is never shown


def test_absolute_path_outside_is_forbidden(layout: Roots, tmp_path: Path) -> None:
    with pytest.raises(AdapterError) as err:
        confine(str(tmp_path / "outside" / "secret"), layout)
    assert err.value.kind == "forbidden_path"


def test_missing_folder_and_folder_without_config(layout: Roots) -> None:
    with pytest.raises(AdapterError) as err:
        confine("nope", layout)
    assert (err.value.status, err.value.kind) == (404, "unknown_adapter")
    with pytest.raises(AdapterError) as err:
        confine("empty", layout)
    assert (err.value.status, err.value.kind) == (400, "invalid_adapter")
    assert "adapter_config.json" in err.value.message


def test_scan_finds_kaito_folders_and_skips_symlinks_out(layout: Roots, tmp_path: Path) -> None:
    found = dict(scan(layout.adapters_dir))
    assert set(found) == {"sql", "link-in"}  # team/ has no config at its top; link-out leaves the root
    assert scan(tmp_path / "does-not-exist") == []


@pytest.mark.parametrize("spec", ["owner/name", "org-1/my_adapter.v2"])
def test_hub_ids(spec: str) -> None:
    check_hub_id(spec)


@pytest.mark.parametrize("spec", ["name", "../x/y", "/abs/path", "a/b/c", "a/..", "a/b c"])
def test_not_hub_ids(spec: str) -> None:
    with pytest.raises(AdapterError) as err:
        check_hub_id(spec)
    assert err.value.status == 400
