"""The model runner: every forward pass of the engine, one `Step` at a time.

It owns the model-side state the policy never sees: the running `Batch` (KV cache, masks), each
row's sampler (parameters, history, random generator), and the keys/values of shared prefixes.
`run(step)` drops the rows the policy ended, merges the rows prefilled in the previous step, then
runs the step: a batched prefill of new rows (on top of a shared prefix when the step names one),
a batched decode of every running row, or one exact `generate` call (exact.py). It samples one
token per row and hands them back in a `StepOutput`; the policy decides what they mean.

Failure isolation: a failed prefill fails only the newcomers; a failed decode or merge fails the
rows of that batch; a row whose distribution broke fails alone; the runner itself keeps going.

Under tensor parallelism (`leader` set) the runner also tells the other ranks every change it makes
to its batches and every forward it runs, so that they run the same (server/engine/lockstep.py);
there a failed forward stops the engine instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from transformers import PreTrainedModel

from server.adapters.runtime import use_adapters
from server.engine import lockstep
from server.engine.batch import Batch, Prefix, Row, supports_batching
from server.engine.constraint_mask import MaskApplier
from server.engine.errors import ConstraintDeadEnd, InvalidDistribution
from server.engine.exact import generate_exact
from server.engine.request import GenerationRequest
from server.engine.sampling import Choice, RowSampler, choose
from server.engine.step import EndRules, PrefixKey, Sampled, Sequence, Step, StepOutput
from server.model.loader import LoadedModel

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, masks: MaskApplier | None = None,
                 on_mask: Callable[[int, float], None] | None = None,
                 on_draft: Callable[[int, int], None] | None = None,
                 leader: lockstep.Leader | None = None) -> None:
        self.loaded = loaded
        self.leader = leader  # tensor parallelism: the other ranks follow every change
        self.model = loaded.model
        self.masks = masks  # constraint masks (None: the tokenizer does not support constraints)
        self.on_mask = on_mask  # metrics hook: (constrained rows, seconds) per step that masked
        self.on_draft = on_draft  # metrics hook: (drafted, accepted) tokens per speculative step
        self._batch: Batch | None = None
        self._fresh: Batch | None = None  # prefilled in the last step; merged at the next one
        self._prefixes: dict[PrefixKey, Prefix] = {}
        out = self.model.get_output_embeddings()
        self._logits_device = out.weight.device if out is not None else loaded.device

    def supports_batching(self) -> tuple[bool, str]:
        return supports_batching(self.model)

    @property
    def batch(self) -> Batch | None:
        """The running batch (read it, never edit it: the follower test compares caches with it)."""
        return self._batch

    @property
    def rows(self) -> int:
        """Rows held in the KV cache (running and just prefilled)."""
        return sum(len(b) for b in (self._batch, self._fresh) if b is not None)

    def reset(self) -> None:
        """Forget every row (after a failure the policy could not attribute)."""
        self._batch = self._fresh = None
        self._note(lockstep.Clear("batch"))
        self._note(lockstep.Clear("fresh"))

    def run(self, step: Step) -> StepOutput:
        out = StepOutput()
        leaving = {id(s) for s in step.drop}
        for slot, batch in (("batch", self._batch), ("fresh", self._fresh)):
            if batch is not None and leaving:
                keep = [i for i, r in enumerate(batch.rows) if id(r.seq) not in leaving]
                if len(keep) < len(batch):
                    self._note(lockstep.Filter(slot, keep))
                    batch.filter(keep)
        gone = [k for k in self._prefixes if k not in step.prefixes]
        if gone:
            self._note(lockstep.KeepPrefixes(step.prefixes))
            for key in gone:
                del self._prefixes[key]
        self._merge(out)
        if step.kind == "prefill":
            self._prefill(step, out)
        elif step.kind == "decode":
            self._decode(out)
        elif step.kind == "exact" and step.exact and step.rules is not None:
            self._exact(step.exact, step.rules, out)
        return out

    # tensor parallelism
    def _note(self, op: lockstep.Op) -> None:
        if self.leader is not None:
            self.leader.note(op)

    def _forward(self, op: lockstep.Op) -> AbstractContextManager[None]:
        return self.leader.forward(op) if self.leader is not None else contextlib.nullcontext()

    # steps
    def _merge(self, out: StepOutput) -> None:
        fresh, self._fresh = self._fresh, None
        if not fresh:
            return
        self._note(lockstep.Merge())
        if not self._batch:
            self._batch = fresh
            return
        try:
            self._batch.concatenate(fresh)
        except Exception as exc:
            log.exception("merging %d row(s) into the batch failed", len(fresh))
            _fail(out, self._batch.rows + fresh.rows, exc)
            self._batch = None
            self._note(lockstep.Clear("batch"))

    def _prefill(self, step: Step, out: StepOutput) -> None:
        try:
            rows = [self._row(seq) for seq in step.rows]
            adapters = [r.request.adapter_key for r in rows]
            op = lockstep.Prefill([r.prompt for r in rows], step.prefix, adapters)
            with self.loaded.exclusive(), self._forward(op):
                prefix = prefix_for(self.model, self._prefixes, step.prefix, adapters)
                with use_adapters(adapters):
                    fresh, logits = Batch.prefill(self.model, rows, self.loaded.pad_token_id, prefix)
            self._sample("fresh", fresh, logits, out)
        except Exception as exc:  # fail the newcomers only; the running batch is untouched
            log.exception("prefill failed for %d row(s)", len(step.rows))
            out.failed.extend((req, exc) for req in _distinct(s.request for s in step.rows))
            self._note(lockstep.Clear("fresh"))
            return
        self._fresh = fresh

    def _decode(self, out: StepOutput) -> None:
        batch = self._batch
        if not batch:
            return
        try:
            drafts = [r.sampler.draft() for r in batch.rows]
            drafting = any(drafts)
            with self.loaded.exclusive(), use_adapters([r.request.adapter_key for r in batch.rows]), \
                    self._forward(lockstep.Decode(drafts if drafting else None)):
                logits = batch.verify(self.model, drafts) if drafting else batch.decode(self.model)
            if logits.dim() == 3:
                self._sample_drafted(batch, logits, drafts, out)
            else:
                self._sample("batch", batch, logits, out)
        except Exception as exc:  # fail this step's rows; keep serving the queue
            log.exception("decode step failed for %d row(s)", len(batch))
            _fail(out, batch.rows, exc)
            self._batch = None
            self._note(lockstep.Clear("batch"))

    def _exact(self, group: list[GenerationRequest], rules: EndRules, out: StepOutput) -> None:
        try:
            with self.loaded.exclusive(), use_adapters(group[0].adapter_key):  # one adapter per group
                generate_exact(self.loaded, group, rules, self.masks, self.leader)
        except Exception as exc:  # one failed call fails its requests, not the server
            if self.leader is not None and self.leader.exact_steps:  # the other ranks ran its forwards
                raise lockstep.RankLost(f"exact generate failed under tensor parallelism: {exc}") from exc
            log.exception("exact generate failed for %d request(s)", len(group))
            out.failed.extend((r, exc) for r in group)

    # helpers
    def _row(self, seq: Sequence) -> Row:
        req = seq.request
        matcher = req.constraint.matcher() if req.constraint is not None else None
        return Row(seq, RowSampler(req.params, req.input_ids, seq.index, self._logits_device, matcher),
                   length=req.prompt_tokens)

    def _choose(self, batch: Batch, logits: torch.Tensor, out: StepOutput) -> tuple[Choice, set[int]]:
        """One token per row from `logits [B, V]`; the requests whose row failed (a broken
        distribution, a constraint with no way on) are reported, and their ids returned."""
        rows = batch.rows
        want = [r.request.params.top_logprobs if r.request.params.logprobs else -1 for r in rows]
        choice = choose(logits, [r.sampler for r in rows], want, self.masks)
        if choice.mask_seconds is not None and self.on_mask is not None:
            self.on_mask(sum(r.sampler.matcher is not None for r in rows), choice.mask_seconds)
        bad = {id(rows[i].request) for i in (*choice.invalid, *choice.dead_ends)}
        broken = _distinct(rows[i].request for i in choice.invalid)
        out.failed.extend((req, InvalidDistribution()) for req in broken)
        dead = _distinct(rows[i].request for i in choice.dead_ends)
        out.failed.extend((req, ConstraintDeadEnd()) for req in dead)
        return choice, bad

    def _sample(self, slot: lockstep.Slot, batch: Batch, logits: torch.Tensor, out: StepOutput) -> None:
        """Choose one token per row; a row whose distribution broke fails its request alone."""
        rows = batch.rows
        choice, bad = self._choose(batch, logits, out)
        for i, row in enumerate(rows):
            if id(row.request) in bad:
                continue
            token = choice.tokens[i]
            row.sampler.append(token)
            out.sampled.append(Sampled(row.seq, token, choice.logprobs[i], choice.top_logprobs[i]))
        self._set_next(slot, batch, choice.tokens)
        if bad:
            self._filter(slot, batch, [i for i, r in enumerate(rows) if id(r.request) not in bad])

    def _set_next(self, slot: lockstep.Slot, batch: Batch, tokens: list[int]) -> None:
        self._note(lockstep.SetNext(slot, tokens))
        batch.set_next(tokens)

    def _filter(self, slot: lockstep.Slot, batch: Batch, keep: list[int]) -> None:
        self._note(lockstep.Filter(slot, keep))
        batch.filter(keep)

    def _sample_drafted(self, batch: Batch, logits: torch.Tensor, drafts: list[list[int]],
                        out: StepOutput) -> None:
        """After a verify step (`logits [B, 1 + k, V]`): every row's first token as in `_sample`;
        then a drafting row goes on while its greedy choice equals its draft, taking the model's
        token after the last match too. Tokens go to the policy one by one, as single steps would."""
        rows = batch.rows
        choice, bad = self._choose(batch, logits[:, 0], out)
        greedy = logits[:, 1:].float().argmax(dim=-1).tolist() if logits.shape[1] > 1 else []
        kept, last = [], []
        drafted = accepted = 0
        for i, row in enumerate(rows):
            token = choice.tokens[i]
            tokens = [token]
            draft = drafts[i]
            if id(row.request) not in bad:
                sampler = row.sampler
                sampler.append(token)
                eos = row.request.params.eos_token_ids
                m = 0
                while m < len(draft) and tokens[-1] == draft[m] and tokens[-1] not in eos:
                    if sampler.needs_processing:  # history-dependent processors see each token
                        scores = logits[i, m + 1].float().clone()
                        sampler.process(scores)
                        nxt = int(scores.argmax())
                    else:
                        nxt = greedy[i][m]
                    sampler.append(nxt)
                    tokens.append(nxt)
                    m += 1
                if draft and sampler.drafter is not None:
                    sampler.drafter.feedback(len(draft), m)
                drafted, accepted = drafted + len(draft), accepted + m
                out.sampled.append(Sampled(row.seq, token, choice.logprobs[i], choice.top_logprobs[i]))
                out.sampled.extend(Sampled(row.seq, t) for t in tokens[1:])
            kept.append(len(tokens))
            last.append(tokens[-1])
        self._note(lockstep.Accept(kept))
        batch.accept(kept)
        self._set_next("batch", batch, last)
        if self.on_draft is not None:
            self.on_draft(drafted, accepted)
        if bad:
            self._filter("batch", batch, [i for i, r in enumerate(rows) if id(r.request) not in bad])


def _distinct(requests: Iterable[GenerationRequest]) -> list[GenerationRequest]:
    return list({id(r): r for r in requests}.values())


def _fail(out: StepOutput, rows: list[Row], exc: BaseException) -> None:
    out.failed.extend((req, exc) for req in _distinct(r.request for r in rows))


def prefix_for(model: PreTrainedModel, kept: dict[PrefixKey, Prefix], ids: tuple[int, ...] | None,
               adapters: list[str | None]) -> Prefix | None:
    """The prefix's keys/values for these rows: each row's adapter's own (computed once under that
    adapter and kept in `kept`), stacked along the batch when the rows' adapters differ. Every
    tensor-parallel rank calls this with the same arguments and the same `kept` keys."""
    if ids is None:
        return None
    per: dict[str | None, Prefix] = {}
    for adapter in dict.fromkeys(adapters):
        prefix = kept.get((adapter, ids))
        if prefix is None:
            with use_adapters(adapter):
                prefix = kept[(adapter, ids)] = Prefix.compute(model, list(ids))
        per[adapter] = prefix
    if len(per) == 1:
        return next(iter(per.values()))
    layers = [tuple(torch.cat([per[a].layers[n][kv] for a in adapters]) for kv in (0, 1))
              for n in range(len(per[adapters[0]].layers))]
    return Prefix(ids, layers)  # type: ignore[arg-type]
