"""The built-in embedding kind: a model handler over sentence-transformers.

sentence-transformers knows each checkpoint's pooling, normalization and prompts, so vectors equal
`SentenceTransformer.encode` on the same inputs. An `[instruction, text]` pair is encoded with the
instruction as sentence-transformers' `prompt`; instructor-style models leave it out of the mean
pooling (`include_prompt: false` in the preset, `POOLING_INCLUDE_PROMPT`).

One `predict` call embeds a whole batch: rows sharing a prompt go through one forward pass (one per
prompt in the batch, since pooling takes one prompt length per pass); rows given as token ids
through one of their own. Where the model passes the load-time check, the pass is packed: several
inputs share a row instead of each being padded to the longest (server/kinds/packing.py); a single
input, or a model that fails the check, goes through `encode` itself.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch

from server.config import Settings
from server.kinds.base import ModelRequest
from server.kinds.packing import PackedEncoder

log = logging.getLogger(__name__)

# Output constraints (as the text dialects name them) mean nothing for a vector: refused with a 400
# rather than ignored, so that a client never believes a constraint was applied.
CONSTRAINT_PARAMETERS = ("response_format", "grammar", "structured_outputs", "guided_json", "guided_regex",
                         "guided_choice", "guided_grammar", "tools", "tool_choice")


@dataclass(frozen=True)
class EmbedInput:
    """One validated input: text (with an optional instruction) or token ids."""

    text: str | None = None
    prompt: str | None = None
    token_ids: tuple[int, ...] | None = None
    normalize: bool = False
    truncate: bool = False
    dimensions: int | None = None


class SentenceEmbedder:
    """`predict([{"input": text | [instruction, text] | {"token_ids": [...]}, "parameters": {...}}])`
    -> one list of floats per input. Parameters: `normalize` (L2, default false: the model's own
    output), `truncate` (cut inputs longer than the model's limit instead of refusing them),
    `dimensions` (Matryoshka models only)."""

    def __init__(self, settings: Settings | None = None, model_path: str | None = None,
                 include_prompt: bool | None = None, dimensions: list[int] | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        settings = settings or Settings()
        path = model_path or settings.model_path
        cuda = torch.cuda.is_available() and settings.device_map != "cpu"
        device = "cuda" if cuda else "cpu"
        dtype = settings.torch_dtype
        if dtype == "auto":
            dtype = "auto" if cuda else "float32"
        self.model = SentenceTransformer(
            path, device=device, local_files_only=not settings.allow_remote_files,
            trust_remote_code=settings.trust_remote_code,
            model_kwargs={"dtype": dtype if dtype == "auto" else getattr(torch, dtype)},
        )
        self.model.eval()
        include = settings.pooling_include_prompt if include_prompt is None else include_prompt
        if include is not None:
            self.model.set_pooling_include_prompt(include)
        self.include_prompt = include if include is not None else True
        limit = int(self.model.get_max_seq_length() or 512)
        if settings.context_length:
            limit = min(limit, settings.context_length)
            self.model.max_seq_length = limit
        self.max_tokens = limit
        self.dimension = int(self.model.get_embedding_dimension())
        self.dimensions = tuple(dimensions if dimensions is not None else settings.embedding_dimensions)
        self.normalized = type(self.model[-1]).__name__ == "Normalize"
        self.tokenizer = self.model.tokenizer
        # Counting tokens happens on HTTP threads while `encode` runs on the batch thread, and a fast
        # tokenizer's truncation/padding state is per object (encode sets it on every call): count
        # with a copy of the Rust tokenizer that nothing ever reconfigures.
        counter = copy.deepcopy(self.tokenizer.backend_tokenizer)
        counter.no_truncation()
        counter.no_padding()
        self._counter = counter
        self.vocab_size = len(self.tokenizer)
        self.device = torch.device(device)
        self.dtype = next(self.model.parameters()).dtype
        self.packer = PackedEncoder.verified(self.model) if settings.embed_packing else None

    # ------------------------------------------------------------------ validation (HTTP threads)
    def parse(self, request: ModelRequest) -> EmbedInput:
        """Validate one input; ValueError says what is wrong (a 400 for the caller)."""
        params = request.get("parameters") or {}
        if not isinstance(params, dict):
            raise ValueError("parameters must be an object")
        constrained = [k for k in CONSTRAINT_PARAMETERS if params.get(k) is not None]
        if constrained:
            raise ValueError(f"{constrained[0]}: output constraints do not apply to an embedding model "
                             "(it returns vectors, not text)")
        normalize, truncate = params.get("normalize", False), params.get("truncate", False)
        dims = params.get("dimensions")
        for name, value in (("normalize", normalize), ("truncate", truncate)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        if dims is not None:
            if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
                raise ValueError("dimensions must be a positive integer")
            if dims != self.dimension and not self.dimensions:
                raise ValueError(f"this model does not support `dimensions` (its vectors have "
                                 f"{self.dimension}; it was not trained to be truncated)")
            if dims > self.dimension:
                raise ValueError(f"dimensions must be at most {self.dimension}")
            if dims == self.dimension:
                dims = None
        value = request.get("input")
        common = {"normalize": normalize, "truncate": truncate, "dimensions": dims}
        if isinstance(value, str):
            if not value:
                raise ValueError("an input must not be empty")
            return EmbedInput(text=value, **common)
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"an [instruction, text] pair has exactly 2 strings; got {len(value)} items")
            if not all(isinstance(v, str) for v in value):
                raise ValueError("an [instruction, text] pair holds two strings")
            if not value[1]:
                raise ValueError("the text of an [instruction, text] pair must not be empty")
            return EmbedInput(text=value[1], prompt=value[0] or None, **common)
        if isinstance(value, dict) and "token_ids" in value:
            ids = value["token_ids"]
            if not isinstance(ids, (list, tuple)) or not ids:
                raise ValueError("token ids must be a non-empty list of integers")
            vocab = self.vocab_size
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab for i in ids):
                raise ValueError(f"token ids must be integers in [0, {vocab})")
            return EmbedInput(token_ids=tuple(ids), **common)
        raise ValueError("an input is a string or an [instruction, text] pair of strings")

    def count_tokens(self, item: EmbedInput) -> int:
        if item.token_ids is not None:
            return len(item.token_ids)
        text = (item.prompt or "") + (item.text or "")
        return len(self._counter.encode(text, add_special_tokens=True).ids)

    def cost(self, request: ModelRequest) -> int:
        """Tokens this input adds to a batch (after truncation); refuses an input that is too long
        unless `truncate` is set."""
        item = self.parse(request)
        n = self.count_tokens(item)
        if n > self.max_tokens and not item.truncate:
            raise ValueError(f"the input is {n} tokens; this model accepts at most {self.max_tokens} "
                             f"(send truncate: true to cut it)")
        return min(n, self.max_tokens)

    def describe(self) -> dict[str, Any]:
        return {"kind": "embedding", "dimension": self.dimension, "max_input_tokens": self.max_tokens,
                "dimensions": list(self.dimensions), "normalized": self.normalized,
                "pooling": self._pooling(), "include_prompt": self.include_prompt,
                "dtype": str(self.dtype).removeprefix("torch."), "device": self.device.type}

    def _pooling(self) -> str:
        for module in self.model:
            mode = getattr(module, "pooling_mode", None)
            if mode:
                return str(mode if isinstance(mode, str) else mode[0])
        return "unknown"

    # ------------------------------------------------------------------ the batch (engine thread)
    def predict(self, model_requests: list[ModelRequest]) -> list[list[float]]:
        items = [self.parse(r) for r in model_requests]
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[str | None, list[int]] = {}
        id_rows: list[int] = []
        for i, item in enumerate(items):
            if item.token_ids is not None:
                id_rows.append(i)
            else:
                groups.setdefault(item.prompt, []).append(i)
        with torch.inference_mode():
            for prompt, rows in groups.items():
                texts = [items[i].text or "" for i in rows]
                if self.packer is not None and len(rows) > 1:
                    vecs = self.packer.embed_texts(texts, prompt)
                else:
                    vecs = self.model.encode(texts, prompt=prompt, batch_size=len(rows),
                                             convert_to_tensor=True, show_progress_bar=False)
                for i, v in zip(rows, vecs, strict=True):
                    out[i] = v
            if id_rows:
                for i, v in zip(id_rows, self._embed_ids([items[i].token_ids for i in id_rows]), strict=True):
                    out[i] = v
        return [self._finish(v, item) for v, item in zip(out, items, strict=True)]

    def _embed_ids(self, rows: list[tuple[int, ...] | None]) -> torch.Tensor:
        """Token ids as given (they should include the model's special tokens, as its tokenizer's
        encode adds them), cut to the model's limit."""
        seqs = [list(r or ())[: self.max_tokens] for r in rows]
        if self.packer is not None:
            return self.packer.embed([torch.tensor(s) for s in seqs])
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for k, s in enumerate(seqs):
            ids[k, : len(s)] = torch.tensor(s)
            mask[k, : len(s)] = 1
        features = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        return self.model.forward(features)["sentence_embedding"]

    def _finish(self, vec: torch.Tensor | None, item: EmbedInput) -> list[float]:
        assert vec is not None
        v = vec.float()
        if item.dimensions is not None:
            v = v[: item.dimensions]
        if item.normalize or (item.dimensions is not None and self.normalized):
            v = torch.nn.functional.normalize(v, dim=-1)
        return v.cpu().tolist()
