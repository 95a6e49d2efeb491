"""MosaicML wire types (requests validated by pydantic; responses documented for /openapi.json) and
MosaicML's generation defaults."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from server.api.common.errors import ApiError

MOSAIC_DEFAULTS: dict[str, Any] = {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "top_k": 50,
                                   "max_new_tokens": 256}
MAX_INPUTS = 64


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1, max_length=MAX_INPUTS)
    parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Any `generate` option; defaults temperature 0.8 (0 = greedy), top_p 0.95, top_k 50, "
                    "max_new_tokens 256. `stop` (str or list) cuts the output at a stop string; `adapter` "
                    "names the LoRA adapter (absent: DEFAULT_ADAPTER).")


class PredictStreamRequest(PredictRequest):
    inputs: list[Annotated[str, Field(min_length=1)]] = Field(..., min_length=1, max_length=1)


class PredictResponse(BaseModel):
    outputs: list[str]


class PredictStreamChunk(BaseModel):
    """One line of /predict_stream (newline-delimited JSON)."""

    outputs: list[str]


class ErrorResponse(BaseModel):
    error: str
    code: int


def error_body(exc: ApiError) -> tuple[int, dict[str, Any]]:
    """MosaicML's error shape, `{"error": message, "code": status}` (chat and handler kinds alike)."""
    return exc.status, {"error": exc.message, "code": exc.status}
