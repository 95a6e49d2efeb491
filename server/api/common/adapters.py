"""How every dialect names a LoRA adapter (translation only: no model calls).

Each dialect turns its own field into an `AdapterRef` on the request (Kaito `adapter`, OpenAI
`model`, LoRAX `adapter_id` / `adapter_source` / `merged_adapters` / `api_token`, MosaicML
`parameters.adapter`); the engine resolves it when the request is submitted, and an
`AdapterError` comes back here as an `ApiError` with its own status, which each dialect renders in
its own shape.
"""

from __future__ import annotations

from typing import Any

from server.adapters import BASE, AdapterError, AdapterInfo, AdapterRef, MergeRecipe
from server.api.common.errors import ApiError

# AdapterError kinds: they keep their own status in every dialect (TGI would otherwise turn a 400
# into its 422 "validation" status)
ADAPTER_KINDS = frozenset({"unknown_adapter", "invalid_adapter", "forbidden_path", "unsupported_source",
                           "bad_merge", "unauthorized", "admin_disabled", "adapter_capacity"})


def api_error(exc: AdapterError, param: str | None = None) -> ApiError:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return ApiError(exc.status, exc.message, kind=exc.kind, param=param, headers=headers)


def named(name: str | None) -> AdapterRef | None:
    """A plain adapter name (Kaito `adapter`, MosaicML `parameters.adapter`); None or "" = the
    server's DEFAULT_ADAPTER."""
    return AdapterRef(name=name) if name else None


def loaded(engine: Any) -> list[AdapterInfo]:
    """The adapters the engine holds now (none before the model is loaded)."""
    manager = getattr(engine, "adapters", None)
    return list(manager.list()) if manager is not None else []


def for_model(engine: Any, model: str | None, served_name: str) -> AdapterRef | None:
    """OpenAI `model`: the served name or "base" is the base model; any other name is an adapter
    (404 `model_not_found` when there is none by that name). A server with no adapter at all keeps
    accepting any `model` (clients often hard-code one) and serves DEFAULT_ADAPTER."""
    if model is None:
        return None
    if model in (served_name, BASE):
        return AdapterRef(name=BASE)
    if not loaded(engine):
        return None
    return AdapterRef(name=model)


def lorax(adapter_id: str | None, source: str | None, merged: Any,
          api_token: str | None) -> AdapterRef | None:
    """LoRAX's fields (already checked by tgi_protocol). `adapter_source` defaults to `local` here
    (LoRAX defaults to `hub`): adapters are mounted folders far more often than hub ids."""
    if merged is not None:
        recipe = MergeRecipe(ids=tuple(merged.ids), weights=tuple(float(w) for w in merged.weights),
                             strategy=merged.merge_strategy or "linear", density=merged.density,
                             majority_sign_method=merged.majority_sign_method or "total")
        return AdapterRef(name=None, source=source or "local", merge=recipe, api_token=api_token)
    if not adapter_id:  # LoRAX: no adapter_id is the default model
        return None
    return AdapterRef(name=adapter_id, source=source or "local", api_token=api_token)
