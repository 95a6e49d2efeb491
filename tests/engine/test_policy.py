"""The scheduling policy on its own: plans built with no model, no thread and no sleeps (the clock
is a variable). Each test makes its own policy and requests."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from server.engine.errors import QueueFull
from server.engine.policy import Policy, PolicyLimits
from server.engine.request import FinishEvent, GenerationParams, GenerationRequest, TokenEvent
from server.engine.step import Sampled, Step, StepOutput
from server.engine.stops import StopChecker

EOS = 0


class CharTokenizer:
    """Token id n is the character chr(n) (id 0 is EOS and decodes to nothing)."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_policy(clock: Clock | None = None, **limits) -> tuple[Policy, list[str]]:
    paths: list[str] = []
    policy = Policy(PolicyLimits(**limits),
                    text_checker=lambda r: StopChecker(CharTokenizer(), r.params.stop, r.text_options),
                    clock=clock or Clock(), on_path=paths.append)
    return policy, paths


def req(prompt: int | list[int] = 4, max_new: int = 8, deadline: float | None = None,
        **kw) -> GenerationRequest:
    ids = list(range(1, prompt + 1)) if isinstance(prompt, int) else prompt
    return GenerationRequest(ids, GenerationParams(max_new_tokens=max_new, eos_token_ids=(EOS,), **kw),
                             deadline=deadline)


def out_for(plan: Step, token: int = ord("a")) -> StepOutput:
    """What a runner would hand back: the same token for every row of the plan."""
    return StepOutput(sampled=[Sampled(seq, token) for seq in plan.rows])


def step(policy: Policy, token: int = ord("a")) -> Step:
    plan = policy.schedule()
    policy.update(plan, out_for(plan, token))
    return plan


def events(r: GenerationRequest) -> list:
    return list(r.stream.events(timeout=0))


def test_fifo_admission_up_to_the_batch_size_then_decode() -> None:
    policy, paths = make_policy(max_batch_size=3)
    reqs = [req() for _ in range(5)]
    for r in reqs:
        policy.add(r)
    plan = step(policy)
    assert plan.kind == "prefill"
    assert [s.request for s in plan.rows] == reqs[:3]
    plan = step(policy)
    assert plan.kind == "decode" and [s.request for s in plan.rows] == reqs[:3]
    plan = step(policy)  # no free row: the waiting two stay queued
    assert plan.kind == "decode" and policy.queue_depth == 2
    assert paths == ["batched"] * 3


def test_a_prefill_is_always_followed_by_a_decode_of_the_running_rows() -> None:
    policy, _ = make_policy(max_batch_size=8, max_prefill_tokens=8)
    for _ in range(4):
        policy.add(req(prompt=4))
    kinds = [step(policy).kind for _ in range(6)]
    # two prompts of 4 fill one prefill; the running rows decode in between the prefills
    assert kinds == ["prefill", "decode", "prefill", "decode", "decode", "decode"]


def test_token_budget_counts_padding_and_keeps_fifo() -> None:
    policy, _ = make_policy(max_batch_tokens=50)  # prompt 10 + 10 new = 20 per row: two rows fit
    big = [req(prompt=10, max_new=10) for _ in range(3)]
    small = req(prompt=1, max_new=1)
    for r in [*big, small]:
        policy.add(r)
    plan = step(policy)
    assert [s.request for s in plan.rows] == big[:2]
    step(policy)
    assert policy.stats.peak_tokens <= 50
    assert list(policy.waiting) == [big[2], small]  # the small one waits behind the head


def test_prefill_tokens_bound_splits_a_flood_into_groups() -> None:
    policy, _ = make_policy(max_prefill_tokens=64)
    reqs = [req(prompt=22, max_new=2) for _ in range(6)]
    for r in reqs:
        policy.add(r)
    groups = []
    while policy.has_work:
        plan = step(policy)
        if plan.kind == "prefill":
            groups.append(len(plan.rows))
    assert groups == [2, 2, 2]
    assert all(isinstance(events(r)[-1], FinishEvent) for r in reqs)


def test_tokens_are_streamed_and_rows_end_on_eos_length_and_stop_strings() -> None:
    policy, _ = make_policy()
    eos = req(max_new=8)
    length = req(max_new=2)
    stop = req(max_new=8, stop=("ab",))
    for r in (eos, length, stop):
        policy.add(r)
    plan = policy.schedule()
    tokens = {id(eos): EOS, id(length): ord("x"), id(stop): ord("a")}
    policy.update(plan, StepOutput([Sampled(s, tokens[id(s.request)]) for s in plan.rows]))
    plan = step(policy, ord("b"))
    assert plan.kind == "decode" and [s.request for s in plan.rows] == [length, stop]
    assert [e.reason for e in events(eos) if isinstance(e, FinishEvent)] == ["eos"]
    got = events(length)
    assert [e.token_ids for e in got if isinstance(e, TokenEvent)] == [[ord("x")], [ord("b")]]
    assert got[-1].reason == "length"
    assert policy.running == []
    nxt = policy.schedule()
    assert nxt.kind == "idle" and len(nxt.drop) == 2  # the runner frees both rows
    assert [e.reason for e in events(stop) if isinstance(e, FinishEvent)] == ["stop"]


