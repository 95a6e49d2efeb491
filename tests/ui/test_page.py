"""The chat page as served (no model, no browser): content negotiation on `GET /`, the security
headers, assets that load from this origin only and open with `/`, and a script that never turns text
into HTML. The browser test (tests/integration/test_chat_page.py) drives it against the real model."""

from __future__ import annotations

import re

import pytest

from server.app import create_app
from server.config import Settings
from server.engine.engine import Engine
from server.ui import STATIC

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
KEY = "page-key-1"


def client(**overrides):
    settings = Settings(**overrides)
    return create_app(settings, engine=Engine(settings), load_model=False).test_client()


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html"])
def test_browsers_get_the_page(accept: str) -> None:
    r = client().get("/", headers={"Accept": accept})
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert b'<script src="/ui/app.js"' in r.data and b'href="/ui/app.css"' in r.data
    assert r.headers["Vary"] == "Accept"


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/html;q=0.5"])
def test_everything_else_gets_kaitos_json(accept: str | None) -> None:
    r = client().get("/", headers={"Accept": accept} if accept else {})
    assert r.status_code == 200 and r.get_json() == {"message": "Server is running"}
    assert r.headers["Vary"] == "Accept"


def test_strict_content_security_policy() -> None:
    c = client()
    for path, headers in (("/", {"Accept": "text/html"}), ("/ui/app.js", {}), ("/ui/app.css", {})):
        r = c.get(path, headers=headers)
        csp = dict(part.strip().split(" ", 1) for part in r.headers["Content-Security-Policy"].split(";"))
        assert csp["default-src"] == "'none'"
        assert csp["script-src"] == "'self'" and csp["style-src"] == "'self'"  # no inline, no eval
        assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
        assert "unsafe" not in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_assets_have_their_types() -> None:
    c = client()
    js, css = c.get("/ui/app.js"), c.get("/ui/app.css")
    assert js.status_code == 200 and js.mimetype == "text/javascript" and b"/v1/chat/completions" in js.data
    assert css.status_code == 200 and css.mimetype == "text/css"


def test_page_loads_nothing_from_elsewhere() -> None:
    for name in ("index.html", "app.css", "app.js"):
        text = (STATIC / name).read_text()
        assert "://" not in text, name  # no CDN, no external fonts, no absolute URLs
        assert "@import" not in text and "url(" not in text, name
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/app.js" defer>']  # no inline script
    assert not re.search(r"<[^>]*\son\w+\s*=", html)  # no inline event handlers
    assert "style=" not in html


def test_script_never_builds_html_from_text() -> None:
    js = (STATIC / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "createContextualFragment", "DOMParser", "srcdoc"):
        assert sink not in js, sink
    assert "textContent" in js and "createTextNode" in js
    assert "sessionStorage" in js and "localStorage" not in js  # the key lives in this tab only


def test_page_and_assets_are_open_behind_keys_but_the_api_is_not() -> None:
    c = client(api_keys=(KEY,))
    assert c.get("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 200
    assert c.get("/ui/app.js").status_code == 200 and c.get("/ui/app.css").status_code == 200
    assert c.post("/v1/chat/completions", json={}).status_code == 401
    assert c.get("/v1/models").status_code == 401
    assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_assets_follow_the_page_when_it_is_not_open() -> None:
    c = client(api_keys=(KEY,), open_paths=("/health",))
    assert c.get("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 401
    assert c.get("/ui/app.js").status_code == 401
    assert c.get("/ui/app.js", headers={"x-api-key": KEY}).status_code == 200
