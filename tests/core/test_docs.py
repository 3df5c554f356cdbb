from __future__ import annotations

from pathlib import Path

from parley.core.call import transition_table_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "call-states.md"


def test_call_state_document_matches_the_table() -> None:
    assert DOC.read_text() == transition_table_markdown(), "run scripts/gen-docs"
