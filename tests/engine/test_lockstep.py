"""Lock-step: a follower fed rank 0's messages holds the same KV cache as rank 0's runner, step after
step, through prefills on shared prefixes, speculative steps, stop strings, rows leaving and rows
failing. In one process: the messages go straight to a follower on the same model (the ranks'
collectives are tested with two real ranks in tests/integration/test_tensor_parallel.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from server.config import Settings
from server.engine import lockstep
from server.engine.batch import Batch
from server.engine.follower import Follower
from server.engine.loop import EngineLoop
from server.engine.policy import Policy, PolicyLimits
from server.engine.request import GenerationParams, GenerationRequest, collect
from server.engine.runner import ModelRunner
from server.engine.sampling import RowSampler
from server.engine.stops import StopChecker
from server.model import loader
from tools.tiny_model import build


class Loopback:
    """A channel straight into a follower that checks, before each forward, that its cache equals
    rank 0's."""

    def __init__(self) -> None:
        self.follower: Follower | None = None
        self.runner: ModelRunner | None = None
        self.forwards = 0
        self.messages: list[list[lockstep.Op]] = []

    def send(self, ops: Any) -> None:
        assert self.follower is not None and self.runner is not None
        self.messages.append(list(ops))
        for op in ops:
            if isinstance(op, lockstep.FORWARDS):
                _same(self.runner.batch, self.follower.slots["batch"])
                assert self.follower.slots["fresh"] is None
                self.forwards += 1
            self.follower.apply(op)


def _same(mine: Batch | None, theirs: Batch | None) -> None:
    if not mine:
        assert not theirs
        return
    assert theirs is not None
    assert torch.equal(mine.mask, theirs.mask)
    assert torch.equal(mine.next_ids, theirs.next_ids)
    assert [r.length for r in mine.rows] == [r.length for r in theirs.rows]
    for a, b in zip(mine.cache.layers, theirs.cache.layers, strict=True):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> loader.LoadedModel:
    path = build(tmp_path_factory.mktemp("tiny") / "tiny-llama")
    settings = Settings(model_path=str(path), torch_dtype="float32", device_map="cpu", cpu_linear="torch")
    return loader.load(settings)


def _request(tiny: loader.LoadedModel, ids: list[int], **kw: Any) -> GenerationRequest:
    kw.setdefault("eos_token_ids", tiny.eos_token_ids)
    kw.setdefault("pad_token_id", tiny.pad_token_id)
    kw.setdefault("do_sample", False)
    return GenerationRequest(ids, GenerationParams(**kw))


def test_a_follower_keeps_the_same_cache_as_rank_0(tiny: loader.LoadedModel,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    wire = Loopback()
    leader = lockstep.Leader(wire)  # type: ignore[arg-type]
    runner = ModelRunner(tiny, leader=leader)
    wire.runner, wire.follower = runner, Follower(tiny, wire)  # type: ignore[arg-type]
    policy = Policy(PolicyLimits(max_batch_size=8, prefix_min_tokens=4), batching=True,
                    text_checker=lambda r: StopChecker(tiny.tokenizer, r.params.stop, r.text_options))
    loop = EngineLoop(policy, runner, window_s=0)
    system = list(range(100, 120))  # a shared prefix
    # a random model rarely repeats its prompt, so the drafting row proposes fixed drafts: most are
    # rejected, and the rejected columns are trimmed on both sides
    monkeypatch.setattr(RowSampler, "draft", lambda self: [11, 12, 13] if self.drafter is not None else [])
    repeat = [7, 8, 9, 10, 11] * 3
    first = [
        _request(tiny, system + [1000 + i], max_new_tokens=6 + 3 * i) for i in range(3)  # leave one by one
    ] + [
        _request(tiny, repeat, max_new_tokens=24, draft_tokens=4),  # speculative steps (accept, trim)
        _request(tiny, [5, 6, 7], max_new_tokens=16, do_sample=True, seed=3, temperature=0.9),
        _request(tiny, [9, 9, 9, 9], max_new_tokens=12, stop=("e",)),
    ]
    for r in first:
        policy.add(r)
    while policy.running or len(wire.messages) < 3:
        loop.step()
    late = [_request(tiny, system + [2000 + i], max_new_tokens=5) for i in range(2)]
    late.append(_request(tiny, [3, 4], max_new_tokens=8, do_sample=True, temperature=1e-9, top_p=1e-9))
    for r in late:
        policy.add(r)
    while policy.has_work:
        loop.step()
    for r in first + late:
        assert r.stream.closed.is_set()
        collect(r, timeout=1)  # each ended (a broken distribution fails alone, with a message)
    leader.flush()  # what is still noted goes with the next message (a heartbeat when idle)
    _same(runner.batch, wire.follower.slots["batch"])
    assert wire.forwards > 20
    kinds = {type(op).__name__ for ops in wire.messages for op in ops}
    assert {"Prefill", "Decode", "SetNext", "Filter", "Merge", "Accept"} <= kinds


def test_a_failed_forward_is_rank_lost(tiny: loader.LoadedModel) -> None:
    """Under tensor parallelism a forward that fails is not one request's failure: the ranks may no
    longer agree, so it ends the engine loop (server/engine/engine.py then ends the process)."""
    sent: list[Any] = []

    class Channel:
        def send(self, ops: Any) -> None:
            sent.append(ops)

    leader = lockstep.Leader(Channel())  # type: ignore[arg-type]
    with pytest.raises(lockstep.RankLost, match="a forward failed under tensor parallelism: ValueError"):
        with leader.forward(lockstep.Score([1, 2])):
            raise ValueError("boom")
    assert isinstance(sent[0][-1], lockstep.Score)


def test_the_tiny_model_tool_writes_a_servable_folder(tmp_path: Path) -> None:
    path = build(tmp_path / "m", heads=4, kv_heads=2, hidden=64, intermediate=128)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in path.iterdir()}
