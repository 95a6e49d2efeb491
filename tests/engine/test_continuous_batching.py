"""Continuous batching on the embedded model (fp32, in-process): exactness, seeds, slots, budget."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from server.engine.errors import StreamError
from server.engine.request import FinishEvent, GenerationRequest, TokenEvent, collect
from tests.support.engine import generate_alone, request

pytestmark = pytest.mark.model

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "Water boils at a temperature of",
    "My favourite colour is blue because the sky and the sea are",
    "Translate to French: good morning",
    "A haiku about autumn leaves:",
    "import numpy as np\n",
    "The three primary colours are",
    "Q: What is 12 times 12?\nA:",
]


def _chat(loaded, text: str) -> str:
    return loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=False)


def _submit_staggered(loop, reqs: list[GenerationRequest], seed: int = 0, max_gap: float = 0.08) -> None:
    rng = random.Random(seed)

    def feed() -> None:
        for r in reqs:
            loop.submit(r)
            time.sleep(rng.random() * max_gap)

    t = threading.Thread(target=feed)
    t.start()
    t.join()


def test_greedy_matches_generate_alone_under_staggered_mixed_load(loaded, make_loop):
    reqs = []
    for i in range(32):
        prompt = PROMPTS[i % len(PROMPTS)]
        if i % 3 == 0:  # chat prompts end with EOS early: rows leave at different steps
            prompt = _chat(loaded, prompt)
        reqs.append(request(loaded, prompt, max_new_tokens=3 + (i * 5) % 11))
    # the first eight are queued before the loop starts (one group, so they share decode steps for
    # sure); the rest arrive at random times and join the running batch
    loop = make_loop(queued=reqs[:8], max_batch_size=8)
    _submit_staggered(loop, reqs[8:])
    results = [collect(r, timeout=600)[0] for r in reqs]

    assert loop.stats.peak_rows >= 4, "requests never shared a decode step"
    assert loop.stats.prefills >= 4, "no request joined a running batch"
    assert all(p == "batched" for p in loop.paths)
    mismatches = []
    for r, res in zip(reqs, results, strict=True):
        ref = generate_alone(loaded, r)
        if res.token_ids != ref:
            mismatches.append((r.id, ref, res.token_ids))
        expected = "eos" if ref and ref[-1] in loaded.eos_token_ids else "length"
        assert res.finish_reason == expected
    assert not mismatches


def test_shared_prefix_rows_match_generate_alone(loaded, make_loop):
    """Chat prompts share the template's system prompt: its keys/values are computed once and
    copied into new rows ([prefix][padding][suffix]); outputs stay token-identical, also when such
    rows share the batch with left-padded rows that have no prefix and rows leave at different steps."""
    loop = make_loop(max_batch_size=8)
    reqs = []
    for i in range(20):
        # suffixes of mixed length, some longer than the cache's spare columns
        more = " Tell me more." * (20 if i % 7 == 1 else i % 4)  # 80 tokens > GrowingLayer.HEADROOM
        prompt = _chat(loaded, PROMPTS[i % len(PROMPTS)] + more)
        if i % 5 == 4:
            prompt = PROMPTS[i % len(PROMPTS)]  # no shared prefix
        reqs.append(request(loaded, prompt, max_new_tokens=2 + (i * 7) % 13,
                            min_new_tokens=1 + i % 3))
    for r in reqs[:3]:  # arrive together: one group, its shared prefix computed once
        loop.submit(r)
    _submit_staggered(loop, reqs[3:], seed=3)
    results = [collect(r, timeout=600)[0] for r in reqs]
    assert loop.stats.prefix_rows >= 3, "the shared prefix was never used"
    assert loop.stats.prefills >= 3
    for r, res in zip(reqs, results, strict=True):
        assert res.token_ids == generate_alone(loaded, r), r.id

    plain = make_loop(max_batch_size=8, prefix_min_tokens=0)
    again = [request(loaded, _chat(loaded, p), max_new_tokens=4) for p in PROMPTS[:4]]
    for r in again:
        plain.submit(r)
    for r in again:
        collect(r, timeout=600)
    assert plain.stats.prefix_rows == 0


def test_penalties_and_min_tokens_match_generate(loaded, make_loop):
    loop = make_loop(max_batch_size=8)
    kinds = [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(min_new_tokens=12),
             dict(repetition_penalty=0.9, no_repeat_ngram_size=3)]
    reqs = [request(loaded, _chat(loaded, PROMPTS[i]) if i % 2 else PROMPTS[i], max_new_tokens=12,
                    **kinds[i % 4]) for i in range(8)]
    _submit_staggered(loop, reqs, max_gap=0.03)
    for r in reqs:
        assert collect(r, timeout=600)[0].token_ids == generate_alone(loaded, r)


def _sampled(loaded, seed: int | None) -> GenerationRequest:
    return request(loaded, _chat(loaded, "Write a short poem about the sea."), max_new_tokens=24,
                   do_sample=True, temperature=0.9, top_k=40, top_p=0.95, seed=seed)


def test_seeded_sample_is_the_same_alone_and_in_a_busy_batch(loaded, make_loop):
    loop = make_loop(max_batch_size=8)
    alone = _sampled(loaded, 1234)
    loop.submit(alone)
    alone_ids = collect(alone, timeout=600)[0].token_ids

    other_seed = _sampled(loaded, 99)
    busy: list[GenerationRequest] = [other_seed]
    for i in range(6):
        if i % 2:
            busy.append(request(loaded, PROMPTS[i], max_new_tokens=30))
        else:
            busy.append(request(loaded, PROMPTS[i], max_new_tokens=30, do_sample=True, temperature=1.3,
                                top_p=0.8, repetition_penalty=1.2))
    again = _sampled(loaded, 1234)
    busy_loop = make_loop(queued=busy[:4] + [again] + busy[4:], max_batch_size=8)  # one group of 8
    again_ids = collect(again, timeout=600)[0].token_ids
    busy_ids = [collect(r, timeout=600)[0].token_ids for r in busy]
    assert busy_loop.stats.peak_rows >= 4
    assert again_ids == alone_ids
    assert busy_ids[0] != alone_ids  # the seed matters


def test_cancelled_stream_frees_its_slot_within_a_step(loaded, make_loop):
    loop = make_loop(max_batch_size=1)
    hog = request(loaded, PROMPTS[2], max_new_tokens=400, min_new_tokens=400)
    waiting = request(loaded, PROMPTS[0], max_new_tokens=4)
    loop.submit(hog)
    events = hog.stream.events(timeout=600)
    first = next(events)
    assert isinstance(first, TokenEvent)
    loop.submit(waiting)
    more = [next(events) for _ in range(3)]  # three more steps of the hog (no sleep: its tokens)
    assert all(isinstance(e, TokenEvent) for e in more)
    assert not waiting.stream.closed.is_set()  # the slot is taken: it waits
    hog.stream.cancel()
    after = list(events)
    generated = 4 + sum(len(e.token_ids) for e in after if isinstance(e, TokenEvent))
    assert after[-1].reason == "cancelled"
    assert generated < 400
    assert collect(waiting, timeout=600)[0].finish_reason == "length"


def test_cancel_is_seen_at_the_next_step(loaded, make_loop):
    loop = make_loop(max_batch_size=4)
    hog = request(loaded, PROMPTS[2], max_new_tokens=400, min_new_tokens=400)
    loop.submit(hog)
    events = hog.stream.events(timeout=600)
    next(events)
    steps = loop.stats.steps
    hog.stream.cancel()
    rest = list(events)
    assert rest[-1].reason == "cancelled"
    assert loop.stats.steps - steps <= 2  # the step in flight, at most one more
    assert loop.running == 0


def test_token_budget_queues_a_flood_of_long_prompts(loaded, make_loop):
    long_prompt = " ".join(["The history of the city is long and full of surprises."] * 12)
    reqs = [request(loaded, long_prompt + f" Chapter {i}.", max_new_tokens=4) for i in range(6)]
    width = max(r.prompt_tokens for r in reqs) + 4
    budget = int(2.5 * width)  # room for two rows, not three
    loop = make_loop(max_batch_size=32, max_batch_tokens=budget)
    for r in reqs:
        loop.submit(r)
    for r in reqs:
        assert collect(r, timeout=600)[0].finish_reason == "length"
    assert loop.stats.peak_rows == 2  # batched, but only as many as the budget allows
    assert loop.stats.peak_tokens <= budget


def test_beam_search_takes_the_exact_generate_path(loaded, make_loop):
    loop = make_loop(max_batch_size=8)
    beams = request(loaded, PROMPTS[0], max_new_tokens=8, extra=(("num_beams", 3),))
    greedy = request(loaded, PROMPTS[1], max_new_tokens=8)
    loop.submit(beams)
    loop.submit(greedy)
    got = collect(beams, timeout=600)[0].token_ids
    collect(greedy, timeout=600)
    assert sorted(loop.paths) == ["batched", "exact"]
    ids = torch.tensor([beams.input_ids])
    with torch.inference_mode():
        ref = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3,
                                    do_sample=False, pad_token_id=loaded.pad_token_id)
    assert got == ref[0, ids.shape[1]:].tolist()


def test_exact_lane_streams_logprobs_before_the_finish_event(loaded, make_loop):
    """A streaming client reads up to the finish event: logprobs must not come after it."""
    loop = make_loop(max_batch_size=8)
    req = request(loaded, PROMPTS[0], max_new_tokens=6, logprobs=True, top_logprobs=2,
                  extra=(("bad_words_ids", [[13]]),))  # an option only exact generate honours
    loop.submit(req)
    events = list(req.stream.events(timeout=600))
    assert loop.paths == ["exact"]
    assert isinstance(events[-1], FinishEvent)
    tokens = [t for e in events if isinstance(e, TokenEvent) for t in e.token_ids]
    lps = [x for e in events if isinstance(e, TokenEvent) and e.logprobs for x in e.logprobs]
    assert len(tokens) == len(lps) > 0


def test_logprobs_stop_strings_and_several_sequences(loaded, make_loop):
    loop = make_loop(max_batch_size=8)
    lp = request(loaded, PROMPTS[0], max_new_tokens=5, logprobs=True, top_logprobs=3)
    stop = request(loaded, "Count: 1, 2, 3,", max_new_tokens=30, stop=(" 6",))
    many = request(loaded, PROMPTS[4], max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=7)
    for r in (lp, stop, many):
        loop.submit(r)
    res = collect(lp, timeout=600)[0]
    ids = torch.tensor([lp.input_ids])
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                    do_sample=False, output_logits=True, return_dict_in_generate=True,
                                    pad_token_id=loaded.pad_token_id)
    ref = [float(torch.log_softmax(step[0], -1)[t])
           for step, t in zip(out.logits, res.token_ids, strict=True)]
    assert res.logprobs == pytest.approx(ref, abs=1e-4)
    assert len(res.top_logprobs) == 5 and all(len(t) == 3 for t in res.top_logprobs)
    assert res.top_logprobs[0][0][0] == res.token_ids[0]  # greedy picks the most likely token

    s = collect(stop, timeout=600)[0]
    assert s.finish_reason == "stop"
    assert " 6" in loaded.tokenizer.decode(s.token_ids)
    seqs = collect(many, timeout=600)
    assert len(seqs) == 3 and all(len(q.token_ids) == 6 for q in seqs)
    assert len({tuple(q.token_ids) for q in seqs}) > 1


class _Flaky:
    """The real model, made to raise on demand (to prove a failed step fails only its requests)."""

    def __init__(self, model) -> None:
        self._model = model
        self.fail_when = lambda kwargs: False

    def __call__(self, **kwargs):
        if self.fail_when(kwargs):
            raise RuntimeError("injected failure")
        return self._model(**kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_a_failed_step_fails_only_its_requests(loaded, make_loop):
    loop = make_loop(max_batch_size=8)
    flaky = _Flaky(loaded.model)
    loop.runner.model = flaky
    running = request(loaded, PROMPTS[2], max_new_tokens=40, min_new_tokens=40)
    loop.submit(running)
    events = running.stream.events(timeout=600)
    next(events)
    # a prefill (several input columns) fails: the newcomer fails, the running row goes on
    flaky.fail_when = lambda kw: kw["input_ids"].shape[1] > 1
    newcomer = request(loaded, PROMPTS[0], max_new_tokens=4)
    loop.submit(newcomer)
    with pytest.raises(StreamError):
        collect(newcomer, timeout=600)
    flaky.fail_when = lambda kw: False
    rest = list(events)
    assert rest[-1].reason == "length"
    assert sum(len(e.token_ids) for e in rest if isinstance(e, TokenEvent)) == 39

    # a decode step fails: that step's rows fail; the loop keeps serving later requests
    victim = request(loaded, PROMPTS[3], max_new_tokens=40, min_new_tokens=40)
    loop.submit(victim)
    events = victim.stream.events(timeout=600)
    next(events)
    flaky.fail_when = lambda kw: kw["input_ids"].shape[1] == 1
    with pytest.raises(StreamError):
        list(events)
    flaky.fail_when = lambda kw: False
    after = request(loaded, PROMPTS[0], max_new_tokens=4)
    loop.submit(after)
    assert collect(after, timeout=600)[0].token_ids == generate_alone(loaded, after)
    assert loop.alive


def test_a_broken_distribution_fails_only_its_row(loaded, make_loop):
    """A temperature so small that the logits overflow is the request's fault (a client error);
    its neighbours in the same batch finish normally."""
    loop = make_loop(max_batch_size=8, window_s=0.05)
    good = [request(loaded, f"Count: {i},", max_new_tokens=6) for i in range(3)]
    bad = request(loaded, "Hello", max_new_tokens=6, do_sample=True, temperature=1e-45, seed=1)
    for r in [*good[:2], bad, good[2]]:
        loop.submit(r)
    with pytest.raises(StreamError) as err:
        collect(bad, timeout=120)
    assert err.value.client_error and "distribution" in str(err.value)
    for r in good:
        assert collect(r, timeout=120)[0].finish_reason in ("length", "eos")
    assert loop.alive


def test_a_flood_is_prefilled_in_bounded_steps(loaded, make_loop):
    """No single prefill exceeds MAX_PREFILL_TOKENS (padded), yet every request is answered."""
    loop = make_loop(max_batch_size=16, window_s=0.05, max_prefill_tokens=64)
    reqs = [request(loaded, "word " * 20 + str(i), max_new_tokens=3) for i in range(6)]
    for r in reqs:
        loop.submit(r)
    for r in reqs:
        assert collect(r, timeout=120)[0].finish_reason in ("length", "eos")
    assert loop.stats.prefills >= 3  # about 22 tokens each: at most two per 64-token prefill
