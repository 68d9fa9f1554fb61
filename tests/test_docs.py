"""The configuration reference is generated from the schema and must match it."""

from __future__ import annotations

from pathlib import Path

from spyoncino.cli.docgen import render

REPO = Path(__file__).resolve().parent.parent


def test_configuration_reference_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render(), "docs/configuration.md is stale: run `make docs`"


def test_every_registered_module_has_a_doc_page() -> None:
    from spyoncino.core.orchestrator import discover

    ours = discover(distribution="spyoncino")  # a third party's module documents itself
    missing = [n for n in ours if not (REPO / "docs" / "modules" / f"{n}.md").is_file()]
    assert missing == []
