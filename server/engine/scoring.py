"""Log-probabilities of tokens the model is given rather than generates (one forward pass).

TGI's `decoder_input_details` and OpenAI's `echo` + `logprobs` report how likely each prompt token
was; `generate` never computes that, so this runs one plain forward pass over the sequence. It also
scores a finished completion (prompt + generated ids) when an engine did not deliver per-token
logprobs: the values are the raw model distribution, as `output_logits` would give them.

This is a read-only forward pass on the caller's thread, serialised by a lock; it does not touch the
engine loop's batch state. The continuous-batching engine may fold it into its own loop as a request
kind without changing this signature.
"""

from __future__ import annotations

import threading

import torch

from server.model.loader import LoadedModel

_lock = threading.Lock()

TopLogprobs = list[list[tuple[int, float]]]


@torch.inference_mode()
def token_logprobs(loaded: LoadedModel, input_ids: list[int], start: int = 1,
                   top_n: int = 0) -> tuple[list[float], TopLogprobs | None]:
    """Logprob of input_ids[k] given input_ids[:k], for k in [max(start, 1), len(input_ids)).

    With `top_n`, also the `top_n` most likely (token id, logprob) pairs at each of those positions.
    """
    start = max(1, start)
    if len(input_ids) <= start:
        return [], ([] if top_n else None)
    ids = torch.tensor([input_ids], dtype=torch.long, device=loaded.device)
    with _lock, loaded.exclusive():
        logits = loaded.model(input_ids=ids, use_cache=False).logits[0]
    logp = torch.log_softmax(logits[start - 1:-1].float(), dim=-1)
    targets = torch.tensor(input_ids[start:], dtype=torch.long, device=logp.device)
    chosen = logp.gather(1, targets[:, None])[:, 0].tolist()
    if not top_n:
        return [float(v) for v in chosen], None
    values, idx = logp.topk(top_n, dim=-1)
    tops = [[(int(t), float(v)) for t, v in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(idx.tolist(), values.tolist(), strict=True)]
    return [float(v) for v in chosen], tops
