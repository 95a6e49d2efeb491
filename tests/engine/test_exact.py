"""The exact lane ends sequences as the batched path does, on a tiny random Llama with a
SentencePiece-style tokenizer: a stop string that begins with a space, across a token boundary; and
on both lanes the engine's text (decoded once, with the request's options) is what a full decode
gives, cut at the stop string or ending with it."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from server.config import Settings
from server.engine.request import FinishEvent, TextOptions, TokenEvent, collect
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


def _run(loaded, text: TextOptions = TextOptions(), **kw) -> tuple[list[int], str | None, list[str], str]:
    loop = build_loop(loaded)
    loop.start()
    try:
        r = request(loaded, " the big red sun", max_new_tokens=10, min_new_tokens=10, **kw)
        r.text_options = text
        loop.submit(r)
        seq = collect(r, timeout=120)[0]
        return seq.token_ids, seq.finish_reason, loop.paths, seq.text
    finally:
        loop.stop(30)


def _stop_after_a_few_tokens(loaded) -> tuple[str, list[int]]:
    """A stop string beginning with a space that the greedy output reaches, and the tokens up to it."""
    tokens = _run(loaded)[0]
    words = len(SPECIAL)
    # the first generated word after the first token that did not come before: " word" ends there
    i = next(k for k in range(1, len(tokens)) if tokens[k] >= words and tokens[k] not in tokens[1:k])
    return " " + loaded.tokenizer.decode([tokens[i]]), tokens[: i + 1]


def test_exact_lane_matches_a_stop_string_with_a_space_like_the_batched_path(tiny) -> None:
    tokens, reason, _, _ = _run(tiny)
    assert reason == "length" and len(tokens) == 10
    stop, expected = _stop_after_a_few_tokens(tiny)
    # decoding token by token (the old exact-lane check) never sees that space
    assert stop not in "".join(tiny.tokenizer.decode([t]) for t in expected)

    batched = _run(tiny, stop=(stop,))
    exact = _run(tiny, stop=(stop,), extra=(("remove_invalid_values", True),))
    assert batched[2] == ["batched"] and exact[2] == ["exact"]
    assert batched[:2] == (expected, "stop")
    assert exact[:2] == (expected, "stop")


@pytest.mark.parametrize("lane", [(), (("remove_invalid_values", True),), (("num_beams", 2),)],
                         ids=["batched", "exact", "beams"])
def test_the_engine_sends_the_text_once_decoded_cut_or_kept_at_the_stop_string(tiny, lane) -> None:
    """The text arrives with the tokens (what the API renders): the token events' texts and the
    finish event's held-back tail add up to the full decode with the request's options."""
    stop, expected = _stop_after_a_few_tokens(tiny)
    full = tiny.tokenizer.decode(expected)
    cut = full[: full.index(stop)]
    for options, want in ((TextOptions(), cut), (TextOptions(strip_stop=False), full)):
        tokens, reason, _, text = _run(tiny, options, stop=(stop,), extra=lane)
        if lane and lane[0][0] == "num_beams":  # beams: all tokens at the end, the stop found after
            want = cut if options.strip_stop else tiny.tokenizer.decode(tokens)
        else:
            assert tokens == expected
        assert (text, reason) == (want, "stop")

    loop = build_loop(tiny)
    loop.start()
    try:
        r = request(tiny, " the big red sun", max_new_tokens=10, min_new_tokens=10, stop=(stop,), extra=lane)
        loop.submit(r)
        assert r.stream.closed.wait(120)
        events = list(r.stream.events(timeout=1))
    finally:
        loop.stop(30)
    streamed = "".join(e.text for e in events if isinstance(e, TokenEvent | FinishEvent))
    assert streamed == cut
    assert isinstance(events[-1], FinishEvent) and events[-1].reason == "stop"
