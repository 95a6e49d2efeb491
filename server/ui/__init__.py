"""The chat page: `GET /` for browsers (content negotiation in kaito.py), and its script and style.

Everything ships inside the package (no build step, no CDN, no external fonts), so the page works
offline. The page is static: it talks to the server only through `/v1/models` and
`/v1/chat/completions`, with the API key the user types (kept in sessionStorage). A strict
Content-Security-Policy allows scripts, styles and requests from this origin only, and no inline
script; the script renders model output with DOM text nodes only, never as HTML.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint, Request, Response

bp = Blueprint("ui", __name__)

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"/ui/app.js": ("app.js", "text/javascript"), "/ui/app.css": ("app.css", "text/css")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def wants_page(request: Request) -> bool:
    """A browser (Accept prefers text/html over JSON); curl, probes and API clients get JSON."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html"


def _respond(name: str, mimetype: str) -> Response:
    resp = Response(_read(name), mimetype=mimetype)
    resp.headers.update(SECURITY_HEADERS)
    return resp


def page() -> Response:
    resp = _respond("index.html", "text/html")
    resp.headers["Vary"] = "Accept"
    return resp


@bp.get("/ui/app.js")
def script() -> Response:
    return _respond(*ASSETS["/ui/app.js"])


@bp.get("/ui/app.css")
def style() -> Response:
    return _respond(*ASSETS["/ui/app.css"])
