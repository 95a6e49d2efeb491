"""Units of memory, shared by the planners and the logs (a leaf: imports nothing of the server)."""

from __future__ import annotations

GIB = 1024**3


def gib(n: int | float) -> str:
    """Bytes as GiB with two decimals ("64.24 GiB")."""
    return f"{n / GIB:.2f} GiB"
