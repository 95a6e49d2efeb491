"""The running batch of continuous batching: left-padded rows over one KV cache.

Only this module edits the KV cache. State, aligned along the batch axis:
- `mask [B, T]`: left-padded attention mask over the cached tokens (zeros = padding);
- the `DynamicCache`: per layer keys/values `[B, heads, T, head_dim]`, padded like the mask;
- `next_ids [B, 1]`: each row's newest token, not yet in the cache; its position is the row's
  real length (positions count real tokens only, so a padded row sees what it would see alone);
- `rows`: per-sequence state (the policy's sequence, its sampler, its length in the cache).
`prefill` builds a batch from new rows, `concatenate` merges one into another (padding the shorter
on the left), `filter` drops finished rows and trims columns that are padding for every kept row.
See shared notes "batching-algorithm.md" for the approach (TGI's CausalLMBatch).

Shared prefixes: when every new row's prompt starts with the same `Prefix` (say a chat template's
system prompt) whose keys/values were computed once, `prefill` copies them into the first columns
and runs the forward on the suffixes only. A row is then `[prefix][padding][suffix]`: the padding
sits in the middle, which the attention mask and the real-token position ids handle exactly as
left padding; `filter` trims by the mask, not by row lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from server.engine.request import GenerationRequest
from server.engine.sampling import RowSampler
from server.engine.step import Sequence

# Decoder-only architectures whose cache is a plain list of `[B, heads, T, head_dim]` layers and
# whose forward takes explicit position ids: the surgery below is exact for them.
PROVEN_MODEL_TYPES = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "granite",
    "olmo", "olmo2", "gemma", "stablelm", "smollm3",
})


def supports_batching(model: PreTrainedModel) -> tuple[bool, str]:
    """Whether this model's requests may use the batched path (else: exact `generate`)."""
    config = model.config
    if config.model_type not in PROVEN_MODEL_TYPES:
        return False, f"cache surgery is not proven for model type {config.model_type!r}"
    cache = DynamicCache(config=config)
    if cache.layers and any(type(layer) is not DynamicLayer for layer in cache.layers):
        return False, "the model uses sliding-window or hybrid cache layers"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False, "the model uses a sliding attention window"
    return True, ""


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that appends into spare capacity instead of concatenating at every step.

    `DynamicLayer.update` copies the whole layer cache (`torch.cat`) for each new token; here a
    decode step writes one column and the copy happens once every `HEADROOM` steps. `keys` and
    `values` stay what transformers expects: views `[B, heads, T, head_dim]` of the valid part.
    """

    HEADROOM = 64

    def __init__(self) -> None:
        super().__init__()
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, room: int = 0) -> None:
        """Take these tensors as the layer's whole content (after batch surgery), with spare
        capacity for at least `room` more columns."""
        b, h, t, d = keys.shape
        spare = max(self.HEADROOM, room)
        self._k = keys.new_empty((b, h, t + spare, d))
        self._v = values.new_empty((b, h, t + spare, values.shape[-1]))
        self._k[:, :, :t] = keys
        self._v[:, :, :t] = values
        self._len = t
        self.keys, self.values = self._k[:, :, :t], self._v[:, :, :t]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self._k is None:
            self.adopt(key_states, value_states)
            return self.keys, self.values
        t, n = self._len, key_states.shape[-2]
        if t + n > self._k.shape[-2]:  # out of room: a prefill on top of a prefix, or every HEADROOM steps
            self.adopt(self._k[:, :, :t], self._v[:, :, :t], room=n)
        self._k[:, :, t:t + n] = key_states
        self._v[:, :, t:t + n] = value_states
        self._len = t + n
        self.keys, self.values = self._k[:, :, :t + n], self._v[:, :, :t + n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len

    def truncate(self, length: int) -> None:
        """Forget the columns from `length` on (a speculative step's rejected tail)."""
        self._len = min(self._len, length)
        if self._k is not None:
            self.keys, self.values = self._k[:, :, :self._len], self._v[:, :, :self._len]


def new_cache(model: PreTrainedModel) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def _set_kv(layer: DynamicLayer, keys: torch.Tensor, values: torch.Tensor, room: int = 0) -> None:
    if isinstance(layer, GrowingLayer):
        layer.adopt(keys, values, room)
    else:
        layer.keys, layer.values = keys, values


def input_device(model: PreTrainedModel) -> torch.device:
    """Where inputs go: the embedding's device (the first device of an accelerate-sharded model)."""
    return model.get_input_embeddings().weight.device


@dataclass(eq=False)
class Prefix:
    """Keys/values of a token prefix computed alone (positions 0..P-1), per layer `[1, heads, P, dim]`."""

    ids: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return len(self.ids)

    def covers(self, input_ids: list[int]) -> bool:
        """This prefix starts the prompt and leaves at least one token to prefill."""
        n = len(self.ids)
        return len(input_ids) > n and tuple(input_ids[:n]) == self.ids

    @classmethod
    def compute(cls, model: PreTrainedModel, ids: list[int]) -> Prefix:
        device = input_device(model)
        tokens = torch.tensor([ids], dtype=torch.long, device=device)
        positions = torch.arange(len(ids), device=device).unsqueeze(0)
        cache = new_cache(model)
        out = model(input_ids=tokens, attention_mask=torch.ones_like(tokens), position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        layers = [(layer.keys.clone(), layer.values.clone()) for layer in out.past_key_values.layers]
        return cls(tuple(ids), layers)


@dataclass(eq=False)
class Row:
    """One sequence inside the batch: the policy's `Sequence`, its sampler and its cache length."""

    seq: Sequence
    sampler: RowSampler
    length: int  # real tokens in the cache for this row

    @property
    def request(self) -> GenerationRequest:
        return self.seq.request

    @property
    def prompt(self) -> list[int]:
        return self.seq.request.input_ids


@dataclass(eq=False)
class CacheRow:
    """A row as a tensor-parallel follower rank holds it: only what the cache needs (rank 0 keeps
    the sequence and its sampler; server/engine/lockstep.py)."""

    prompt: list[int]
    length: int


class Batch:
    def __init__(self, rows: list[Row], mask: torch.Tensor, cache: DynamicCache,
                 next_ids: torch.Tensor) -> None:
        self.rows = rows
        self.mask = mask
        self.cache = cache
        self.next_ids = next_ids
        self._step_start = 0  # the first column of the last `verify` step

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    # building
    @classmethod
    def prefill(cls, model: PreTrainedModel, rows: list[Row] | list[CacheRow], pad_id: int,
                prefix: Prefix | None = None) -> tuple[Batch, torch.Tensor]:
        """Run the rows' prompts as one forward; return the batch and last logits `[B, V]`.

        Without a prefix the prompts are left-padded; with one (it must cover every prompt), its
        keys/values fill the first columns and only the suffixes, left-padded, are computed."""
        device = input_device(model)
        p = len(prefix) if prefix is not None else 0
        width = max(r.length for r in rows) - p
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), p + width), dtype=torch.long)
        mask[:, :p] = 1
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = r.length - p
            ids[i, width - n:] = torch.tensor(r.prompt[p:], dtype=torch.long)
            mask[i, p + width - n:] = 1
            positions[i, width - n:] = torch.arange(p, r.length)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        cache = new_cache(model)
        if prefix is not None:
            for layer, (k, v) in zip(cache.layers, prefix.layers, strict=True):
                _set_kv(layer, k.expand(len(rows), -1, -1, -1).contiguous(),
                        v.expand(len(rows), -1, -1, -1).contiguous(), room=width)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        empty = torch.zeros((len(rows), 1), dtype=torch.long, device=device)
        return cls(rows, mask, out.past_key_values, empty), out.logits[:, -1, :]

    def decode(self, model: PreTrainedModel) -> torch.Tensor:
        """One step: feed every row's newest token; return last logits `[B, V]`."""
        device = self.mask.device
        positions = torch.tensor([[r.length] for r in self.rows], dtype=torch.long, device=device)
        ones = torch.ones((len(self.rows), 1), dtype=self.mask.dtype, device=device)
        mask = torch.cat([self.mask, ones], 1)
        out = model(input_ids=self.next_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.mask = mask
        self.cache = out.past_key_values
        for r in self.rows:
            r.length += 1
        return out.logits[:, -1, :]

    def verify(self, model: PreTrainedModel, drafts: list[list[int]]) -> torch.Tensor:
        """One speculative step: feed every row's newest token followed by its draft (shorter drafts
        padded on the right, masked); return logits `[B, 1 + longest draft, V]`. `accept` then
        keeps each row's valid columns."""
        device = self.mask.device
        k = max(len(d) for d in drafts)
        ids = torch.full((len(self.rows), k + 1), 0, dtype=torch.long)
        block = torch.zeros((len(self.rows), k + 1), dtype=self.mask.dtype)
        ids[:, 0] = self.next_ids[:, 0].cpu()
        for i, d in enumerate(drafts):
            if d:
                ids[i, 1:1 + len(d)] = torch.tensor(d, dtype=torch.long)
            block[i, :1 + len(d)] = 1
        positions = torch.tensor([[r.length + j for j in range(k + 1)] for r in self.rows], dtype=torch.long)
        mask = torch.cat([self.mask, block.to(device)], 1)
        out = model(input_ids=ids.to(device), attention_mask=mask, position_ids=positions.to(device),
                    past_key_values=self.cache, use_cache=True, logits_to_keep=k + 1)
        self._step_start = self.width
        self.mask = mask
        self.cache = out.past_key_values
        return out.logits

    def accept(self, kept: list[int]) -> None:
        """After `verify`: row i keeps the first `kept[i]` columns of the step (its newest token and
        the accepted draft); the rest are masked out, and columns no row kept are dropped, so the
        cache holds exactly what one-token steps would have put there (a row that kept fewer than
        another has masked columns in the middle, handled like padding)."""
        width = int(self.mask.shape[1])
        start = self._step_start
        for i, (r, n) in enumerate(zip(self.rows, kept, strict=True)):
            self.mask[i, start + n:] = 0
            r.length += n
        keep = start + max(kept)
        if keep < width:
            self.mask = self.mask[:, :keep]
            for layer in self.cache.layers:
                if isinstance(layer, GrowingLayer):
                    layer.truncate(keep)
                elif layer.keys is not None:
                    layer.keys, layer.values = layer.keys[:, :, :keep], layer.values[:, :, :keep]

    def set_next(self, tokens: list[int]) -> None:
        self.next_ids = torch.tensor(tokens, dtype=torch.long, device=self.mask.device).unsqueeze(1)

    # surgery
    def drop(self, leaving: set[int]) -> None:
        """Drop the rows whose sequence's `id` is in `leaving`."""
        if leaving:
            self.filter([i for i, r in enumerate(self.rows) if id(r.seq) not in leaving])

    def filter(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`; drop cache columns that are padding for all of them."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.mask = self.mask[:0]
            self.next_ids = self.next_ids[:0]
            self.cache = DynamicCache()
            return
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        width = mask.shape[1] - int(mask.any(0).int().argmax())  # from the first column any row uses
        self.mask = mask[:, -width:]
        self.next_ids = self.next_ids.index_select(0, index)
        for layer in self.cache.layers:
            if layer.is_initialized and layer.keys is not None and layer.keys.numel():
                dev = layer.keys.device
                idx = index.to(dev)
                _set_kv(layer, layer.keys.index_select(0, idx)[:, :, -width:, :],
                        layer.values.index_select(0, idx)[:, :, -width:, :])

    def concatenate(self, other: Batch) -> None:
        """Append `other`'s rows after ours, left-padding the narrower cache to the wider."""
        if not self.rows:
            self.rows, self.mask, self.cache = other.rows, other.mask, other.cache
            self.next_ids = other.next_ids
            return
        width = max(self.width, other.width)
        b1, b2 = len(self.rows), len(other.rows)
        mask = self.mask.new_zeros((b1 + b2, width))
        mask[:b1, width - self.width:] = self.mask
        mask[b1:, width - other.width:] = other.mask
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            merged = []
            for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
                m = a.new_zeros((b1 + b2, a.shape[1], width, a.shape[3]))
                m[:b1, :, width - a.shape[2]:] = a
                m[b1:, :, width - b.shape[2]:] = b.to(a.device)
                merged.append(m)
            _set_kv(mine, merged[0], merged[1])
        self.mask = mask
        self.next_ids = torch.cat([self.next_ids, other.next_ids], 0)
        self.rows = self.rows + other.rows
