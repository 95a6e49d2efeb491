"""Per-row processors against transformers' own, on random logits (no model needed)."""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from server.engine.request import GenerationParams
from server.engine.sampling import RowSampler, choose

V = 50
CPU = torch.device("cpu")


def _history(seed: int, n: int = 30) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12, (n,), generator=g).tolist()  # small alphabet: many repeats


def test_history_processors_match_transformers():
    prompt = _history(1)
    p = GenerationParams(max_new_tokens=8, min_new_tokens=5, repetition_penalty=1.7, no_repeat_ngram_size=3,
                         eos_token_ids=(3, 7))
    row = RowSampler(p, prompt, 0, CPU)
    for t in (4, 5, 4):
        row.append(t)
    ids = torch.tensor([prompt + [4, 5, 4]])
    scores = torch.randn(1, V, generator=torch.Generator().manual_seed(2))
    ref = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.7),
        NoRepeatNGramLogitsProcessor(3),
        MinNewTokensLengthLogitsProcessor(len(prompt), 5, [3, 7]),
    ])(ids, scores.clone())
    mine = scores.clone()[0]
    row.process(mine)
    assert torch.equal(mine, ref[0])
    assert torch.isinf(mine).sum() >= 2  # EOS masked and at least one n-gram banned: the test bites


def test_rows_with_different_parameters_in_one_batch():
    greedy = GenerationParams(max_new_tokens=4)
    sampled = GenerationParams(max_new_tokens=4, do_sample=True, temperature=0.7, top_k=10, top_p=0.9, seed=5)
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(3))
    rows = [RowSampler(greedy, [1, 2], 0, CPU), RowSampler(sampled, [1, 2], 0, CPU),
            RowSampler(sampled, [1, 2], 1, CPU)]
    choice = choose(logits.clone(), rows, [2, -1, 0])
    assert choice.tokens[0] == int(logits[0].argmax())
    warped = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.9)])(
        None, logits[1:2].clone())
    expect = torch.multinomial(torch.softmax(warped, -1)[0], 1, generator=torch.Generator().manual_seed(5))
    assert choice.tokens[1] == int(expect)
    assert choice.logprobs[0] == float(torch.log_softmax(logits[0], -1).max())
    assert len(choice.top_logprobs[0]) == 2 and choice.logprobs[1] is None and choice.top_logprobs[2] is None
