"""The chat page in a real headless Chromium (the OS package, driven by Playwright) against the real
server behind an API key: it asks for the key once, streams "Paris", Stop frees the server's batch
slot (`inferbox_running_batch_size` back to 0 on /metrics), and markup in replies stays text.

Chromium comes from `make browser` (tools/install_browser.sh, which `make test` runs); where it could
not be installed, the test is skipped with the reason that script recorded.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator

import pytest
import requests
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.servers import API_KEY, ROOT, ServerProcess

pytestmark = pytest.mark.integration

KEY = API_KEY
WAIT_MS = 240_000  # a reply on a loaded 2-core machine
DIALOGS: list[str] = []  # alert()/confirm() the page opened: markup that ran as script


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    reason_file = ROOT / ".cache" / "browser-unavailable"
    reason = reason_file.read_text().strip() if reason_file.is_file() else "no chromium on PATH"
    pytest.skip(f"chat page browser test: {reason} (`make browser` installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def keyed(keyed_server: ServerProcess) -> ServerProcess:
    return keyed_server


@pytest.fixture(scope="module")
def page(browser: Browser, keyed: ServerProcess) -> Iterator[Page]:
    """One tab for the module: the key is typed once, in the first test."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    pg = context.new_page()
    pg.on("dialog", lambda d: (DIALOGS.append(d.message), d.dismiss()))
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def _running(server: ServerProcess) -> float:
    text = requests.get(server.url + "/metrics", headers={"Accept": "text/plain"}, timeout=30).text
    return float(re.search(r"^inferbox_running_batch_size (\S+)$", text, re.M).group(1))


def _settings(page: Page, temperature: str, max_tokens: str) -> None:
    if page.locator("#settings").is_hidden():
        page.click("#settings-toggle")
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def _ask(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def _watch_last_reply(page: Page) -> None:
    """Record every text the newest assistant message shows while it streams."""
    page.wait_for_selector(".msg.assistant[data-state='streaming']")
    page.evaluate("""() => {
        const msgs = document.querySelectorAll('.msg.assistant');
        const body = msgs[msgs.length - 1].querySelector('.body');
        window.__seen = [];
        new MutationObserver(() => window.__seen.push(body.textContent))
            .observe(body, {childList: true, subtree: true, characterData: true});
    }""")


def _last(page: Page) -> dict:
    return page.evaluate("""() => {
        const msgs = document.querySelectorAll('.msg.assistant');
        const m = msgs[msgs.length - 1];
        return {state: m.dataset.state, text: m.querySelector('.body').textContent,
                figures: (m.querySelector('.figures') || {}).textContent || '',
                markup: m.querySelectorAll('.body script, .body img, .body iframe').length};
    }""")


def test_asks_for_the_key_once_and_streams_paris(page: Page, keyed: ServerProcess, tmp_path) -> None:
    page.goto(keyed.url + "/")
    page.wait_for_selector("#key-dialog:not([hidden])")  # /v1/models answered 401
    page.fill("#api-key", KEY)
    page.click("#key-save")
    page.wait_for_selector("#key-dialog", state="hidden")
    # the page hides the dialog, then asks /v1/models again with the key: wait for that answer
    page.wait_for_selector("#model-name:has-text('smollm2')")
    assert page.text_content("#model-name") == "smollm2-135m-instruct"
    assert page.evaluate("sessionStorage.getItem('inferbox.apiKey')") == KEY

    _settings(page, "0", "40")
    _ask(page, "What is the capital of France?")
    _watch_last_reply(page)
    page.wait_for_selector(".msg.assistant[data-state='done']")
    last = _last(page)
    seen = [t for t in page.evaluate("window.__seen") if t]
    assert "Paris" in last["text"], last
    assert len(set(seen)) >= 2 and all(last["text"].startswith(t) for t in seen), seen  # streamed
    assert re.fullmatch(r"[\d.]+ tok/s · TTFT \d+ ms · \d+ tokens · finish: stop", last["figures"]), last
    page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)

    page.reload()  # same tab: the key is remembered, no second prompt
    page.wait_for_selector("#model-name:has-text('smollm2')")
    assert page.locator("#key-dialog").is_hidden()


def test_stop_aborts_and_frees_the_batch_slot(page: Page, keyed: ServerProcess) -> None:
    page.click("#new-chat")
    _settings(page, "0", "2000")
    _ask(page, "Write a very long story about a dragon who learns to fly.")
    page.wait_for_function("""() => {
        const m = document.querySelector('.msg.assistant');
        return m && m.querySelector('.body').textContent.length > 20;
    }""")
    assert _running(keyed) == 1  # generating right now
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-state='stopped']")
    deadline = time.monotonic() + 60
    while _running(keyed) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(keyed) == 0
    last = _last(page)
    assert last["figures"].endswith("finish: stopped") and len(last["text"]) > 20
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    # the partial reply stays in the conversation and the next question still works
    _settings(page, "0", "8")
    _ask(page, "Thanks!")
    page.wait_for_function("""() => {
        const msgs = document.querySelectorAll('.msg.assistant');
        return msgs.length === 2 && msgs[1].dataset.state === 'done';
    }""")


# Greedy replies of the embedded model that contain markup (found by trying prompts).
MARKUP = [
    ("Write a minimal HTML page with a <script> tag that shows an alert.", "20", "<script>"),
    ("Write <img src=x onerror=alert(1)> three times.", "28", "<img src=x onerror=alert(1)>"),
]


@pytest.mark.parametrize("prompt,max_tokens,expected", MARKUP, ids=["script", "img-onerror"])
def test_markup_in_a_reply_is_shown_as_text(page: Page, prompt: str, max_tokens: str, expected: str) -> None:
    page.click("#new-chat")
    _settings(page, "0", max_tokens)
    _ask(page, prompt)
    page.wait_for_selector(".msg.assistant[data-state='done']")
    last = _last(page)
    assert expected in last["text"], last  # the model wrote it, the page shows it verbatim
    assert last["markup"] == 0
    assert page.locator("#messages script, #messages img").count() == 0
    assert DIALOGS == []
