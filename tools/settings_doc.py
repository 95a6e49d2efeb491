"""The configuration and metrics references, generated from the code's own definitions
(`server/env_vars.py`'s `ENV_VARS` and `OTHER_VARS`, `Settings` defaults, `server/kaito_flags.py`'s
flag names, the Prometheus registry), so the documentation cannot drift from the code. `make docs`
renders them into the docs site (tools/mkdocs_hooks.py); `python -m tools.settings_doc` prints the
configuration table."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any

from server.config import DEFAULT_KERNEL_CACHE_DIR, DEFAULT_MODEL_PATH, REPO_ROOT, Settings
from server.env_vars import ENV_VARS, OTHER_VARS
from server.kaito_flags import PROCESS_COUNT_FLAG, QUANTIZATION_SWITCHES, SWITCHES, VALUE_FLAGS


def _default(name: str) -> str:
    field = next(f for f in fields(Settings) if f.name == name)
    value: Any = field.default if field.default is not MISSING else field.default_factory()  # type: ignore[misc]
    if value == DEFAULT_MODEL_PATH:
        value = DEFAULT_MODEL_PATH.replace(str(REPO_ROOT) + "/", "")
    if value is None or value == "" or value == () or value == {}:
        return "—"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`" + ",".join(map(str, value)) + "`"
    if value == DEFAULT_KERNEL_CACHE_DIR:
        return "`~/.cache/inferbox`"
    return f"`{value}`"


def _flags(var: str) -> str:
    names = [f"`--{f}`" for f, v in VALUE_FLAGS.items() if v == var]
    names += [f"`--{f}`" for f, v in SWITCHES.items() if v == var]
    if var == "QUANTIZATION":
        names += [f"`--{f}`" for f in QUANTIZATION_SWITCHES]
    if var == "TENSOR_PARALLEL":
        names.append(f"`--{PROCESS_COUNT_FLAG}`")
    return ", ".join(names) or "—"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table() -> str:
    """The markdown table of every variable the server reads."""
    lines = ["| variable | Kaito flag | default | meaning |", "|---|---|---|---|"]
    for var, spec in ENV_VARS.items():
        lines.append(f"| `{var}` | {_flags(var)} | {_default(spec.field)} | {_cell(spec.doc)} |")
    for var, doc in OTHER_VARS.items():
        lines.append(f"| `{var}` | {_flags(var)} | — | {_cell(doc)} |")
    return "\n".join(lines)


def metrics_table() -> str:
    """The markdown table of every Prometheus series the server exports."""
    from server.observability.metrics import REGISTRY

    lines = ["| series | type | meaning |", "|---|---|---|"]
    for family in sorted(REGISTRY.collect(), key=lambda f: f.name):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        lines.append(f"| `{name}` | {family.type} | {_cell(family.documentation)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
