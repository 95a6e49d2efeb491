"""Find and build a handler class from `MODEL_HANDLER` (`pkg.module:Class` or `pkg.module.Class`)."""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any

from server.config import ConfigError, Settings

EMBEDDING_HANDLER = "server.kinds.embedding:SentenceEmbedder"


def split_spec(spec: str) -> tuple[str, str]:
    spec = spec.strip()
    if ":" in spec:
        module, _, attr = spec.partition(":")
    else:
        module, _, attr = spec.rpartition(".")
    if not module or not attr or not all(p.isidentifier() for p in (*module.split("."), *attr.split("."))):
        raise ConfigError(f"MODEL_HANDLER={spec!r} is not an import path: use pkg.module:Class "
                          f"(or pkg.module.Class)")
    return module, attr


def resolve(spec: str, handler_dir: str | None = None) -> type:
    """The class named by `spec`, imported from MODEL_HANDLER_DIR (if set) or PYTHONPATH.
    Raises ConfigError with a message an operator can act on."""
    module_name, attr = split_spec(spec)
    if handler_dir and handler_dir not in sys.path:
        sys.path.insert(0, handler_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = f"MODEL_HANDLER_DIR={handler_dir} or " if handler_dir else ""
        raise ConfigError(f"MODEL_HANDLER={spec!r}: cannot import {module_name!r} ({exc}); put it on "
                          f"{where}PYTHONPATH") from None
    except Exception as exc:  # the user's module itself failed to import
        raise ConfigError(f"MODEL_HANDLER={spec!r}: importing {module_name!r} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"MODEL_HANDLER={spec!r}: {module_name!r} has no attribute {attr!r}")
    if not isinstance(obj, type) or not callable(getattr(obj, "predict", None)):
        raise ConfigError(f"MODEL_HANDLER={spec!r} must name a class with a predict(model_requests) method")
    return obj


def handler_spec(settings: Settings) -> str | None:
    """The class this server's model kind is served by; None for the chat engine."""
    if settings.model_kind == "embedding":
        return settings.model_handler or EMBEDDING_HANDLER
    if settings.model_kind == "handler":
        return settings.model_handler
    return None


def build(settings: Settings) -> Any:
    """Build the handler once. The built-in embedding kind gets the server's own settings too."""
    spec = handler_spec(settings)
    assert spec is not None
    cls = resolve(spec, settings.model_handler_dir)
    params = dict(settings.model_parameters)
    if settings.model_kind == "embedding":
        return cls(settings=settings, **params)
    try:
        takes_path = "model_name_or_path" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_path = False
    if takes_path and "model_name_or_path" not in params and settings.model_path:
        params["model_name_or_path"] = settings.model_path  # MODEL_PATH, or the YAML's hf_path
    return cls(**params)
