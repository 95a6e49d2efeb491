"""LoRA adapters: chosen per request, mixed in one batch, loaded at start-up and at run time."""

from server.adapters.types import (
    BASE,
    COMBINED,
    AdapterError,
    AdapterInfo,
    AdapterRef,
    MergeRecipe,
)

__all__ = ["BASE", "COMBINED", "AdapterError", "AdapterInfo", "AdapterRef", "MergeRecipe"]
