"""The page's protocol module mirrors the Python names it shares: a test keeps them equal."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest

from parley.core.call import CallState, EndReason, MediaKind
from parley.core.trust import Trust
from parley.terminal.app import MAX_ENDED_CALLS
from parley.terminal.browser import PAGE_MESSAGES

SRC = Path(__file__).resolve().parent.parent / "src" / "parley"
PROTOCOL = (SRC / "web" / "protocol.js").read_text()


def js_object(name: str) -> dict[str, str]:
    match = re.search(rf"export const {name} = Object\.freeze\(\{{(.*?)\}}\);", PROTOCOL, re.S)
    assert match, f"protocol.js has no {name}"
    return dict(re.findall(r'(\w+):\s*"([^"]+)"', match.group(1)))


@pytest.mark.parametrize("enum", [CallState, EndReason, MediaKind, Trust],
                         ids=lambda e: e.__name__)
def test_enums_match(enum: type[StrEnum]) -> None:
    assert js_object(enum.__name__) == {m.name: m.value for m in enum}


def test_page_messages_are_the_ones_the_terminal_validates() -> None:
    sent = set(re.findall(r't: "([\w.]+)"', PROTOCOL.split("export const Outgoing")[1]
                          .split("});")[0]))
    assert sent == set(PAGE_MESSAGES)


def test_the_page_knows_every_message_the_terminal_sends_it() -> None:
    sent = set()
    # Not link.py: the server's wire.
    for module in ("app.py", "control.py", "browser.py", "messages.py", "linetest.py",
                   "talks.py", "record.py", "statements.py"):
        sent |= set(re.findall(r'"t": "([\w.]+)"', (SRC / "terminal" / module).read_text()))
    assert sent == set(js_object("Incoming").values())


def test_the_page_keeps_as_many_ended_calls_as_the_terminal() -> None:
    app = (SRC / "web" / "app.js").read_text()
    match = re.search(r"export const KEEP_ENDED_CALLS = (\d+);", app)
    assert match and int(match.group(1)) == MAX_ENDED_CALLS
