"""The exact lane ends sequences as the batched path does, on a tiny random Llama with a
SentencePiece-style tokenizer: a stop string that begins with a space, across a token boundary."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from server.config import Settings
from server.engine.request import collect
from server.model import loader
from tests.support.engine import build_loop, request
from tests.support.sentencepiece_like import SPECIAL, WORDS, build

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> loader.LoadedModel:
    folder = tmp_path_factory.mktemp("tiny-llama-sp")
    tok = build(folder)
    config = LlamaConfig(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    return loader.load(Settings(model_path=str(folder), torch_dtype="float32", device_map="cpu"))


def _run(loaded, **kw) -> tuple[list[int], str | None, list[str]]:
    loop = build_loop(loaded)
    loop.start()
    try:
        r = request(loaded, " the big red sun", max_new_tokens=10, min_new_tokens=10, **kw)
        loop.submit(r)
        seq = collect(r, timeout=120)[0]
        return seq.token_ids, seq.finish_reason, loop.paths
    finally:
        loop.stop(30)


def test_exact_lane_matches_a_stop_string_with_a_space_like_the_batched_path(tiny) -> None:
    tokens, reason, _ = _run(tiny)
    assert reason == "length" and len(tokens) == 10
    words = len(SPECIAL)
    # the first generated word after the first token that did not come before: " word" ends there
    i = next(k for k in range(1, len(tokens)) if tokens[k] >= words and tokens[k] not in tokens[1:k])
    stop = " " + tiny.tokenizer.decode([tokens[i]])
    expected = tokens[: i + 1]
    # decoding token by token (the old exact-lane check) never sees that space
    assert stop not in "".join(tiny.tokenizer.decode([t]) for t in expected)

    batched = _run(tiny, stop=(stop,))
    exact = _run(tiny, stop=(stop,), extra=(("remove_invalid_values", True),))
    assert batched[2] == ["batched"] and exact[2] == ["exact"]
    assert batched[:2] == (expected, "stop")
    assert exact[:2] == (expected, "stop")
