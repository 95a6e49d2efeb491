"""Quality of QUANTIZATION=int8 on the embedded model over the whole held-out text (2,413 scored
positions: on a few hundred, one token is already 0.2-0.4% of agreement). `make bench-quality`
also reports int4.

The issue's targets: perplexity within 2% of float32 and greedy top-1 agreement of at least 97%.
int8 is torchao's, in groups of 64 weights (97.6% here); per-row int8 (quanto's qint8) reached
96.35%, and keeping `down_proj` in float (QUANTIZATION_SKIP) still helps it. bfloat16 (TORCH_DTYPE=auto
on CPUs with AMX or AVX512-BF16) is held to perplexity within 0.5% and 97% agreement."""

from __future__ import annotations

import pytest

from bench import quality
from tools.local_server import MODEL_DIR

pytestmark = pytest.mark.model


def test_int8_and_bfloat16_quality_on_the_embedded_model() -> None:
    result = quality.measure(str(MODEL_DIR), ["int8", "int8:down_proj"], window=512,
                             dtypes=["float32", "bfloat16"])
    fp32, bf16, int8, skip = result["rows"]
    assert [r["quantization"] for r in result["rows"]] == ["none", "none", "int8", "int8:down_proj"]
    assert [r["dtype"] for r in result["rows"]] == ["float32", "bfloat16", "float32", "float32"]
    # the bfloat16 targets (README: "Quality" has the measured figures)
    assert abs(bf16["perplexity_vs_fp32"]) <= 0.005 and bf16["top1_agreement"] >= 0.97, bf16
    assert 0.45 < bf16["weight_ratio"] < 0.55
    assert "| bf16 |" in quality.table(result)
    assert fp32["tokens"] == int8["tokens"] > 2000 and fp32["top1_agreement"] == 1.0
    assert 1 < fp32["perplexity"] < 100  # a real model on English prose, not noise
    assert abs(int8["perplexity_vs_fp32"]) <= 0.02, int8
    assert int8["top1_agreement"] >= 0.97, int8
    assert int8["weight_ratio"] < 0.45  # linear layers 4x smaller; the float32 embeddings stay
    assert abs(skip["perplexity_vs_fp32"]) <= 0.02 and skip["top1_agreement"] >= 0.97, skip
    assert int8["weight_ratio"] < skip["weight_ratio"] < 0.6
    assert "| int8 |" in quality.table(result)


def test_dtypes_are_measured_against_float32_before_quantizations() -> None:
    assert quality.settings(["int8", "none"], ["bfloat16", "float32"]) == [
        ("none", "float32"), ("none", "bfloat16"), ("int8", "float32")]
    assert quality.settings(["none"], ["float32"]) == [("none", "float32")]
