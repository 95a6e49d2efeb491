"""The embedding bench's load generator posts what the server expects and reports the status it got,
through either client library (a stand-in HTTP server records the requests; no model)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.embed import poster, sentence


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn answers
    seen: list[tuple[str, dict, int]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status = 200 if body.get("input") != "bad" else 400
        self.seen.append((self.path, body, self.server.connections))  # type: ignore[attr-defined]
        out = b'{"data": []}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    connections = 0

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        self.connections += 1
        super().process_request(request, client_address)


@pytest.fixture()
def url() -> Iterator[str]:
    _Recorder.seen = []
    srv = _Server(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.mark.parametrize("client", ["http.client", "requests"])
def test_poster_sends_json_and_returns_the_status_over_one_connection(url: str, client: str) -> None:
    post = poster(url, client)
    assert post({"input": sentence(3), "encoding_format": "base64"}) == 200
    assert post({"input": "bad"}) == 400
    assert post({"input": sentence(4)}) == 200
    paths = {p for p, _, _ in _Recorder.seen}
    assert paths == {"/v1/embeddings"}
    assert [b["input"] for _, b, _ in _Recorder.seen] == [sentence(3), "bad", sentence(4)]
    assert _Recorder.seen[-1][2] == 1  # keep-alive: every request on the first connection


def test_sentences_differ_and_vary_in_length() -> None:
    texts = [sentence(i) for i in range(64)]
    assert len(set(texts)) == 64
    assert len({len(t.split()) for t in texts}) == 16
