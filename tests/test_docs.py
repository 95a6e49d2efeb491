"""The documentation: a short README that points into the docs site, and references generated from
the code's own definitions (every setting and every metric documented where it is defined)."""

from __future__ import annotations

import re

from server.env_vars import ENV_VARS, OTHER_VARS
from tools.local_server import ROOT
from tools.settings_doc import metrics_table, table

DOCS = ROOT / "docs"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 15
    for link in links:
        assert (ROOT / link).is_file(), link


def test_every_variable_is_documented_in_the_generated_reference() -> None:
    rendered = table()
    for var, spec in ENV_VARS.items():
        assert spec.doc.strip() and f"| `{var}` |" in rendered, var
    for var in OTHER_VARS:
        assert f"| `{var}` |" in rendered, var
    assert "<!-- settings-table -->" in (DOCS / "reference" / "configuration.md").read_text()


def test_every_metric_is_in_the_generated_reference() -> None:
    rendered = metrics_table()
    for name in ("inferbox_engine_steps_total", "inferbox_tensor_parallel_broadcast_seconds",
                 "inferbox_running_batch_size"):
        assert f"| `{name}` |" in rendered, name
    assert "<!-- metrics-table -->" in (DOCS / "reference" / "metrics.md").read_text()


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == set(re.findall(r":\s+(\S+\.md)$", nav, re.MULTILINE))
