"""The speculative check's bookkeeping: prompts, medians, ratios against targets, acceptance."""

from __future__ import annotations

from bench.speculative_check import PARAGRAPHS, prompt, summarize, table_lines


def _run(tps: float, texts: dict[int, str]) -> dict:
    return {"tokens": 10 * len(texts), "wall_s": 1.0, "tokens_per_s": tps, "texts": texts}


def test_prompts_are_grounded_in_their_paragraph():
    text, old, new = PARAGRAPHS[0]
    assert text in prompt(0) and f"'{old}' with '{new}'" in prompt(0)
    assert text in prompt(1) and "Summarize" in prompt(1)
    assert PARAGRAPHS[1][0] in prompt(2)


def test_summary_ratios_targets_and_acceptance():
    texts = {0: "a", 1: "b"}
    levels = [
        {"clients": 1, "drafted": 100.0, "accepted": 60.0, "mismatches": 0,
         "runs": {"plain": [_run(10, texts), _run(12, texts)],
                  "speculative": [_run(25, texts), _run(20, texts)]}},
        {"clients": 8, "drafted": 0.0, "accepted": 0.0, "mismatches": 1,
         "runs": {"plain": [_run(40, texts)], "speculative": [_run(36, texts)]}},
    ]
    one, eight = summarize(levels)
    assert one["ratio"] == (22.5 / 11) and one["meets_target"] is True
    assert one["pair_ratios"] == [2.5, 20 / 12] and one["acceptance"] == 0.6
    assert one["tokens_per_request"] == 10
    assert eight["ratio"] == 0.9 and eight["meets_target"] is False and eight["acceptance"] == 0.0
    lines = table_lines([one, eight], 8)
    assert "SPECULATIVE_NGRAM_TOKENS=8" in lines[0]
    assert ">= 1.80 ok" in lines[2] and ">= 0.95 SHORT" in lines[3] and "60%" in lines[2]
