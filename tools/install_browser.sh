#!/usr/bin/env bash
# Headless Chromium for the chat page's browser test (tests/integration/test_chat_page.py), from the
# OS packages (Debian's `chromium`; Playwright's own browser download is not used). Never fails the
# build: when Chromium cannot be installed, it says why here and in .cache/browser-unavailable, and
# the test skips with that reason (shown in pytest's summary), so it never passes silently.
set -u
cd "$(dirname "$0")/.."
reason_file=.cache/browser-unavailable
mkdir -p .cache
rm -f "$reason_file"

found() {
  { [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; } || command -v chromium >/dev/null 2>&1
}

found && exit 0
why=""
sudo=""
if ! command -v apt-get >/dev/null 2>&1; then
  why="no apt-get on this machine; install Chromium and set CHROMIUM=/path/to/chromium"
elif [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    why="not root and no passwordless sudo to apt-get install chromium"
  fi
fi
if [ -z "$why" ]; then
  echo "installing chromium (apt-get) for the chat page's browser test..."
  log=.cache/browser-install.log
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
           -o DPkg::Lock::Timeout=300 chromium; } >"$log" 2>&1; then
    why="apt-get install chromium failed: $(tail -n 1 "$log")"
  elif ! found; then
    why="apt-get installed chromium but no chromium is on PATH"
  fi
fi
if [ -n "$why" ]; then
  echo "$why" >"$reason_file"
  echo "WARNING: the chat page's browser test will be SKIPPED: $why" >&2
fi
exit 0
