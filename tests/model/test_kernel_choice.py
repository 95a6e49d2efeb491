"""CPU_LINEAR=auto: the per-bucket kernel choice from timed decode steps (an injected clock, no
sleeps), its cache, and a tiny random llama choosing end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from server.config import Settings
from server.model import kernel_choice, loader
from server.model.cpu_kernels import ROW_BUCKETS, onednn_works
from server.model.kernel_choice import BucketTiming, Decision, buckets_up_to, decide, time_buckets
from tests.support.models import tiny_model_dir


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch) -> None:
    monkeypatch.setattr(kernel_choice, "_THIS_PROCESS", {})


class FakeTimer:
    """A clock that advances by a made-up cost whenever a step runs; it records the steps."""

    def __init__(self, ms: dict[tuple[str, int], float]) -> None:
        self.ms, self.now, self.steps = ms, 0.0, []

    def clock(self) -> float:
        return self.now

    def step(self, kernel: str, rows: int) -> None:
        self.steps.append((kernel, rows))
        self.now += self.ms[kernel, rows] / 1000


def _costs(torch_ms: dict[int, float], onednn_ms: dict[int, float]) -> dict[tuple[str, int], float]:
    return {**{("torch", r): v for r, v in torch_ms.items()},
            **{("onednn", r): v for r, v in onednn_ms.items()}}


def test_the_faster_kernel_wins_per_bucket_and_ties_keep_f_linear() -> None:
    timer = FakeTimer(_costs({1: 10, 2: 10, 4: 20, 8: 40}, {1: 12, 2: 9.9, 4: 10, 8: 30}))
    timings = time_buckets(timer.step, (1, 2, 4, 8), budget_s=60, clock=timer.clock)
    assert [t.rows for t in timings] == [1, 2, 4, 8]
    assert [t.torch_ms for t in timings] == pytest.approx([10, 10, 20, 40])
    assert [t.onednn_ms for t in timings] == pytest.approx([12, 9.9, 10, 30])
    assert [t.kernel for t in timings] == ["torch", "torch", "onednn", "onednn"]  # 1% at 2 rows: a tie
    decision = decide(timings)
    assert decision.onednn_rows == tuple(rows >= 4 for rows in ROW_BUCKETS)  # 8's choice above 8
    assert any("oneDNN" in line for line in decision.lines())


def test_steps_warm_up_then_alternate_kernels() -> None:
    timer = FakeTimer(_costs({1: 1}, {1: 1}))
    time_buckets(timer.step, (1,), clock=timer.clock)
    warm, timed = timer.steps[:2], timer.steps[2:]
    assert warm == [("torch", 1), ("onednn", 1)]
    assert [k for k, _ in timed][:6] == ["torch", "onednn", "onednn", "torch", "torch", "onednn"]  # ABBA
    assert len(timed) == 2 * kernel_choice.reps_for(1)


def test_the_budget_stops_the_timing_and_the_last_choice_extends() -> None:
    costs = _costs({r: 1000.0 for r in ROW_BUCKETS}, {r: 10.0 for r in ROW_BUCKETS})
    timer = FakeTimer(costs)  # a step pair costs ~1 s of fake time
    timings = time_buckets(timer.step, buckets_up_to(32), budget_s=7, clock=timer.clock)
    assert [(t.rows, t.reps) for t in timings] == [(1, 5), (2, 1)]  # cut inside the second bucket
    decision = decide(timings, complete=False)
    assert decision.onednn_rows == (True,) * len(ROW_BUCKETS) and not decision.reliable
    assert decide([]).onednn_rows == (False,) * len(ROW_BUCKETS)


def test_noisy_or_partial_timings_are_used_but_not_cached(tmp_path: Path, monkeypatch) -> None:
    steady = BucketTiming(1, 10.0, 5.0, 3, spread=1.05)
    assert decide([steady]).reliable
    assert not decide([steady, BucketTiming(2, 10.0, 5.0, 3, spread=2.0)]).reliable
    noisy = [BucketTiming(1, 10.0, 5.0, 3, spread=2.0)]
    monkeypatch.setattr(kernel_choice, "time_buckets", lambda step, buckets, budget_s: noisy)
    model = _tiny_llama()
    decision = kernel_choice.choose(model, max_batch_size=1, cache_dir=tmp_path)
    assert decision.onednn_rows == (True,) * len(ROW_BUCKETS) and not decision.reliable
    assert model.lm_head.onednn_rows == decision.onednn_rows  # used for this run
    assert not list(tmp_path.iterdir())  # not kept on disk, but this process does not time again
    monkeypatch.setattr(kernel_choice, "time_buckets", lambda step, buckets, budget_s: 1 / 0)
    assert kernel_choice.choose(_tiny_llama(), 1, tmp_path).onednn_rows == decision.onednn_rows


def test_buckets_cover_max_batch_size() -> None:
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_up_to(33) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets_up_to(10_000) == ROW_BUCKETS


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_cache_key_and_round_trip(tmp_path: Path, monkeypatch) -> None:
    model = _tiny_llama()
    key = kernel_choice.cache_key(model, (1, 2, 4))
    assert {"cpu", "threads", "torch", "model", "config", "dtype", "buckets"} <= key.keys()
    assert key["threads"] == torch.get_num_threads() and key["torch"] == torch.__version__
    assert key["dtype"] == "float32" and key["buckets"] == [1, 2, 4]
    decision = decide([BucketTiming(1, 5.0, 6.0, 3), BucketTiming(2, 8.0, 4.0, 3)], seconds=1.5)
    path = kernel_choice.save(tmp_path / "cache", key, decision)
    assert path is not None and json.loads(path.read_text())["key"] == key
    back = kernel_choice.load_cached(tmp_path / "cache", key)
    assert back is not None and back.source == "cache"
    assert back.onednn_rows == decision.onednn_rows and back.timings == decision.timings
    for field, other in (("threads", key["threads"] + 1), ("cpu", "another CPU"), ("dtype", "bfloat16"),
                         ("config", "0" * 16)):
        assert kernel_choice.load_cached(tmp_path / "cache", {**key, field: other}) is None
    assert kernel_choice.load_cached(None, key) is None
    blocked = tmp_path / "file"
    blocked.write_text("")  # a cache "folder" that is a file: no cache, no error
    assert kernel_choice.save(blocked, key, decision) is None


def test_cache_key_changes_with_the_model() -> None:
    a = kernel_choice.cache_key(_tiny_llama(), (1,))
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    b = kernel_choice.cache_key(LlamaForCausalLM(config), (1,))
    assert a["config"] != b["config"] and a["parameters"] != b["parameters"]
    assert a["dtype"] == "float32"
    assert kernel_choice.cache_key(_tiny_llama().to(torch.bfloat16), (1,))["dtype"] == "bfloat16"


@pytest.mark.model
@pytest.mark.skipif(not onednn_works(), reason="this torch build has no oneDNN")
def test_a_tiny_llama_times_chooses_caches_and_keeps_its_logits(tmp_path: Path, monkeypatch) -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 300, (2, 9))
    with torch.inference_mode():
        before = model(ids).logits
    steps: list[tuple[str, int]] = []
    real_stepper = kernel_choice.model_stepper

    def counting_stepper(*args, **kwargs):
        step = real_stepper(*args, **kwargs)

        def counted(kernel: str, rows: int) -> None:
            steps.append((kernel, rows))
            step(kernel, rows)
        return counted

    monkeypatch.setattr(kernel_choice, "model_stepper", counting_stepper)
    monkeypatch.setattr(kernel_choice, "MAX_SPREAD", float("inf"))  # cached even on a busy machine
    decision = kernel_choice.choose(model, max_batch_size=4, cache_dir=tmp_path, budget_s=600)
    assert decision.source == "timed" and [t.rows for t in decision.timings] == [1, 2, 4]
    assert {rows for _, rows in steps} == {1, 2, 4} and {k for k, _ in steps} == {"torch", "onednn"}
    assert all(t.torch_ms > 0 and t.onednn_ms > 0 for t in decision.timings)
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if any(decision.onednn_rows):
        assert all(m.onednn_rows == decision.onednn_rows for m in linears)
    else:
        assert not any("forward" in m.__dict__ for m in linears)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)
    assert len(list(tmp_path.glob("cpu-kernels-*.json"))) == 1

    steps.clear()  # a restart on the same machine reads the decision
    again = kernel_choice.choose(_tiny_llama(), max_batch_size=4, cache_dir=tmp_path)
    assert again.source == "cache" and again.onednn_rows == decision.onednn_rows and not steps


@pytest.mark.model
@pytest.mark.skipif(not onednn_works(), reason="this torch build has no oneDNN")
def test_the_loader_default_is_the_timed_choice(tmp_path: Path, monkeypatch) -> None:
    path = tiny_model_dir(tmp_path)
    fixed = Decision(tuple(rows >= 2 for rows in ROW_BUCKETS), (BucketTiming(1, 1.0, 2.0, 3),), 0.1)
    seen: list[int] = []

    def fake_time_buckets(step, buckets, budget_s):
        seen.extend(buckets)
        return list(fixed.timings)

    monkeypatch.setattr(kernel_choice, "time_buckets", fake_time_buckets)
    monkeypatch.setattr(kernel_choice, "decide", lambda timings, seconds, complete: fixed)
    settings = Settings(model_path=str(path), max_batch_size=8, kernel_cache_dir=str(tmp_path / "kc"))
    model = loader.load(settings).model
    assert seen == [1, 2, 4, 8]
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert linears and all(m.onednn_rows == fixed.onednn_rows for m in linears)
    assert list((tmp_path / "kc").glob("cpu-kernels-*.json"))
    assert settings.cpu_linear == "auto" and Settings().cpu_linear == "auto"
    seen.clear()  # CPU_LINEAR=measure, kept for old configurations, is the same
    loader.load(Settings(model_path=str(path), max_batch_size=2, cpu_linear="measure",
                         kernel_cache_dir="off"))
    assert seen == [1, 2]
