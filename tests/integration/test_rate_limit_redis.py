"""Two server processes (two replicas) share one per-key rate limit through a real Redis server."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.redis_server import redis_server
from tests.support.servers import MODEL_DIR, start_server

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "replica-key-a", "replica-key-b"


def test_two_replicas_share_limits_through_redis(tmp_path) -> None:
    if not (MODEL_DIR / "config.json").is_file():
        pytest.fail("run `make model`")
    with redis_server(tmp_path) as uri:
        env = {"API_KEYS": f"{KEY_A},{KEY_B}", "RATE_LIMIT": "3/minute", "RATE_LIMIT_STORAGE_URI": uri}
        one = start_server(tmp_path, env)
        try:
            two = start_server(tmp_path, env)
        except Exception:
            one.stop()
            raise
        try:
            a = {"Authorization": f"Bearer {KEY_A}"}
            body = {"prompt": "Hi", "generate_kwargs": {"max_new_tokens": 1}}
            t0 = time.monotonic()
            assert requests.post(one.url + "/chat", json=body, headers=a, timeout=120).status_code == 200
            assert requests.post(two.url + "/chat", json=body, headers=a, timeout=120).status_code == 200
            assert requests.post(one.url + "/chat", json=body, headers=a, timeout=120).status_code == 200
            r = requests.post(two.url + "/chat", json=body, headers=a, timeout=120)
            assert time.monotonic() - t0 < 60, "too slow to observe a 3/minute window"
            assert r.status_code == 429, r.text  # the fourth in the minute, though the first on `two` twice
            assert "rate limit" in r.json()["detail"]
            assert 1 <= int(r.headers["Retry-After"]) <= 60
            r = requests.post(one.url + "/chat", json=body, headers={"x-api-key": KEY_A}, timeout=120)
            assert r.status_code == 429  # the same key in another header form: the same bucket
            # another key has its own budget; open paths are never limited
            assert requests.post(two.url + "/chat", json=body, headers={"Authorization": KEY_B},
                                 timeout=120).status_code == 200
            for _ in range(5):
                assert requests.get(two.url + "/health", timeout=10).status_code == 200
        finally:
            one.stop()
            two.stop()
        assert KEY_A not in one.log() + two.log()
