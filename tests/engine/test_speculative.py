"""Speculative decoding from the prompt: the n-gram drafter, and greedy outputs token-identical with
and without drafts (alone, in mixed batches, with stop strings, token limits inside a draft and
streaming), on the embedded model in fp32, in-process."""

from __future__ import annotations

import pytest

from server.engine.constraint_mask import MaskApplier
from server.engine.grammar import ConstraintSpec, Grammars
from server.engine.request import GenerationRequest, TokenEvent, collect
from server.engine.speculative import NgramDrafter
from tests.support.engine import generate_alone, params

PARA = ("The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of "
        "storms. Every evening the keeper climbed the spiral stairs, trimmed the wick, and watched the "
        "ships pass safely through the narrow channel below.")
GROUNDED = ["Repeat this paragraph exactly, but change the word 'white' to 'red':\n\n" + PARA,
            "Summarize this text in one sentence:\n\n" + PARA,
            "Copy the first sentence of this text:\n\n" + PARA]


def test_drafts_continue_the_latest_earlier_occurrence():
    d = NgramDrafter([1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 7, 1, 2], k=3, max_ngram=2)
    assert d.draft(10) == [3, 5, 6]  # [1, 2] last seen before at 5..6: what followed it
    d.append(3)
    assert d.draft(10) == [5, 6, 7]  # the 2-gram [2, 3] wins over the 1-gram [3]
    assert d.draft(2) == [5, 6]  # never past the token limit
    d.append(42)
    assert d.draft(10) == []  # nothing seen before
    assert NgramDrafter([7], k=4, max_ngram=3).draft(5) == []


def test_draft_length_adapts():
    d = NgramDrafter([1, 2, 3, 1, 2], k=8, max_ngram=2)
    d.feedback(8, 2)
    assert d.length == 7
    for _ in range(10):
        d.feedback(3, 0)
    assert d.length == 1
    d.feedback(1, 1)
    assert d.length == 3
    d.feedback(0, 0)  # no draft: no change
    assert d.length == 3



def _chat(loaded, text: str) -> list[int]:
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=False)
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def _req(loaded, prompt: str, k: int, **kw) -> GenerationRequest:
    kw.setdefault("max_new_tokens", 40)
    return GenerationRequest(_chat(loaded, prompt), params(loaded, draft_tokens=k, **kw))


@pytest.mark.model
def test_greedy_is_token_identical_alone_and_speeds_up(loaded, make_loop):
    for prompt in GROUNDED:
        plain, drafted = _req(loaded, prompt, 0), _req(loaded, prompt, 8)
        loop = make_loop([drafted])
        out = collect(drafted, 120)[0].token_ids
        assert out == generate_alone(loaded, plain)
        assert loop.stats.steps < len(out) - 1  # several tokens a step


@pytest.mark.model
def test_mixed_batches_keep_every_row_exact(loaded, make_loop):
    grammars = Grammars(loaded.tokenizer, int(loaded.model.config.vocab_size), loaded.eos_token_ids)
    masks = MaskApplier(grammars.vocab_size, loaded.eos_token_ids)
    drafting = [_req(loaded, p, 6) for p in GROUNDED]
    penalised = _req(loaded, GROUNDED[0], 6, repetition_penalty=1.3)  # processors see each token
    short = _req(loaded, GROUNDED[2], 8, max_new_tokens=5)  # the limit falls inside a draft
    sampled = _req(loaded, GROUNDED[1], 6, do_sample=True, seed=5)  # sampled rows don't draft
    constrained = _req(loaded, GROUNDED[1], 6)
    constrained.constraint = grammars.compile(ConstraintSpec("regex", "[A-Z][a-z ]{10,60}\\."))
    plain = _req(loaded, "Say hello.", 0, max_new_tokens=12)
    batch = drafting + [penalised, short, sampled, constrained, plain]
    make_loop(batch, masks=masks)
    out = [collect(r, 300)[0].token_ids for r in batch]
    for r, o in zip(drafting + [penalised, short, plain], out[:5] + out[-1:], strict=True):
        assert o == generate_alone(loaded, r, repetition_penalty=r.params.repetition_penalty)
    assert len(out[4]) == 5
    assert out[5]  # a sampled row decodes one token a step beside the drafting rows
    # the constrained greedy row is what it is alone, without drafting neighbours
    again = _req(loaded, GROUNDED[1], 0)
    again.constraint = constrained.constraint
    make_loop([again], masks=masks)
    assert collect(again, 300)[0].token_ids == out[6]


@pytest.mark.model
def test_stop_strings_and_streaming_see_one_token_at_a_time(loaded, make_loop):
    stop = "spiral"
    plain, drafted = _req(loaded, GROUNDED[0], 0, stop=(stop,)), _req(loaded, GROUNDED[0], 8, stop=(stop,))
    make_loop([plain])
    ref = collect(plain, 120)[0]
    make_loop([drafted])
    events = list(drafted.stream.events(timeout=120))
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert all(len(e.token_ids) == 1 for e in tokens)  # streamed one token per event
    assert [t for e in tokens for t in e.token_ids] == ref.token_ids
    assert events[-1].reason == ref.finish_reason == "stop"
    assert stop in loaded.tokenizer.decode(ref.token_ids)


@pytest.mark.model
def test_the_metrics_hook_counts_drafts(loaded, make_loop):
    seen: list[tuple[int, int]] = []
    loop = make_loop()
    loop.runner.on_draft = lambda d, a: seen.append((d, a))
    req = _req(loaded, GROUNDED[0], 8)
    loop.submit(req)
    out = collect(req, 120)[0].token_ids
    drafted = sum(d for d, _ in seen)
    accepted = sum(a for _, a in seen)
    assert 0 < accepted <= drafted
    assert loop.stats.steps + accepted == len(out) - 1  # every step one token, plus the accepted
