"""Embedding forward passes without padding: several inputs share one row of the batch.

sentence-transformers pads every input of a batch to the longest one, and on a CPU (no flash
attention, so none of its own unpadding) the padding is computed like real tokens: a quarter of
the work for sentences of 14 to 29 tokens. Here inputs are placed longest first, first-fit, into
rows of `row_tokens` (at least the longest input). Attention is block-diagonal (each input sees only
its own tokens), positions restart at every input, and the output tokens are gathered back into
the padded layout sentence-transformers' own pooling and normalization modules expect, which then
run unchanged (what it gains: docs/architecture/decisions.md).

The math per input is the same as padded; the floats differ only in summation order. Whether a
model's forward honours a 4D mask and explicit positions is not something to assume, so
`PackedEncoder.verified` runs probe inputs both ways at load and packing is used only when every
vector agrees with `encode` (cosine >= 0.99999 in float32); otherwise the plain path stays.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

ROW_TOKENS = 64  # tokens per packed row (or the longest input); attention cost grows with it
ATTENTION = ("sdpa", "eager")  # implementations that take an arbitrary 4D mask
PROBES = ("a", "The capital of France is Paris.", "graph theory near volcanoes",
          "Représentation d'une phrase en français, avec accents, un peu plus longue que les autres.",
          "3D ActionSLAM: wearable person tracking in multi-floor environments", "tea", "x y z w v u")
PROBE_PROMPT = "Represent the sentence for retrieval:"


@dataclass
class Layout:
    """Where each input sits: `rows[r]` lists (input, offset) pairs of packed row r."""

    rows: list[list[tuple[int, int]]]
    width: int  # tokens per row

    @classmethod
    def plan(cls, lengths: list[int], row_tokens: int = ROW_TOKENS) -> Layout:
        """First-fit decreasing: few rows, and no row wider than needed."""
        cap = max(row_tokens, max(lengths))
        rows: list[list[tuple[int, int]]] = []
        used: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
            r = next((r for r, u in enumerate(used) if u + lengths[i] <= cap), None)
            if r is None:
                rows.append([])
                used.append(0)
                r = len(rows) - 1
            rows[r].append((i, used[r]))
            used[r] += lengths[i]
        return cls(rows, max(used))


class PackedEncoder:
    """`embed(sequences)` for a SentenceTransformer whose first module is its Transformer."""

    def __init__(self, st_model: Any, row_tokens: int = ROW_TOKENS) -> None:
        self.st = st_model
        self.row_tokens = row_tokens
        self.model = st_model[0].auto_model
        params = inspect.signature(self.model.forward).parameters
        self.takes_positions = "position_ids" in params
        self.takes_types = "token_type_ids" in params
        self.position_offset = _position_offset(self.model)
        self.bool_mask = self.model.config._attn_implementation == "sdpa"
        self.after = list(st_model)[1:]  # pooling, normalization, ...

    @classmethod
    def verified(cls, st_model: Any, row_tokens: int = ROW_TOKENS) -> PackedEncoder | None:
        """A packer when this model gives `encode`'s vectors packed, else None (and a log line why)."""
        try:
            first = st_model[0]
            impl = getattr(first.auto_model.config, "_attn_implementation", None)
            if impl not in ATTENTION:
                raise ValueError(f"attention implementation {impl!r} takes no block-diagonal mask")
            packer = cls(st_model, row_tokens)
            worst = min(packer._agreement(None), packer._agreement(PROBE_PROMPT))
        except Exception as exc:  # any model that does not fit the recipe keeps the plain path
            log.info("embedding inputs are padded per batch (packing does not apply to this model: %s)",
                     type(exc).__name__ if not isinstance(exc, ValueError) else exc)
            return None
        need = 0.99999 if packer.model.dtype == torch.float32 else 0.999
        if worst < need:
            log.info("embedding inputs are padded per batch (packed vectors differ: cosine %.6f)", worst)
            return None
        log.info("embedding inputs are packed %d tokens a row (no padding)", row_tokens)
        return packer

    def _agreement(self, prompt: str | None) -> float:
        with torch.inference_mode():
            want = self.st.encode(list(PROBES), prompt=prompt, batch_size=len(PROBES), convert_to_tensor=True,
                                  show_progress_bar=False)
            # rows as narrow as the longest probe, so several probes share each row
            got = self.embed_texts(list(PROBES), prompt, row_tokens=1)
        return float(torch.nn.functional.cosine_similarity(want.float(), got.float(), dim=-1).min())

    # ------------------------------------------------------------------ the batch thread
    def embed_texts(self, texts: list[str], prompt: str | None = None,
                    row_tokens: int | None = None) -> torch.Tensor:
        """sentence-transformers' tokenization (prompt, truncation, special tokens), then packed."""
        features = self.st.preprocess(texts, prompt=prompt)
        ids, mask = features["input_ids"], features["attention_mask"].bool()
        types = features.get("token_type_ids")
        seqs = [ids[k][mask[k]] for k in range(len(texts))]
        kinds = [types[k][mask[k]] for k in range(len(texts))] if types is not None else None
        return self.embed(seqs, kinds, features.get("prompt_length"), row_tokens)

    def embed(self, seqs: list[torch.Tensor], types: list[torch.Tensor] | None = None,
              prompt_length: int | None = None, row_tokens: int | None = None) -> torch.Tensor:
        """Sentence embeddings of token-id sequences (special tokens included), one forward pass."""
        lengths = [len(s) for s in seqs]
        layout = Layout.plan(lengths, self.row_tokens if row_tokens is None else row_tokens)
        n_rows, width, longest = len(layout.rows), layout.width, max(lengths)
        ids = torch.zeros((n_rows, width), dtype=torch.long)
        kinds = torch.zeros((n_rows, width), dtype=torch.long)
        positions = torch.zeros((n_rows, width), dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(n_rows, 1, 1)  # padding sees itself: no empty row
        gather = torch.zeros((len(seqs), longest), dtype=torch.long)
        attention = torch.zeros((len(seqs), longest), dtype=torch.long)
        steps = torch.arange(width)
        for r, row in enumerate(layout.rows):
            for i, start in row:
                n, end = lengths[i], start + lengths[i]
                ids[r, start:end] = seqs[i]
                if types is not None:
                    kinds[r, start:end] = types[i]
                positions[r, start:end] = steps[:n]
                allowed[r, start:end, start:end] = True
                gather[i, :n] = r * width + start + steps[:n]
                attention[i, :n] = 1
        device = self.model.device
        mask = allowed[:, None].to(device)
        if not self.bool_mask:  # eager attention adds the mask to the scores
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=device).masked_fill(
                ~mask, torch.finfo(self.model.dtype).min)
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask}
        if self.takes_positions:
            kwargs["position_ids"] = (positions + self.position_offset).to(device)
        if self.takes_types:
            kwargs["token_type_ids"] = kinds.to(device)
        hidden = self.model(**kwargs).last_hidden_state
        attention = attention.to(device)
        tokens = hidden.reshape(n_rows * width, -1)[gather.to(device)] * attention[..., None].to(hidden.dtype)
        features: dict[str, Any] = {"token_embeddings": tokens, "attention_mask": attention,
                                    "input_ids": ids.reshape(-1)[gather].to(device)}
        if prompt_length is not None:
            features["prompt_length"] = prompt_length
        for module in self.after:
            features = module(features)
        return features["sentence_embedding"]


def _position_offset(model: torch.nn.Module) -> int:
    """RoBERTa-family embeddings (XLM-R, MPNet, ...) count positions from padding_idx + 1."""
    for module in model.modules():
        pad = getattr(module, "padding_idx", None)
        table = getattr(module, "position_embeddings", None)
        if isinstance(pad, int) and isinstance(table, torch.nn.Embedding):
            return pad + 1
    return 0
