"""The adapter check's table reads its medians and flags a short ratio (no server: given numbers)."""

from __future__ import annotations

from bench.adapter_check import adapter_table_lines


def _check(spread: list[float]) -> dict:
    plain = [100.0, 90.0, 110.0]
    return {"adapters": 4, "rank": 8, "clients": 8, "new_tokens": 64,
            "runs_tokens_per_s": {"plain": plain, "spread": spread, "base": [95.0, 96.0, 97.0]},
            "plain_tokens_per_s": 100.0, "spread_tokens_per_s": sorted(spread)[1], "base_tokens_per_s": 96.0,
            "pair_ratios": [s / p for s, p in zip(spread, plain, strict=True)]}


def test_table_reports_the_ratio_against_the_plain_server() -> None:
    lines = adapter_table_lines(_check([85.0, 80.0, 90.0]))
    assert "4 adapters of rank 8" in lines[0]
    assert lines[-1].startswith("spread over adapters and base") and "0.85" in lines[-1] and "ok" in lines[-1]
    assert "0.96" in lines[-2]
    short = adapter_table_lines(_check([70.0, 60.0, 75.0]))
    assert "SHORT" in short[-1]