def test_min_new_tokens_ignores_an_early_eos() -> None:
    policy, _ = make_policy()
    r = req(max_new=5, min_new_tokens=2)
    policy.add(r)
    step(policy, EOS)
    assert policy.running  # one token: EOS does not end it yet
    step(policy, EOS)
    assert not policy.running
    assert [e.reason for e in events(r) if isinstance(e, FinishEvent)] == ["eos"]


def test_cancelled_rows_end_before_the_next_step_and_queued_ones_never_run() -> None:
    policy, _ = make_policy(max_batch_size=1)
    running, queued = req(max_new=100), req(max_new=100)
    policy.add(running)
    policy.add(queued)
    step(policy)
    queued.stream.cancel()
    running.stream.cancel()
    plan = policy.schedule()
    assert [s.request for s in plan.drop] == [running]
    assert plan.kind == "idle" and not plan.rows  # the cancelled queued one is not prefilled
    assert events(running)[-1].reason == "cancelled"
    assert [type(e) for e in events(queued)] == [FinishEvent] and policy.queue_depth == 0


def test_deadlines_end_running_and_queued_requests() -> None:
    clock = Clock()
    policy, _ = make_policy(clock, max_batch_size=1)
    running = req(max_new=100, deadline=clock.now + 5)
    queued = req(max_new=100, deadline=clock.now + 5)
    policy.add(running)
    policy.add(queued)
    step(policy)
    step(policy)
    clock.now += 10
    plan = policy.schedule()
    assert plan.kind == "idle" and [s.request for s in plan.drop] == [running]
    assert events(running)[-1].reason == "timeout"
    assert events(queued)[-1].reason == "timeout"


def test_requests_the_batch_cannot_reproduce_go_to_the_exact_lane_in_groups() -> None:
    policy, paths = make_policy()
    beams = [req(extra=(("num_beams", 3),)) for _ in range(2)]
    other = req(extra=(("num_beams", 2),))
    plain = req()
    for r in [beams[0], plain, beams[1], other]:
        policy.add(r)
    plan = step(policy)
    assert plan.kind == "exact" and plan.exact == beams  # equal parameters share one call
    assert policy.active == 0
    plan = step(policy)
    assert plan.kind == "exact" and plan.exact == [other]
    plan = step(policy)
    assert plan.kind == "prefill" and [s.request for s in plan.rows] == [plain]
    assert sorted(paths) == ["batched", "exact", "exact", "exact"]


def test_greedy_with_several_sequences_and_unproven_models_go_exact() -> None:
    policy, _ = make_policy()
    policy.add(req(num_return_sequences=2))
    assert policy.schedule().kind == "exact"
    no_batching = Policy(batching=False)
    no_batching.add(req())
    assert no_batching.schedule().kind == "exact"


def test_prompts_sharing_a_prefix_are_prefilled_on_top_of_it() -> None:
    policy, _ = make_policy(prefix_min_tokens=16, prefix_slots=2)
    system = list(range(100, 120))  # 20 shared tokens
    group = [req(system + [1, 2]), req(system + [3]), req(system + [4, 5, 6])]
    for r in group:
        policy.add(r)
    plan = step(policy)
    assert plan.prefix == tuple(system) and plan.prefixes == ((None, tuple(system)),)
    assert policy.stats.prefix_rows == 3
    policy.add(req(system + [7]))  # a later lone prompt reuses the kept prefix
    step(policy)  # decode
    assert step(policy).prefix == tuple(system)
    short = make_policy(prefix_min_tokens=32)[0]
    for r in [req(system + [1]), req(system + [2])]:
        short.add(r)
    assert short.schedule().prefix is None  # 20 shared tokens < 32
    off = make_policy(prefix_min_tokens=0)[0]
    for r in [req(system + [1]), req(system + [2])]:
        off.add(r)
    assert off.schedule().prefix is None


def test_kept_prefixes_are_the_most_recently_used() -> None:
    policy, _ = make_policy(prefix_min_tokens=4, prefix_slots=2, max_batch_size=64)
    heads = [list(range(k * 10 + 1, k * 10 + 9)) for k in range(3)]
    for h in heads:
        policy.add(req(h + [200]))
        policy.add(req(h + [201]))
        while policy.waiting:
            step(policy)
    assert policy.schedule().prefixes == ((None, tuple(heads[1])), (None, tuple(heads[2])))


def test_failed_requests_get_an_error_and_leave_the_batch() -> None:
    policy, _ = make_policy()
    bad, good = req(max_new=5, num_return_sequences=2, do_sample=True), req(max_new=5)
    policy.add(bad)
    policy.add(good)
    plan = policy.schedule()
    policy.update(plan, StepOutput([Sampled(s, ord("a")) for s in plan.rows if s.request is good],
                                   failed=[(bad, ValueError("broken distribution"))]))
    assert [s.request for s in policy.running] == [good]
    assert len(policy.schedule().drop) == 2  # both sequences of the failed request
    with pytest.raises(Exception, match="broken distribution") as err:
        events(bad)
    assert err.value.client_error


