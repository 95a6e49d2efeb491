"""Run-time LoRA adapter loading, in vLLM's shape: `POST /v1/load_lora_adapter` {lora_name,
lora_path} and `POST /v1/unload_lora_adapter` {lora_name} (translation only).

Refused (403) unless ADMIN_API_KEYS is set, and (401) unless the caller presents one of those keys
(`Authorization: Bearer <key>`). Paths are confined by the adapter manager exactly as LoRAX's
`local` source (ADAPTERS_DIR and ADAPTER_ROOTS only). Success answers vLLM's plain-text line;
errors use the OpenAI shape.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from server.adapters import AdapterError
from server.api.common import adapters, engine_calls
from server.api.common.api_keys import match_key, presented_keys
from server.api.common.dialect import Dialect, current_engine
from server.api.common.errors import ApiError
from server.api.openai import routes as openai

dialect = Dialect("admin", openai.dialect.error_body, invalid=openai.dialect.invalid, url_prefix="/v1")
bp = dialect.bp


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    lora_name: str = Field(..., min_length=1, max_length=255)
    lora_path: str = Field(..., min_length=1, max_length=4096,
                           description="A folder under ADAPTERS_DIR or ADAPTER_ROOTS (relative: under "
                                       "ADAPTERS_DIR).")


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    lora_name: str = Field(..., min_length=1, max_length=255)
    lora_int_id: StrictInt | None = Field(None, description="Accepted for vLLM clients; ignored.")


def _authorize() -> None:
    keys = current_app.extensions["inferbox.settings"].admin_api_keys
    if not keys:
        raise ApiError(403, "the adapter admin endpoints are disabled: set ADMIN_API_KEYS to enable them",
                       kind="admin_disabled")
    if match_key(presented_keys(request.headers), keys) is None:
        raise ApiError(401, "an admin key is required: send `Authorization: Bearer <key>` with one of "
                       "ADMIN_API_KEYS", kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def _manager() -> Any:
    """The engine's AdapterManager, once the model is loaded (503 before)."""
    engine = current_engine()
    engine_calls.require_ready(engine)
    return engine.adapters


@bp.post("/load_lora_adapter")
def load_lora_adapter() -> Response:
    _authorize()
    body = dialect.read(LoadLoraAdapterRequest)
    manager = _manager()
    try:
        manager.load(body.lora_name, body.lora_path)
    except AdapterError as exc:
        raise adapters.api_error(exc, param="lora_path") from None
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.", mimetype="text/plain")


@bp.post("/unload_lora_adapter")
def unload_lora_adapter() -> Response:
    _authorize()
    body = dialect.read(UnloadLoraAdapterRequest)
    manager = _manager()
    try:
        manager.unload(body.lora_name)
    except AdapterError as exc:
        raise adapters.api_error(exc, param="lora_name") from None
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.", mimetype="text/plain")
