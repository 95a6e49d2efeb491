"""The real TGI, LoRAX and MosaicML clients, run from their own venv (`make clients`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PY = ROOT / ".venv-clients" / "bin" / "python"
SCRIPT = ROOT / "tests" / "integration" / "clients" / "run_client.py"


def run_client(which: str, base_url: str, tmp: Path, *args: str) -> dict[str, Any]:
    if not CLIENT_PY.exists():
        pytest.fail("the client venv is missing: run `make clients` (make test does)")
    env = {**os.environ, "HOME": str(tmp), "MOSAICML_API_KEY": "test-key", "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([str(CLIENT_PY), str(SCRIPT), which, base_url, *args], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)
