"""The exact lane: one `model.generate` call for a group of requests that share parameters.

Options a batched decode step cannot reproduce (beam search, constrained decoding, bad words, any
`GenerationConfig` option outside `GenerationParams`' named fields) keep working this way: the
`generate_kwargs` surface never shrinks. The policy routes and groups the requests (`needs_exact`,
`exact_key`); the model runner calls `generate_exact` as one step of the engine loop.

Tokens are streamed per step through a stopping criterion, with the text each releases (the
policy's checker per row, as on the batched path). Whether a row ends is the policy's decision, the
same as on the batched path (`EndRules`, handed in with the step: EOS, length, stop strings matched
on that text, cancellation, deadlines); this lane only asks. When
logprobs are wanted, a row's finish event waits until its logprobs (read from `generate`'s logits
at the end) are pushed, so that a stream never ends before them.

Under tensor parallelism the other ranks run the same `generate` call (server/engine/follower.py):
rank 0 announces it with its inputs and a seed, then sends each step's tokens and which rows ended
(stop strings, cancellation and deadlines are rank 0's to decide).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from server.engine.constraint_mask import ConstraintProcessor, MaskApplier
from server.engine.lockstep import Exact, Leader
from server.engine.request import FinishReason, GenerationRequest
from server.engine.step import EndRules
from server.engine.stops import StopChecker
from server.model.loader import LoadedModel


class _ExactRow:
    __slots__ = ("request", "index", "generated", "checker", "defer_end", "reason", "rules")

    def __init__(self, request: GenerationRequest, index: int, checker: StopChecker | None,
                 rules: EndRules, defer_end: bool = False) -> None:
        self.request = request
        self.rules = rules
        self.index = index
        self.generated: list[int] = []
        self.checker = checker
        self.defer_end = defer_end  # send the finish event only after the logprobs
        self.reason: FinishReason | None = None

    def end(self, reason: FinishReason) -> None:
        if self.reason is None:
            self.reason = reason
            if not self.defer_end:
                self.rules.end(self.request, self.index, reason, self.checker)


class _StreamingCriteria(StoppingCriteria):
    """Streams each row's newest token and ends the rows the policy's rules end."""

    def __init__(self, rows: list[_ExactRow], stream: bool, rules: EndRules,
                 leader: Leader | None = None) -> None:
        self.rows = rows
        self.stream = stream
        self.rules = rules
        self.leader = leader

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        if not self.stream:  # beam search: rows are beams; stop only when every request gave up
            stop = all(self.rules.gone(r.request) is not None for r in self.rows)
            if self.leader is not None:
                self.leader.step(None, [stop] * input_ids.shape[0])
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        last = input_ids[:, -1].tolist()
        for i, row in enumerate(self.rows):
            req = row.request
            if row.reason is None:
                token = int(last[i])
                row.generated.append(token)
                req.stream.push(row.index, [token], text=row.checker.add([token]) if row.checker else "")
                reason = self.rules.judge(req, len(row.generated), token, row.checker)
                if reason is not None:
                    row.end(reason)
            done[i] = row.reason is not None
        if self.leader is not None:
            self.leader.step([int(t) for t in last], done.tolist())
        return done


@torch.inference_mode()
def generate_exact(loaded: LoadedModel, requests: Sequence[GenerationRequest], rules: EndRules,
                   masks: MaskApplier | None = None, leader: Leader | None = None) -> None:
    """Run one `generate` call for requests whose parameters are identical (seed aside); their
    output constraints, if any, as a logits processor (`masks` applies them). With `leader`, the
    other tensor-parallel ranks run it too."""
    params = requests[0].params
    n = params.num_return_sequences
    pad = loaded.pad_token_id
    width = max(r.prompt_tokens for r in requests)
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for i, r in enumerate(requests):
        ids[i, width - r.prompt_tokens:] = torch.tensor(r.input_ids)
        mask[i, width - r.prompt_tokens:] = 1
    settings = {**params.generate_kwargs(), "return_dict_in_generate": True, "output_logits": params.logprobs}
    config = GenerationConfig(**settings)
    # Per-step streaming only where each row of generate's input is one output sequence.
    stream = int(config.num_beams or 1) == 1
    rows = [_ExactRow(r, j, rules.checker(r), rules, defer_end=params.logprobs)
            for r in requests for j in range(n)]
    processors = LogitsProcessorList()
    if any(r.constraint is not None for r in requests):
        if masks is None:
            raise ValueError("output constraints are not supported with this model's tokenizer")
        if leader is not None and not stream:
            raise ValueError("beam search with an output constraint is not supported under tensor "
                             "parallelism (the other ranks could not follow the constrained beams)")
        processors.append(ConstraintProcessor([r.constraint for r in requests], width, masks,
                                              [r.params.eos_token_ids for r in requests]))
    seed = params.seed
    if leader is not None:  # every rank samples from the same random state
        seed = seed if seed is not None else secrets.randbits(63)
        leader.start_exact(Exact(ids.tolist(), mask.tolist(), settings, seed))
    if seed is not None:
        torch.manual_seed(seed)
    out = loaded.model.generate(
        input_ids=ids.to(loaded.device),
        attention_mask=mask.to(loaded.device),
        generation_config=config,
        logits_processor=processors,
        stopping_criteria=StoppingCriteriaList([_StreamingCriteria(rows, stream, rules, leader)]),
    )
    sequences = out.sequences[:, width:].tolist()
    logits = out.logits if params.logprobs else None
    for i, row in enumerate(rows):
        if stream:
            tokens = row.generated
        else:
            tokens = _trim(sequences[i], params.eos_token_ids, pad)
            row.generated = tokens
            row.request.stream.push(row.index, tokens, text=row.checker.add(tokens) if row.checker else "")
        if logits is not None and tokens:
            lp, top = _logprobs(logits, i, tokens, params.top_logprobs)
            row.request.stream.push(row.index, [], lp, top)
        if row.reason is None:  # generate ended the row itself (its own EOS or length check)
            hit_eos = bool(tokens) and tokens[-1] in params.eos_token_ids
            reason: FinishReason = "eos" if hit_eos else "length"
            if row.checker is not None and row.checker.stopped:  # beams: matched after generate
                reason = "stop"
            row.end(reason)
        if row.defer_end:  # the logprobs are out: now the finish event
            rules.end(row.request, row.index, row.reason or "length", row.checker)


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