def test_a_full_queue_refuses_new_requests() -> None:
    policy, _ = make_policy(max_queued=2)
    policy.add(req())
    policy.add(req())
    with pytest.raises(QueueFull):
        policy.add(req())


def test_the_policy_module_imports_neither_torch_nor_threading() -> None:
    source = Path(__file__).parents[2] / "server" / "engine" / "policy.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert not names & {"torch", "threading", "transformers"}
    code = "import sys, server.engine.policy; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_a_failed_step_fails_the_running_rows_and_the_newcomers() -> None:
    policy, _ = make_policy(max_prefill_tokens=4)
    running, newcomer = req(), req()
    policy.add(running)
    step(policy)
    policy.add(newcomer)
    step(policy)  # decode
    plan = policy.schedule()
    assert plan.kind == "prefill" and [s.request for s in plan.rows] == [newcomer]
    policy.fail_step(plan, RuntimeError("bookkeeping bug"))
    for r in (running, newcomer):
        with pytest.raises(Exception, match="generation failed"):
            events(r)
    assert not policy.running
    assert len(policy.schedule().drop) == 2  # the runner frees both


def test_a_cancelled_exact_request_never_runs() -> None:
    policy, _ = make_policy()
    beams = req(extra=(("num_beams", 2),))
    policy.add(beams)
    beams.stream.cancel()
    assert policy.schedule().kind == "idle"
    assert events(beams)[-1].reason == "cancelled" and policy.stats.exact_calls == 0


def _on(adapter: str | None, r: GenerationRequest) -> GenerationRequest:
    r.adapter_key = adapter  # what Engine.submit sets from the request's AdapterRef
    return r


def test_prefixes_are_kept_per_adapter() -> None:
    """The same prefix is kept once per adapter (the runner computes each adapter's own keys and
    values for it), in `prefix_slots` per adapter, also for a group that mixes adapters."""
    policy, _ = make_policy(prefix_min_tokens=16, prefix_slots=1, max_batch_size=64)
    system = list(range(100, 120))
    other = list(range(200, 220))
    policy.add(_on("a", req(system + [1])))
    policy.add(_on("a", req(system + [2])))
    plan = step(policy)
    assert plan.prefix == tuple(system) and plan.prefixes == (("a", tuple(system)),)
    policy.add(_on("b", req(system + [3])))  # a lone prompt on `b`: the kept prefix, under `b` too
    step(policy)
    plan = step(policy)
    assert plan.prefix == tuple(system)
    assert set(plan.prefixes) == {("a", tuple(system)), ("b", tuple(system))}
    policy.add(_on("a", req(other + [1])))  # one slot per adapter: `a` keeps only its newest
    policy.add(_on(None, req(other + [2])))  # a group mixing adapters
    step(policy)
    plan = step(policy)
    assert plan.prefix == tuple(other)
    assert set(plan.prefixes) == {("a", tuple(other)), (None, tuple(other)), ("b", tuple(system))}


def test_exact_groups_never_mix_adapters() -> None:
    policy, _ = make_policy()
    beams = (("num_beams", 2),)
    for adapter in ("a", None, "a", "b"):
        policy.add(_on(adapter, req(extra=beams)))
    groups = []
    while policy.waiting or policy.exact_waiting:
        plan = policy.schedule()
        if plan.kind == "exact":
            groups.append([r.adapter_key for r in plan.exact])
        policy.update(plan, StepOutput())
    assert sorted(groups, key=str) == sorted([["a", "a"], [None], ["b"]], key=str)


def test_the_exact_lane_ends_sequences_by_the_policys_rules() -> None:
    """An exact step carries the policy's end rules: the `generate` call asks them after each token
    (EOS, length, cancellation, deadline, on the policy's clock) and ends sequences through them."""
    clock = Clock()
    policy, _ = make_policy(clock)
    beams = req(extra=(("num_beams", 2),), max_new=3)
    late = req(extra=(("num_beams", 2),), deadline=clock.now + 5)
    policy.add(beams)
    policy.add(late)
    plan = policy.schedule()
    assert plan.kind == "exact" and plan.rules is not None
    rules = plan.rules
    assert rules.judge(beams, 1, EOS, None) == "eos"
    assert rules.judge(beams, 3, ord("a"), None) == "length"
    assert rules.judge(late, 1, ord("a"), None) is None and rules.gone(late) is None
    clock.now += 10  # past the deadline: the policy's clock decides
    assert rules.judge(late, 1, ord("a"), None) == "timeout" and rules.gone(late) == "timeout"
    beams.stream.cancel()
    assert rules.gone(beams) == "cancelled"
    rules.end(late, 0, "timeout", None)
    assert [type(e) for e in late.stream.events(timeout=1)] == [FinishEvent]
