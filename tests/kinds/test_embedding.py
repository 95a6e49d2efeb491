"""The built-in embedding handler against sentence-transformers' own `encode` on all-MiniLM-L6-v2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from server.config import Settings
from server.kinds.embedding import SentenceEmbedder

pytestmark = pytest.mark.model

MODEL = Path(__file__).resolve().parents[2] / "models" / "all-minilm-l6-v2"
SENTENCES = ["3D ActionSLAM: wearable person tracking in multi-floor environments",
             "The capital of France is Paris.", "a", "Représentation d'une phrase en français, avec accents."]
INSTRUCTION = "Represent the Science title:"


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    if not (MODEL / "modules.json").is_file():
        pytest.fail(f"{MODEL} is missing: run `make embed-model` (make test does)")
    return SentenceTransformer(str(MODEL), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(Settings(model_path=str(MODEL), model_kind="embedding", device_map="cpu"))


def _cos(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a, dtype=torch.float32),
                                                 torch.as_tensor(b, dtype=torch.float32), dim=-1)


def _req(x, **params):
    return {"input": x, "parameters": params}


def test_single_and_batched_equal_encode(embedder: SentenceEmbedder, reference) -> None:
    ref = reference.encode(SENTENCES, convert_to_tensor=True)
    batched = embedder.predict([_req(s) for s in SENTENCES])
    assert (_cos(batched, ref) >= 0.99999).all()
    for s, r in zip(SENTENCES, ref, strict=True):
        assert _cos(embedder.predict([_req(s)])[0], r) >= 0.99999


def test_instructor_pair_equals_encode_with_the_instruction_as_prompt_left_out_of_pooling(reference) -> None:
    embedder = SentenceEmbedder(Settings(model_path=str(MODEL), model_kind="embedding", device_map="cpu",
                                         pooling_include_prompt=False))
    reference.set_pooling_include_prompt(False)
    try:
        ref = reference.encode(SENTENCES, prompt=INSTRUCTION, convert_to_tensor=True)
        plain_ref = reference.encode(SENTENCES, convert_to_tensor=True)
    finally:
        reference.set_pooling_include_prompt(True)
    # mixed in one batch with plain sentences: each group gets its own pass
    out = embedder.predict([_req([INSTRUCTION, s]) for s in SENTENCES] + [_req(s) for s in SENTENCES])
    assert (_cos(out[: len(SENTENCES)], ref) >= 0.99999).all()
    assert (_cos(out[len(SENTENCES):], plain_ref) >= 0.99999).all()
    assert (_cos(out[: len(SENTENCES)], plain_ref) < 0.9999).any()  # the instruction did count


def test_token_ids_equal_text(embedder: SentenceEmbedder, reference) -> None:
    ids = [reference.tokenizer(s)["input_ids"] for s in SENTENCES]
    out = embedder.predict([_req({"token_ids": i}) for i in ids])
    assert (_cos(out, reference.encode(SENTENCES, convert_to_tensor=True)) >= 0.99999).all()


def test_cost_counts_tokens_and_refuses_long_inputs_unless_truncated(embedder: SentenceEmbedder) -> None:
    assert embedder.cost(_req("hello world")) == 4  # [CLS] hello world [SEP]
    long = "word " * 400
    with pytest.raises(ValueError, match="at most 256"):
        embedder.cost(_req(long))
    assert embedder.cost(_req(long, truncate=True)) == 256
    assert len(embedder.predict([_req(long, truncate=True)])[0]) == 384


@pytest.mark.parametrize("value, words", [
    ("", "empty"), (["a", "b", "c"], "exactly 2"), (["a"], "exactly 2"), ([1, "b"], "two strings"),
    (["instr", ""], "empty"), (3, "string"), (None, "string"), ({"token_ids": []}, "non-empty"),
    ({"token_ids": [1, 10**9]}, "integers in"),
])
def test_bad_inputs(embedder: SentenceEmbedder, value, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        embedder.cost(_req(value))


def test_dimensions_only_where_the_model_was_trained_for_them(embedder: SentenceEmbedder) -> None:
    with pytest.raises(ValueError, match="does not support"):
        embedder.cost(_req("x", dimensions=128))
    assert len(embedder.predict([_req("x", dimensions=384)])[0]) == 384  # its own size is fine
    matryoshka = SentenceEmbedder(Settings(model_path=str(MODEL), model_kind="embedding", device_map="cpu",
                                           embedding_dimensions=(128, 256)))
    v = matryoshka.predict([_req("x", dimensions=128)])[0]
    full = matryoshka.predict([_req("x")])[0]
    assert len(v) == 128 and abs(float(torch.tensor(v).norm()) - 1) < 1e-5
    assert _cos(v, torch.nn.functional.normalize(torch.tensor(full[:128]), dim=0)) >= 0.99999
    with pytest.raises(ValueError, match="at most 384"):
        matryoshka.cost(_req("x", dimensions=1000))


def test_normalize(embedder: SentenceEmbedder) -> None:
    v = embedder.predict([_req("x", normalize=True)])[0]
    assert abs(float(torch.tensor(v).norm()) - 1) < 1e-5
    assert embedder.describe()["normalized"] and embedder.describe()["pooling"] == "mean"


def test_counting_tokens_on_other_threads_does_not_disturb_a_running_batch(embedder: SentenceEmbedder,
                                                                           reference) -> None:
    """HTTP threads count tokens while the batch thread encodes (a shared fast tokenizer's padding
    state would break the batch)."""
    import threading

    stop = threading.Event()
    errors: list[BaseException] = []

    def count() -> None:
        while not stop.is_set():
            try:
                embedder.cost(_req("a short one"))
                embedder.cost(_req(SENTENCES[0] * 3))
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                errors.append(exc)

    threads = [threading.Thread(target=count) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        ref = reference.encode(SENTENCES, convert_to_tensor=True)
        for _ in range(5):
            assert (_cos(embedder.predict([_req(s) for s in SENTENCES]), ref) >= 0.99999).all()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
