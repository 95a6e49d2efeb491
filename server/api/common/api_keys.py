"""API keys: the candidates a request presents, a constant-time match against the configured keys,
and the non-secret name logs and rate-limit buckets use instead of a key."""

from __future__ import annotations

import hashlib
import hmac


def presented_keys(headers: dict[str, str] | object) -> list[str]:
    """Every candidate key in a request: `Authorization: Bearer <k>`, bare `Authorization: <k>`
    (MosaicML), `x-api-key: <k>`. Both readings of the Authorization header are tried."""
    out: list[str] = []
    auth = (headers.get("Authorization") or "").strip()  # type: ignore[attr-defined]
    if auth:
        out.append(auth)
        scheme, _, rest = auth.partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            out.append(rest.strip())
    api_key = (headers.get("X-Api-Key") or "").strip()  # type: ignore[attr-defined]
    if api_key:
        out.append(api_key)
    return out


def match_key(candidates: list[str], keys: tuple[str, ...]) -> str | None:
    """The configured key a candidate equals, compared in constant time against every key (no early
    exit, so timing does not reveal which key or how much of it matched)."""
    found: str | None = None
    for cand in candidates:
        c = cand.encode()
        for key in keys:
            if hmac.compare_digest(c, key.encode()) and found is None:
                found = key
    return found


def key_id(key: str) -> str:
    """A stable, non-secret name for a key: rate-limit buckets and logs never hold the key itself."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]
