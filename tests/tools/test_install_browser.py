"""tools/install_browser.sh never fails the build and never hides a skip: where Chromium cannot be
installed it records why, which the browser test shows as its skip reason."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tools.local_server import ROOT


def _sandbox(tmp_path: Path, commands: tuple[str, ...]) -> tuple[Path, dict[str, str]]:
    """A copy of the script with a PATH that offers only `commands` (no chromium, no apt-get)."""
    (tmp_path / "tools").mkdir()
    shutil.copy(ROOT / "tools" / "install_browser.sh", tmp_path / "tools")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in commands:
        (bin_dir / name).symlink_to(shutil.which(name))
    return tmp_path, {"PATH": str(bin_dir)}


def test_without_apt_it_records_why_and_succeeds(tmp_path: Path) -> None:
    root, env = _sandbox(tmp_path, ("bash", "dirname", "mkdir", "rm", "id", "tail"))
    r = subprocess.run(["bash", "tools/install_browser.sh"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0
    reason = (root / ".cache" / "browser-unavailable").read_text()
    assert "no apt-get" in reason and "SKIPPED" in r.stderr and "no apt-get" in r.stderr


def test_with_chromium_present_it_does_nothing(tmp_path: Path) -> None:
    root, env = _sandbox(tmp_path, ("bash", "dirname", "mkdir", "rm", "true"))
    (root / ".cache").mkdir()
    (root / ".cache" / "browser-unavailable").write_text("stale")
    env["CHROMIUM"] = shutil.which("true")
    r = subprocess.run(["bash", "tools/install_browser.sh"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    assert not (root / ".cache" / "browser-unavailable").exists()  # a stale reason never lingers
