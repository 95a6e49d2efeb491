"""What /proc/cpuinfo says about this CPU: feature flags (native bfloat16) and the model name (the
kernel-choice cache key). Outside Linux both are unknown: no flags, the platform's processor string."""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def _field(names: tuple[str, ...], cpuinfo: Path) -> str | None:
    """The first processor's value of the first of `names` present."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in names:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    return frozenset((_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model_name(cpuinfo: Path = CPUINFO) -> str:
    return _field(("model name", "Model", "cpu model"), cpuinfo) or platform.processor() or platform.machine()
