"""Packed (padding-free) embedding passes against sentence-transformers' own `encode`: the layout,
the real all-MiniLM-L6-v2, tiny random BERT (eager attention), RoBERTa (positions from
padding_idx + 1) and T5 (instructor's encoder) models, and the load-time check that keeps the
plain path when packing is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from server.config import Settings
from server.kinds import packing
from server.kinds.embedding import SentenceEmbedder
from server.kinds.packing import Layout, PackedEncoder

MODEL = Path(__file__).resolve().parents[2] / "models" / "all-minilm-l6-v2"
TEXTS = ["a", "The capital of France is Paris.", "word " * 300, "tea and volcanoes", "x",
         "3D ActionSLAM: wearable person tracking in multi-floor environments", "b c d e f g h i j k l m"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


@pytest.mark.parametrize("lengths, cap", [([5, 30, 7, 29, 3, 64, 1], 64), ([10] * 9, 32), ([100, 3, 3], 64),
                                          ([1], 64), ([40, 40, 40], 64)])
def test_layout_places_every_input_once_within_its_row(lengths: list[int], cap: int) -> None:
    layout = Layout.plan(lengths, cap)
    width = max(cap, max(lengths))
    placed = sorted(i for row in layout.rows for i, _ in row)
    assert placed == list(range(len(lengths)))
    for row in layout.rows:
        spans = sorted((start, start + lengths[i]) for i, start in row)
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
        assert spans[-1][1] <= layout.width <= width
    assert layout.width == max(sum(lengths[i] for i, _ in row) for row in layout.rows)
    # first fit: no input sits in a later row than the first one with room for it when it was placed
    for r, row in enumerate(layout.rows):
        for i, _ in row:
            assert all(sum(lengths[j] for j, _ in earlier if lengths[j] >= lengths[i]) + lengths[i] > width
                       for earlier in layout.rows[:r])


def test_layout_shares_rows() -> None:
    assert len(Layout.plan([20, 20, 20, 10, 5], 64).rows) == 2
    assert len(Layout.plan([10] * 32, 64).rows) == 6


@pytest.fixture(scope="module")
def minilm():
    from sentence_transformers import SentenceTransformer

    if not (MODEL / "modules.json").is_file():
        pytest.fail(f"{MODEL} is missing: run `make embed-model` (make test does)")
    return SentenceTransformer(str(MODEL), device="cpu", local_files_only=True)


@pytest.mark.model
def test_packed_vectors_equal_encode_on_the_embedded_model(minilm) -> None:
    packer = PackedEncoder.verified(minilm)
    assert packer is not None
    want = minilm.encode(TEXTS, convert_to_tensor=True)
    got = packer.embed_texts(TEXTS)
    assert got.shape == want.shape and (_cos(got, want) >= 0.99999).all()
    ids = [torch.tensor(minilm.tokenizer(t, truncation=True, max_length=256)["input_ids"]) for t in TEXTS]
    assert (_cos(packer.embed(ids), want) >= 0.99999).all()


@pytest.mark.model
def test_an_instruction_left_out_of_the_pooling_stays_out_when_packed(minilm) -> None:
    minilm.set_pooling_include_prompt(False)
    try:
        packer = PackedEncoder.verified(minilm)
        assert packer is not None
        want = minilm.encode(TEXTS, prompt="Represent the Science title:", convert_to_tensor=True)
        got = packer.embed_texts(TEXTS, "Represent the Science title:")
    finally:
        minilm.set_pooling_include_prompt(True)
    assert (_cos(got, want) >= 0.99999).all()


@pytest.mark.model
def test_a_model_that_packing_would_change_keeps_the_padded_path(minilm, monkeypatch, caplog) -> None:
    monkeypatch.setattr(packing, "_position_offset", lambda model: 7)  # positions off by 7: wrong vectors
    with caplog.at_level(logging.INFO, logger="server.kinds.packing"):
        assert PackedEncoder.verified(minilm) is None
    assert "packed vectors differ" in caplog.text


@pytest.mark.model
def test_the_setting_turns_packing_off() -> None:
    on = SentenceEmbedder(Settings(model_path=str(MODEL), model_kind="embedding", device_map="cpu"))
    off = SentenceEmbedder(Settings(model_path=str(MODEL), model_kind="embedding", device_map="cpu",
                                    embed_packing=False))
    assert on.packer is not None and off.packer is None
    reqs = [{"input": t, "parameters": {}} for t in TEXTS[:2] + TEXTS[3:]]
    assert (_cos(torch.tensor(on.predict(reqs)), torch.tensor(off.predict(reqs))) >= 0.99999).all()


def _tiny(tmp_path: Path, kind: str, attention: str):
    """A random 2-layer encoder with all-MiniLM-L6-v2's tokenizer, wrapped as sentence-transformers.
    bert/roberta/t5: all-MiniLM-L6-v2 and bge, multilingual-e5 (positions from padding_idx + 1),
    instructor."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertModel,
        RobertaConfig,
        RobertaModel,
        T5Config,
        T5EncoderModel,
    )

    torch.manual_seed(0)
    common = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 64, "max_position_embeddings": 300, "pad_token_id": 0}
    if kind == "t5":  # instructor's encoder: relative positions, no position ids
        t5 = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      pad_token_id=0, decoder_start_token_id=0)
        model = T5EncoderModel(t5)
    else:
        model = BertModel(BertConfig(**common)) if kind == "bert" else RobertaModel(RobertaConfig(**common))
    path = tmp_path / kind
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(MODEL)).save_pretrained(path)
    first = Transformer(str(path), model_kwargs={"attn_implementation": attention}, max_seq_length=256)
    return SentenceTransformer(modules=[first, Pooling(32, "mean")], device="cpu")


@pytest.mark.model
@pytest.mark.parametrize("kind, attention", [("bert", "eager"), ("bert", "sdpa"), ("roberta", "sdpa"),
                                             ("t5", "sdpa")])
def test_packing_holds_on_other_encoders(tmp_path: Path, kind: str, attention: str) -> None:
    st = _tiny(tmp_path, kind, attention)
    packer = PackedEncoder.verified(st)
    assert packer is not None
    assert packer.position_offset == (1 if kind == "roberta" else 0)
    want = st.encode(TEXTS, convert_to_tensor=True)
    assert (_cos(packer.embed_texts(TEXTS), want) >= 0.99999).all()
