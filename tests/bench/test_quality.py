"""The int8 quality targets on the embedded model, on the first 512 tokens of the held-out text
(`make bench-quality` reports the whole text, int4 and speed)."""

from __future__ import annotations

import pytest

from bench import quality
from tools.local_server import MODEL_DIR

pytestmark = pytest.mark.model


def test_int8_perplexity_within_2_percent_and_top1_agreement_at_least_97_percent() -> None:
    result = quality.measure(str(MODEL_DIR), ["int8"], window=256, max_tokens=513, speed_steps=0)
    fp32, int8 = result["rows"]
    assert fp32["quantization"] == "none" and int8["quantization"] == "int8"
    assert fp32["tokens"] == int8["tokens"] == 512
    assert fp32["top1_agreement"] == 1.0
    assert 1 < fp32["perplexity"] < 100  # a real model on English prose, not noise
    assert abs(int8["perplexity_vs_fp32"]) <= 0.02, int8
    assert int8["top1_agreement"] >= 0.97, int8
    assert int8["weight_ratio"] < 0.45  # linear layers 4x smaller; float32 embeddings stay
    assert "| int8 |" in quality.table(result)
