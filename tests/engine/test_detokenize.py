from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from server.engine.detokenize import IncrementalDetokenizer

MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(MODEL)


@pytest.mark.parametrize("text", [
    "Hello world, this is a test.",
    "Café, naïve, 東京タワー and emoji 🎉🎉 with  double  spaces",
    "  leading spaces\nnew lines\n\n and tabs\t.",
])
def test_incremental_equals_full_decode(tokenizer, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add([i]) for i in ids]
    deltas.append(detok.flush())
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)
