"""Rows with different adapters and the base model in one continuous batch: greedy outputs are
token-identical to peft's PeftModel running each adapter alone (`generate`, batch of one)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

from server.adapters import AdapterRef, MergeRecipe
from server.engine.request import collect
from tests.support.adapters import Reference, make_request

pytestmark = pytest.mark.model

PROMPTS = ["What is the capital of France?", "Write a haiku about autumn.", "What is 12 times 12?",
           "Name three primary colours.", "Say hello in Spanish."]


def _staggered(engine, reqs, seed: int = 0) -> None:
    """The first half submitted at once (one prefill, shared decode steps); then one at a time, each
    once the one before has its first token, so that each joins the running batch on its own."""
    rng = random.Random(seed)
    half = len(reqs) // 2
    for r in reqs[:half]:
        engine.submit(r)

    def feed() -> None:
        previous = reqs[half - 1]
        for r in reqs[half:]:
            while previous.stream.first_token_at is None and not previous.stream.closed.is_set():
                time.sleep(0.005)
            time.sleep(rng.random() * 0.05)
            engine.submit(r)
            previous = r

    t = threading.Thread(target=feed)
    t.start()
    t.join()


def _check(engine, reference: Reference, cases, reqs) -> None:
    eos, pad = engine.limits.eos_token_ids, engine.limits.pad_token_id
    mismatches, differs = [], {}
    for (ref_name, _), r in zip(cases, reqs, strict=True):
        got = collect(r, timeout=600)[0].token_ids
        n = r.params.max_new_tokens
        want = reference.generate(ref_name, r.input_ids, eos, pad, max_new_tokens=n)
        if got != want:
            mismatches.append((ref_name, engine.decode(want), engine.decode(got)))
        if ref_name is not None and not differs.get(ref_name):
            differs[ref_name] = want != reference.generate(None, r.input_ids, eos, pad, max_new_tokens=n)
    assert not mismatches
    # the test could fail: every adapter changes the base model's answer to some prompt
    assert all(differs.values()), differs


def test_every_adapter_and_the_base_in_one_batch(adapters_dir: Path, reference: Reference,
                                                 start_engine) -> None:
    engine = start_engine(adapters_dir=str(adapters_dir))
    cases = [(name, AdapterRef(name) if name else AdapterRef("base"))
             for name in (None, "adapter1", "adapter2", "adapter3")]
    cases = [c for c in cases for _ in PROMPTS]
    reqs = [make_request(engine, PROMPTS[i % len(PROMPTS)], ref) for i, (_, ref) in enumerate(cases)]
    order = list(range(len(reqs)))
    random.Random(1).shuffle(order)
    _staggered(engine, [reqs[i] for i in order])
    _check(engine, reference, cases, reqs)
    stats = engine.loop.stats
    assert stats.peak_rows >= 8 and stats.prefills >= 3, "requests never shared steps"
    assert stats.prefix_rows > 0, "no prefill reused a shared prefix"


def test_combined_is_the_default_and_matches_peft(adapters_dir: Path, reference: Reference,
                                                  start_engine) -> None:
    # Kaito: a strength from a variable named after the adapter (read by load_settings)
    engine = start_engine(adapters_dir=str(adapters_dir),
                          adapter_strengths={"adapter1": 0.5, "adapter3": 0.25})
    assert engine.adapters.default_name == "combined"
    assert [(a.name, a.strength) for a in engine.adapters.list()] == [
        ("combined", 1.0), ("adapter1", 0.5), ("adapter2", 1.0), ("adapter3", 0.25)]
    reference.merge("kaito", ["adapter1", "adapter2", "adapter3"], [0.5, 1.0, 0.25], "cat")
    cases = [("kaito", None), (None, AdapterRef("base")), ("adapter2", AdapterRef("adapter2"))] * 3
    reqs = [make_request(engine, PROMPTS[i % len(PROMPTS)], ref) for i, (_, ref) in enumerate(cases)]
    _staggered(engine, reqs, seed=2)
    _check(engine, reference, cases, reqs)


@pytest.mark.parametrize(("strategy", "density", "sign"), [
    ("linear", 1.0, "total"), ("ties", 0.5, "total"), ("dare_linear", 0.7, "total"),
    ("dare_ties", 0.5, "frequency")])
def test_merged_adapters_match_peft(adapters_dir: Path, reference: Reference, start_engine,
                                    strategy: str, density: float, sign: str) -> None:
    engine = start_engine(adapters_dir=str(adapters_dir), default_adapter="base")
    recipe = MergeRecipe(("adapter1", "adapter2"), (0.7, 0.6), strategy, density, sign)
    name = f"merge-{strategy}"
    reference.merge(name, ["adapter1", "adapter2"], [0.7, 0.6], strategy,
                    None if strategy == "linear" else density, sign)
    cases = [(name, AdapterRef(merge=recipe)), (None, None), ("adapter1", AdapterRef("adapter1"))] * 2
    reqs = [make_request(engine, PROMPTS[i % len(PROMPTS)], ref) for i, (_, ref) in enumerate(cases)]
    loaded_before = engine.adapters.loaded
    _staggered(engine, reqs, seed=3)
    _check(engine, reference, cases, reqs)
    assert engine.adapters.loaded == loaded_before + 1  # one merge, cached under its recipe


def test_the_exact_lane_honours_the_adapter(adapters_dir: Path, reference: Reference, start_engine) -> None:
    engine = start_engine(adapters_dir=str(adapters_dir), default_adapter="base")
    extra = (("num_beams", 2),)  # beam search: only exact `generate` runs it
    cases = [("adapter1", AdapterRef("adapter1")), (None, None), ("adapter3", AdapterRef("adapter3"))]
    reqs = [make_request(engine, PROMPTS[1], ref, max_new_tokens=10, extra=extra) for _, ref in cases]
    for r in reqs:
        engine.submit(r)
    eos, pad = engine.limits.eos_token_ids, engine.limits.pad_token_id
    got = [collect(r, timeout=600)[0].token_ids for r in reqs]
    want = [reference.generate(name, r.input_ids, eos, pad, max_new_tokens=10, num_beams=2)
            for (name, _), r in zip(cases, reqs, strict=True)]
    assert got == want
    assert len({tuple(w) for w in want}) == 3  # the adapters change the answer
    assert engine.loop.stats.exact_calls == 3  # one call per adapter: groups never mix adapters
