"""Read a MosaicML deployment YAML (`DEPLOYMENT_YAML`) into settings.

Only the model section matters here: `model.model_handler` (the class), `model.model_parameters`
(its constructor's keyword arguments) and `model.download_parameters.hf_path`, read as a local path
(this server downloads nothing at start) and served as MODEL_PATH: a handler whose constructor takes
`model_name_or_path` and whose parameters do not set it gets that folder. The YAML's own folder is
searched for the handler's module (unless MODEL_HANDLER_DIR says otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.errors import ConfigError


class DownloadParameters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    hf_path: str | None = None


class ModelSection(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_handler: str
    model_parameters: dict[str, Any] = Field(default_factory=dict)
    download_parameters: DownloadParameters = Field(default_factory=DownloadParameters)


class Deployment(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    model: ModelSection


def read_deployment(path: str) -> dict[str, Any]:
    """Settings fields from the YAML; raises ConfigError (a ValueError) with the reason."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        dep = Deployment.model_validate(data)
    except OSError as exc:
        raise ConfigError(f"DEPLOYMENT_YAML: cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"DEPLOYMENT_YAML {path} is not a MosaicML deployment: {exc}") from None
    out: dict[str, Any] = {"model_handler": dep.model.model_handler,
                           "model_parameters": dict(dep.model.model_parameters),
                           # a handler module may sit beside its YAML
                           "model_handler_dir": str(Path(path).resolve().parent)}
    hf_path = dep.model.download_parameters.hf_path
    if hf_path:
        local = Path(hf_path)
        if not local.is_absolute():
            local = Path(path).resolve().parent / local
        if not local.exists():
            raise ConfigError(f"DEPLOYMENT_YAML: download_parameters.hf_path {hf_path!r} is not a local "
                              f"path (this server downloads nothing at start; mount the weights)")
        out["model_path"] = str(local)
    if dep.name:
        out["served_model_name"] = dep.name
    return out
