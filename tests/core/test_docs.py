from __future__ import annotations

from pathlib import Path

from parley.core.call import transition_table_markdown
from parley.core.relay.limits import limits_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_call_state_document_matches_the_table() -> None:
    assert (DOCS / "call-states.md").read_text() == transition_table_markdown(), \
        "run scripts/gen-docs"


def test_server_limits_document_matches_the_limits() -> None:
    assert (DOCS / "server-limits.md").read_text() == limits_markdown(), "run scripts/gen-docs"
