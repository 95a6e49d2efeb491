"""Request and response models of the embedding endpoints: OpenAI `/v1/embeddings` and TEI `/embed`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenIds = list[Annotated[StrictInt, Field(ge=0)]]


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. `model` may be anything; answers name the served model."""

    model_config = ConfigDict(extra="ignore")

    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] = Field(
        ..., description="a string, a list of strings, token ids, or a list of token-id lists")
    model: StrictStr | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1, description="only for models trained to be truncated")
    user: StrictStr | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class EmbedRequest(BaseModel):
    """Hugging Face text-embeddings-inference's `/embed`."""

    model_config = ConfigDict(extra="ignore")

    inputs: StrictStr | list[StrictStr]
    normalize: StrictBool = True
    truncate: StrictBool = False
    dimensions: StrictInt | None = Field(None, ge=1)


class EmbedError(BaseModel):
    error: str
    error_type: str
