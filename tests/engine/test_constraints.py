"""Output constraints in the engine (the embedded model, fp32, in-process): enforcement, exactness
inside busy batches, the exact lane, limits and failures."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import llguidance
import pytest
import torch

from server.engine.constraint_mask import MaskApplier
from server.engine.errors import InvalidConstraint, StreamError
from server.engine.grammar import ConstraintSpec, GrammarLimits, Grammars
from server.engine.request import GenerationRequest, collect
from server.engine.sampling import RowSampler, choose
from tests.support.engine import generate_alone, params

pytestmark = pytest.mark.model

PET = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                   "kind": {"enum": ["cat", "dog", "bird"]}},
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
}
PROMPTS = ["Describe a pet as JSON.", "Tell me about a cat.", "What is the capital of France?",
           "Write a haiku about the sea.", "Count from one to ten.", "Say hello."]


@pytest.fixture(scope="module")
def grammars(loaded) -> Grammars:
    vocab = int(loaded.model.config.vocab_size)
    return Grammars(loaded.tokenizer, vocab, loaded.eos_token_ids)


@pytest.fixture(scope="module")
def masks(grammars, loaded) -> MaskApplier:
    return MaskApplier(grammars.vocab_size, loaded.eos_token_ids)


def _chat(loaded, text: str) -> list[int]:
    text = loaded.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                add_generation_prompt=True, tokenize=False)
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def _req(loaded, grammars, prompt: str, spec: ConstraintSpec | None = None, **kw) -> GenerationRequest:
    kw.setdefault("max_new_tokens", 48)
    constraint = grammars.compile(spec) if spec is not None else None
    return GenerationRequest(_chat(loaded, prompt), params(loaded, **kw), constraint=constraint)


def _text(loaded, ids: list[int]) -> str:
    return loaded.tokenizer.decode(ids, skip_special_tokens=True)


def _run(loop, reqs: list[GenerationRequest]) -> list:
    return [collect(r, 120)[0] for r in reqs]


def test_each_kind_is_enforced_in_one_batch(loaded, grammars, masks, make_loop):
    specs = [
        ConstraintSpec("json_schema", PET),
        ConstraintSpec("json_object"),
        ConstraintSpec("regex", r"[0-9]{3}-[A-Z]{2}"),
        ConstraintSpec("choice", ["yes", "no", "maybe"]),
        ConstraintSpec("grammar", 'start: "The answer is " NUMBER "."\nNUMBER: /[1-9][0-9]?/'),
        ConstraintSpec("grammar", 'root ::= "colour: " ("red" | "green" | "blue")'),  # GBNF
    ]
    reqs = [_req(loaded, grammars, PROMPTS[i % 2], s) for i, s in enumerate(specs)]
    free = _req(loaded, grammars, PROMPTS[2])
    out = _run(make_loop(reqs + [free], masks=masks), reqs + [free])
    texts = [_text(loaded, o.token_ids) for o in out]
    assert all(o.finish_reason == "eos" for o in out[:-1]), [o.finish_reason for o in out]
    jsonschema.validate(json.loads(texts[0]), PET)
    assert isinstance(json.loads(texts[1]), dict)
    assert re.fullmatch(r"[0-9]{3}-[A-Z]{2}", texts[2])
    assert texts[3] in ("yes", "no", "maybe")
    assert re.fullmatch(r"The answer is [1-9][0-9]?\.", texts[4])
    assert texts[5] in ("colour: red", "colour: green", "colour: blue")
    assert texts[6] and not texts[6].startswith("{")  # the unconstrained neighbour is free text


def test_greedy_constrained_rows_are_the_same_alone_and_in_a_busy_batch(loaded, grammars, masks, make_loop):
    spec = ConstraintSpec("json_schema", PET)
    alone = _req(loaded, grammars, PROMPTS[0], spec)
    [ref] = _run(make_loop([alone], masks=masks), [alone])

    busy = [_req(loaded, grammars, PROMPTS[0], spec)]
    busy += [_req(loaded, grammars, p, max_new_tokens=12 + 5 * i) for i, p in enumerate(PROMPTS[1:])]
    busy += [_req(loaded, grammars, p, ConstraintSpec("json_object"), do_sample=True, seed=7)
             for p in PROMPTS[:3]]
    busy += [_req(loaded, grammars, PROMPTS[1], ConstraintSpec("regex", r"[a-z ]{5,30}\."))]
    out = _run(make_loop(busy, masks=masks), busy)
    assert out[0].token_ids == ref.token_ids
    # the unconstrained greedy neighbours stay token-identical to bare `generate` alone
    for r, o in zip(busy[1:len(PROMPTS)], out[1:len(PROMPTS)], strict=True):
        assert o.token_ids == generate_alone(loaded, r)


def test_length_cut_and_exact_lane(loaded, grammars, masks, make_loop):
    spec = ConstraintSpec("json_schema", PET)
    short = _req(loaded, grammars, PROMPTS[0], spec, max_new_tokens=4)
    beams = _req(loaded, grammars, PROMPTS[0], spec, extra=(("num_beams", 2),))
    sampled_n = _req(loaded, grammars, PROMPTS[0], spec, do_sample=True, seed=3, num_return_sequences=2)
    loop = make_loop([short, beams, sampled_n], masks=masks)
    cut = collect(short, 120)[0]
    assert cut.finish_reason == "length" and len(cut.token_ids) == 4
    assert _text(loaded, cut.token_ids).startswith('{"')
    exact = collect(beams, 120)[0]
    assert exact.finish_reason == "eos"
    jsonschema.validate(json.loads(_text(loaded, exact.token_ids)), PET)
    assert "exact" in loop.paths
    for seq in collect(sampled_n, 120):  # each returned sequence has its own matcher
        jsonschema.validate(json.loads(_text(loaded, seq.token_ids)), PET)


def test_min_new_tokens_does_not_fight_a_finished_constraint(loaded, grammars, masks, make_loop):
    req = _req(loaded, grammars, PROMPTS[3], ConstraintSpec("choice", ["yes", "no"]), min_new_tokens=5)
    [out] = _run(make_loop([req], masks=masks), [req])
    assert _text(loaded, out.token_ids) in ("yes", "no") and out.finish_reason == "eos"


def test_a_satisfied_constraint_allows_only_eos(loaded, grammars, masks):
    done = grammars.compile(ConstraintSpec("choice", ["yes"])).matcher()
    assert done.consume_tokens(loaded.tokenizer("yes", add_special_tokens=False)["input_ids"])
    rows = [RowSampler(params(loaded, max_new_tokens=4), [1, 2], 0, loaded.device, done),
            RowSampler(params(loaded, max_new_tokens=4), [1, 2], 0, loaded.device)]
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([[1, 2], [1, 2]])).logits[:, -1]
        choice = choose(logits, rows, [-1, -1], masks)
    assert choice.tokens[0] in loaded.eos_token_ids and choice.tokens[1] not in loaded.eos_token_ids
    assert choice.dead_ends == [] and choice.mask_seconds is not None


def test_own_eos_ids_get_the_permission(loaded, grammars, masks, make_loop):
    own = 13  # a request naming its own eos_token_id ends there once the constraint is satisfied
    req = _req(loaded, grammars, PROMPTS[3], ConstraintSpec("choice", ["yes", "no"]), eos_token_ids=(own,))
    [out] = _run(make_loop([req], masks=masks), [req])
    assert out.finish_reason == "eos" and out.token_ids[-1] == own


def test_bad_constraints_are_refused_before_queueing(loaded, grammars):
    bad = [
        ConstraintSpec("json_schema", {"type": "foo"}),
        ConstraintSpec("json_schema", {"not": {"type": "string"}}),  # cannot be enforced: refused
        ConstraintSpec("json_schema", {"type": "string", "format": "no-such-format"}),
        ConstraintSpec("regex", "a(b"),
        ConstraintSpec("grammar", "start: undefined_rule"),
        ConstraintSpec("choice", []),
        ConstraintSpec("json_schema", "not a dict"),
    ]
    for spec in bad:
        with pytest.raises(InvalidConstraint):
            grammars.compile(spec)


def test_limits_and_cache(loaded):
    small = Grammars(loaded.tokenizer, int(loaded.model.config.vocab_size), loaded.eos_token_ids,
                     GrammarLimits(max_bytes=200, cache_size=2))
    big = {"enum": [f"value number {i}" for i in range(50)]}
    with pytest.raises(InvalidConstraint, match="MAX_GRAMMAR_BYTES"):
        small.compile(ConstraintSpec("json_schema", big))
    first = small.compile(ConstraintSpec("regex", "a+"))
    again = small.compile(ConstraintSpec("regex", "a+"))
    assert small.cached == 1 and first.matcher() is not again.matcher()
    small.compile(ConstraintSpec("regex", "b+"))
    small.compile(ConstraintSpec("regex", "c+"))
    assert small.cached == 2  # least recently used dropped
    held = threading.Event()  # a compile that cannot finish before the timeout: held until after it

    def held_back(*args, **kwargs):
        held.wait(10)
        return llguidance.LLMatcher(*args, **kwargs)

    slow = Grammars(loaded.tokenizer, int(loaded.model.config.vocab_size), loaded.eos_token_ids,
                    GrammarLimits(compile_timeout_s=0.05), matcher=held_back)
    with pytest.raises(InvalidConstraint, match="GRAMMAR_COMPILE_TIMEOUT_S"):
        slow.compile(ConstraintSpec("json_schema", PET))
    held.set()


def test_without_masks_a_constrained_request_fails_alone(loaded, grammars, make_loop):
    """A runner without a MaskApplier (a tokenizer llguidance can't take) fails the constrained
    request, never its neighbours."""
    bad = _req(loaded, grammars, PROMPTS[0], ConstraintSpec("regex", "a+"), extra=(("num_beams", 2),))
    free = _req(loaded, grammars, PROMPTS[2], max_new_tokens=10)
    make_loop([bad, free])
    with pytest.raises(StreamError) as err:
        collect(bad, 120)
    assert err.value.client_error
    assert collect(free, 120)[0].token_ids == generate_alone(loaded, free)
