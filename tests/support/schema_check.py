"""Validate real responses against the schemas /openapi.json documents for them."""

from __future__ import annotations

from typing import Any

import jsonschema
import requests

_DOCS: dict[str, dict[str, Any]] = {}


def openapi(base_url: str) -> dict[str, Any]:
    if base_url not in _DOCS:
        _DOCS[base_url] = requests.get(base_url + "/openapi.json", timeout=30).json()
    return _DOCS[base_url]


def check(base_url: str, component: str, instance: Any) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches components.schemas[component]."""
    doc = openapi(base_url)
    schema = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(instance)
