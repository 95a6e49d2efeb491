"""mkdocs hooks (mkdocs.yml `hooks:`): the configuration and metrics references are rendered from
the code's own definitions at build time, so the docs cannot drift from it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # mkdocs loads hooks by path
    sys.path.insert(0, str(ROOT))

from tools.settings_doc import metrics_table, table  # noqa: E402


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return (markdown.replace("<!-- settings-table -->", table())
            .replace("<!-- metrics-table -->", metrics_table()))
