"""What a request asks of the adapter layer, and how it refuses.

API modules build an `AdapterRef` from their dialect's fields (Kaito `adapter`, OpenAI `model`,
LoRAX `adapter_id` / `adapter_source` / `merged_adapters` / `api_token`, MosaicML
`parameters.adapter`); the engine resolves it (`AdapterManager.resolve`). Every refusal is an
`AdapterError` whose status and message an API module can show as is (never a path outside the
allowed roots, never adapter contents).
"""

from __future__ import annotations

from dataclasses import dataclass

BASE = "base"  # the base model, no adapter
COMBINED = "combined"  # Kaito: the strength-weighted combination of the adapters found at start-up
MERGE_STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties")  # LoRAX merge_strategy
SIGN_METHODS = ("total", "frequency")  # LoRAX majority_sign_method
SOURCES = ("local", "hub")  # LoRAX adapter_source values this server serves


@dataclass(frozen=True)
class MergeRecipe:
    """LoRAX `merged_adapters`: a weighted merge of adapters, cached under the recipe itself."""

    ids: tuple[str, ...]
    weights: tuple[float, ...]
    strategy: str = "linear"  # linear | ties | dare_linear | dare_ties
    density: float = 1.0
    majority_sign_method: str = "total"  # total | frequency


@dataclass(frozen=True)
class AdapterRef:
    """What one request asks for. `name` None means DEFAULT_ADAPTER; "base" the base model;
    "combined" Kaito's combination; otherwise an adapter name, a folder under ADAPTERS_DIR, a
    path under an allowed root (`local`) or a hub id (`hub`)."""

    name: str | None = None
    source: str = "local"  # local | hub; anything else is refused (400)
    merge: MergeRecipe | None = None
    api_token: str | None = None  # a hub token (ADAPTER_ALLOW_REMOTE only); never logged

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"AdapterRef(name={self.name!r}, source={self.source!r}, merge={self.merge!r})"


ERROR_STATUS = {
    "unknown_adapter": 404,
    "invalid_adapter": 400,  # another base model (shapes, target modules), corrupt or missing file
    "forbidden_path": 400,  # outside ADAPTERS_DIR / ADAPTER_ROOTS (../, absolute, symlinks out)
    "unsupported_source": 400,
    "bad_merge": 400,  # mismatched ranks, weights, strategy, density
    "unauthorized": 401,
    "admin_disabled": 403,
    "adapter_capacity": 503,  # evicted again before use: more adapters in use than MAX_LOADED_ADAPTERS
}


class AdapterError(Exception):
    """A refusal an API module turns into a 4xx in its dialect's shape: `status`, a short `kind`
    (the keys of ERROR_STATUS) and a `message` that is safe to show to the client."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status if status is not None else ERROR_STATUS[kind]


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded adapter as `/v1/models` and the admin endpoints show it. `path` is the folder it
    was loaded from ("" for combinations and merges); `rank` its LoRA rank; `strength` its Kaito
    weight in `combined`; `parent` the base model's served name."""

    name: str
    path: str
    rank: int
    strength: float
    parent: str
