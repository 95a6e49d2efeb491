"""`python -m bench.gpu` on the CPU with a tiny shape and a handful of tokens, so it cannot rot:
the real server, bare `generate` and transformers' `generate_batch`, with and without int8."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu

pytestmark = [pytest.mark.integration, pytest.mark.model]


def test_gpu_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = gpu.main([str(out), "--shape", "tiny", "--concurrency", "1,2", "--new-tokens", "3",
                       "--prompt-tokens", "4", "--rounds", "1", "--work-dir", str(tmp_path)])
    written = sorted(p.suffix for p in out.iterdir())
    assert written == [".json", ".png"]
    saved = json.loads(next(out.glob("*.json")).read_text())
    assert saved["model"]["shape"] == "tiny" and saved["model"]["vocab_size"] == 1024
    runs = {r["quantization"]: r for r in saved["runs"]}
    assert set(runs) == {"none", "int8"}
    for run in runs.values():
        assert [lvl["clients"] for lvl in run["server"]] == [1, 2]
        # c = 1 runs 2 x rounds requests, c = 2 one round of 2; every request exactly 3 new tokens
        assert [lvl["tokens"] for lvl in run["server"]] == [6, 6]
        assert [lvl["tokens"] for lvl in run["bare"]] == [6, 6]
        assert [lvl.get("tokens") for lvl in run["generate_batch"]] == [3, 6], run["generate_batch"]
        assert all(r["server"] > 0 and r["vs_bare"] > 0 and r["vs_generate_batch"] > 0 for r in run["ratios"])
        assert run["ratios"][0]["target_vs_bare"] == 0.9
    assert runs["int8"]["weight_bytes"] < runs["none"]["weight_bytes"]
    assert result["bandwidth_gbs"] is None  # no GPU: no roofline claimed
    assert not list(tmp_path.glob("inferbox-gpu-*"))  # the model folder is cleaned up
