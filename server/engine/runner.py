"""The model runner: runs exact `model.generate` on a group of requests that share parameters.

The exact lane of the engine (fallback.py): options a batched decode step cannot reproduce (beam
search, constrained decoding, ...). Tokens are streamed per step through a stopping criterion,
which also applies cancellation, deadlines and stop strings per row. When logprobs are wanted, a
row's finish event waits until its logprobs (read from `generate`'s logits at the end) are pushed,
so that a stream never ends before them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from server.engine.request import FinishReason, GenerationRequest
from server.model.loader import LoadedModel

log = logging.getLogger(__name__)


class _RowState:
    __slots__ = ("request", "index", "generated", "done", "text_tail", "defer_finish", "reason")

    def __init__(self, request: GenerationRequest, index: int, defer_finish: bool = False) -> None:
        self.request = request
        self.index = index
        self.generated: list[int] = []
        self.done = False
        self.text_tail = ""
        self.defer_finish = defer_finish  # finish only after the logprobs were pushed
        self.reason: FinishReason | None = None


class _StreamingCriteria(StoppingCriteria):
    """Streams each row's newest token and ends rows on EOS, stop strings, cancel or deadline."""

    def __init__(self, rows: list[_RowState], loaded: LoadedModel, stream: bool) -> None:
        self.rows = rows
        self.loaded = loaded
        self.stream = stream

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        now = time.monotonic()
        if not self.stream:  # beam search: rows are beams; stop only when every request gave up
            stop = all(r.request.stream.cancelled or (r.request.deadline or now + 1) < now for r in self.rows)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            req = row.request
            if row.done:
                done[i] = True
                continue
            token = int(last[i])
            row.generated.append(token)
            req.stream.push(row.index, [token])
            reason = self._finished(row, token)
            if reason is not None:
                _finish(row, reason)
            if req.stream.cancelled:
                _finish(row, "cancelled")
            elif req.deadline is not None and now > req.deadline:
                _finish(row, "timeout")
            done[i] = row.done
        return done

    def _finished(self, row: _RowState, token: int) -> FinishReason | None:
        params = row.request.params
        if token in params.eos_token_ids and len(row.generated) >= params.min_new_tokens:
            return "eos"
        if params.stop:
            piece = self.loaded.tokenizer.decode([token], skip_special_tokens=True)
            row.text_tail = (row.text_tail + piece)[-(max(len(s) for s in params.stop) + 16):]
            if any(s in row.text_tail for s in params.stop):
                return "stop"
        if len(row.generated) >= params.max_new_tokens:
            return "length"
        return None


def _finish(row: _RowState, reason: FinishReason) -> None:
    if not row.done:
        row.done = True
        row.reason = reason
        if not row.defer_finish:
            row.request.stream.finish(row.index, reason)


class ModelRunner:
    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> None:
        """Run one `generate` call for requests whose parameters are identical (seed aside)."""
        params = requests[0].params
        n = params.num_return_sequences
        pad = self.loaded.pad_token_id
        width = max(r.prompt_tokens for r in requests)
        ids = torch.full((len(requests), width), pad, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - r.prompt_tokens:] = torch.tensor(r.input_ids)
            mask[i, width - r.prompt_tokens:] = 1
        device = self.loaded.device
        config = GenerationConfig(**params.generate_kwargs(), return_dict_in_generate=True,
                                  output_logits=params.logprobs)
        beams = int(config.num_beams or 1)
        # Per-step streaming only where each row of generate's input is one output sequence.
        stream = beams == 1
        want_scores = params.logprobs
        rows = [_RowState(r, j, defer_finish=want_scores) for r in requests for j in range(n)]
        criteria = _StreamingCriteria(rows, self.loaded, stream)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        out = self.loaded.model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([criteria]),
        )
        sequences = out.sequences[:, width:].tolist()
        logits = out.logits if want_scores else None
        for i, row in enumerate(rows):
            if stream:
                tokens = row.generated
            else:
                tokens = _trim(sequences[i], row.request.params.eos_token_ids, pad)
                row.generated = tokens
                row.request.stream.push(row.index, tokens)
            if logits is not None and tokens:
                lp, top = _logprobs(logits, i, tokens, params.top_logprobs)
                row.request.stream.push(row.index, [], lp, top)
            if not row.done:
                hit_eos = bool(tokens) and tokens[-1] in params.eos_token_ids
                reason: FinishReason = "eos" if hit_eos else "length"
                if not stream and params.stop:
                    text = self.loaded.tokenizer.decode(tokens, skip_special_tokens=True)
                    if any(s in text for s in params.stop):
                        reason = "stop"
                _finish(row, reason)
            if row.defer_finish:  # the logprobs are out: now the finish event
                row.request.stream.finish(row.index, row.reason)


def _trim(tokens: list[int], eos: tuple[int, ...], pad: int) -> list[int]:
    """Cut a finished row after its first EOS; drop trailing padding."""
    for k, t in enumerate(tokens):
        if t in eos:
            return tokens[: k + 1]
    while tokens and tokens[-1] == pad:
        tokens = tokens[:-1]
    return tokens


def _logprobs(logits: tuple[torch.Tensor, ...], row: int, tokens: list[int],
              top_n: int) -> tuple[list[float], list[list[tuple[int, float]]] | None]:
    lps: list[float] = []
    tops: list[list[tuple[int, float]]] = []
    for step, token in enumerate(tokens[: len(logits)]):
        logp = torch.log_softmax(logits[step][row].float(), dim=-1)
        lps.append(float(logp[token]))
        if top_n:
            values, idx = logp.topk(top_n)
            tops.append([(int(t), float(v)) for t, v in zip(idx.tolist(), values.tolist(), strict=True)])
    return lps, (tops if top_n else None)
