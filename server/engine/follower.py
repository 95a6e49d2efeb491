"""A tensor-parallel rank other than 0: it holds its share of the model and of the KV cache, and runs
every forward rank 0 announces, with the same inputs, in the same order (server/engine/lockstep.py).

It has no HTTP, no policy and no sampler: rank 0 decides everything and sends the tokens. The
cache surgery is the same `Batch` code rank 0 runs, so the two copies cannot differ in shape.
"""

from __future__ import annotations

import logging

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria

from server.adapters.runtime import use_adapters
from server.engine import lockstep
from server.engine.batch import Batch, CacheRow, Prefix
from server.engine.runner import prefix_for
from server.engine.step import PrefixKey
from server.model.loader import LoadedModel

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, loaded: LoadedModel, channel: lockstep.Channel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.channel = channel
        self.slots: dict[lockstep.Slot, Batch | None] = {"batch": None, "fresh": None}
        self._prefixes: dict[PrefixKey, Prefix] = {}
        self.forwards = 0

    def run(self) -> None:
        """Follow rank 0 until it says Stop; RankLost when it dies or falls silent."""
        with torch.inference_mode():
            while True:
                for op in self.channel.recv():
                    if isinstance(op, lockstep.Stop):
                        return
                    self.apply(op)

    def apply(self, op: lockstep.Op) -> None:
        match op:
            case lockstep.Filter(slot=slot, keep=keep):
                self._batch(slot).filter(keep)
            case lockstep.Clear(slot=slot):
                self.slots[slot] = None
            case lockstep.Merge():
                fresh, self.slots["fresh"] = self.slots["fresh"], None
                batch = self.slots["batch"]
                if not batch:
                    self.slots["batch"] = fresh
                else:
                    batch.concatenate(self._batch_of(fresh))
            case lockstep.KeepPrefixes(keys=keys):
                for key in [k for k in self._prefixes if k not in keys]:
                    del self._prefixes[key]
            case lockstep.SetNext(slot=slot, tokens=tokens):
                self._batch(slot).set_next(tokens)
            case lockstep.Accept(kept=kept):
                self._batch("batch").accept(kept)
            case lockstep.Prefill():
                rows = [CacheRow(prompt, len(prompt)) for prompt in op.prompts]
                prefix = prefix_for(self.model, self._prefixes, op.prefix, op.adapters)
                with use_adapters(op.adapters):
                    self.slots["fresh"], _ = Batch.prefill(self.model, rows, self.loaded.pad_token_id, prefix)
            case lockstep.Decode(drafts=drafts):
                batch = self._batch("batch")
                if drafts is None:
                    batch.decode(self.model)
                else:
                    batch.verify(self.model, drafts)
            case lockstep.Exact():
                self._exact(op)
            case lockstep.Score(input_ids=ids):
                self.model(input_ids=torch.tensor([ids], device=self.loaded.device), use_cache=False)
            case _:
                raise lockstep.RankLost(f"rank 0 sent an unknown message: {type(op).__name__}")
        if isinstance(op, lockstep.FORWARDS):
            self.forwards += 1

    def _batch(self, slot: lockstep.Slot) -> Batch:
        return self._batch_of(self.slots[slot])

    @staticmethod
    def _batch_of(batch: Batch | None) -> Batch:
        if batch is None:
            raise lockstep.RankLost("rank 0 referred to a batch this rank does not hold")
        return batch

    def _exact(self, op: lockstep.Exact) -> None:
        torch.manual_seed(op.seed)
        told = _Told(self.channel)
        device = self.loaded.device
        try:
            self.model.generate(
                input_ids=torch.tensor(op.input_ids, device=device),
                attention_mask=torch.tensor(op.attention_mask, device=device),
                generation_config=GenerationConfig(**op.config),
                logits_processor=LogitsProcessorList([told]),
                stopping_criteria=[_Done(told)],
            )
        except lockstep.RankLost:
            raise
        except Exception as exc:
            if told.steps:
                raise lockstep.RankLost(f"exact generate failed on this rank: {exc}") from exc
            # before its first step: the same refusal rank 0 got; it fails its requests there
            log.info("an exact generate call was refused before its first step: %s", type(exc).__name__)


class _Told(LogitsProcessor):
    """Takes each step's tokens from rank 0 (forcing them, so that sampling agrees) and the rows it
    ended."""

    def __init__(self, channel: lockstep.Channel) -> None:
        self.channel = channel
        self.steps = 0
        self.done: list[bool] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = self.channel.recv()
        if not isinstance(step, lockstep.ExactStep):
            raise lockstep.RankLost(f"rank 0 sent {type(step).__name__} inside a generate call")
        self.steps += 1
        self.done = step.done
        if step.tokens is None:  # beam search: the same logits give the same beams everywhere
            return scores
        forced = torch.full_like(scores, float("-inf"))
        index = torch.tensor(step.tokens, device=scores.device).unsqueeze(1)
        return forced.scatter_(1, index, 0.0)


class _Done(StoppingCriteria):
    def __init__(self, told: _Told) -> None:
        self.told = told

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.tensor(self.told.done, dtype=torch.bool, device=input_ids.device)
