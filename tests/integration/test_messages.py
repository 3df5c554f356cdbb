"""Hotline messages between real terminals through the real server: order, receipts, files.

Everything is real: the server with its SQLite mailbox, two terminals with their
own stores, sealed and signed envelopes. The crash test (the server killed
again and again) is tests/integration/test_message_crashes.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from parley.core.errors import ErrorCode, LocalError
from parley.terminal.app import Terminal
from tests.harness import LocalLine, wait_until


def texts(terminal: Terminal, party: str) -> list[str]:
    """The texts `terminal` received from `party`, in the order shown."""
    return [m["text"] for m in terminal.messages.conversation(party)
            if m["kind"] == "text" and not m["outgoing"]]


def delivered_to_all(message: dict[str, Any]) -> bool:
    return bool(message["deliveries"]) and all(d["delivered_ms"] for d in message["deliveries"])


def outgoing(terminal: Terminal, party: str) -> list[dict[str, Any]]:
    return [m for m in terminal.messages.conversation(party) if m["outgoing"]]


async def test_a_message_is_sent_delivered_and_read_with_signed_receipts(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    events: list[dict[str, Any]] = []
    washington.subscribe(events.append)
    sent = await washington.messages.send_text("moscow", "The line is open. — W")
    assert sent["state"] == "queued" and sent["outgoing"] and sent["order"] is not None
    assert [d["device"] for d in sent["deliveries"]] == ["moscow/hotline"]

    await wait_until(lambda: texts(moscow, "washington") == ["The line is open. — W"], 10,
                     "the message at moscow")
    mine = await _wait_message(washington, sent["msg_id"], delivered_to_all)
    assert mine["state"] == "sent" and mine["deliveries"][0]["stored_ms"]
    assert moscow.messages.unread() == {"washington": 1}
    assert moscow.messages.mark_read("washington") == 1
    read = await _wait_message(washington, sent["msg_id"],
                               lambda m: bool(m["deliveries"][0]["read_ms"]))
    assert read["deliveries"][0]["read_ms"] >= read["deliveries"][0]["delivered_ms"]
    assert moscow.messages.unread() == {}
    assert {e["t"] for e in events} >= {"message"}

    # Fifty more, each shown once and in order; one receipt covers many.
    for n in range(50):
        await washington.messages.send_text("moscow", f"number {n}")
    await wait_until(lambda: len(texts(moscow, "washington")) == 51, 15, "fifty more")
    assert texts(moscow, "washington")[1:] == [f"number {n}" for n in range(50)]
    await wait_until(lambda: all(delivered_to_all(m) for m in outgoing(washington, "moscow")),
                     15, "every delivery receipt")
    receipts = [e for e in moscow.messages.ms.db.execute(
        "SELECT COUNT(*) FROM outbox").fetchall()]
    assert receipts == [(0,)]  # all sent
    # And the other way.
    await moscow.messages.send_text("washington", "Received. — M")
    await wait_until(lambda: texts(washington, "moscow") == ["Received. — M"], 10, "the reply")


async def test_a_recipient_offline_for_the_whole_send_gets_everything_in_order(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    ids = [(await washington.messages.send_text("moscow", f"while you were away {n}"))["msg_id"]
           for n in range(30)]
    await wait_until(lambda: all(m["state"] == "sent" for m in outgoing(washington, "moscow")),
                     10, "all stored by the server")
    assert line.server is not None
    store = line.server.store
    assert len(store.pending("moscow/hotline", 0, 100)) == 30
    moscow = await line.terminal("moscow")
    await wait_until(lambda: len(texts(moscow, "washington")) == 30, 15, "the backlog")
    assert texts(moscow, "washington") == [f"while you were away {n}" for n in range(30)]
    assert [m["msg_id"] for m in moscow.messages.conversation("washington")] == ids
    await wait_until(lambda: store.pending("moscow/hotline", 0, 100) == [], 10,
                     "gone from the server once acknowledged")
    await wait_until(lambda: all(delivered_to_all(m) for m in outgoing(washington, "moscow")),
                     10, "delivery receipts for all")


async def test_a_20_mb_file_arrives_intact_with_progress_on_both_sides(
        tmp_path: Path, line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    data = os.urandom(20 * 1000 * 1000)
    seen_at_moscow: list[int] = []
    seen_at_washington: list[int] = []

    def progress(into: list[int]) -> Any:
        def listener(event: dict[str, Any]) -> None:
            if event.get("t") == "message" and event["message"]["kind"] == "file":
                into.append(event["message"]["file"]["done"])
        return listener

    moscow.subscribe(progress(seen_at_moscow))
    washington.subscribe(progress(seen_at_washington))
    sent = await washington.messages.send_file("moscow", data, "treaty-draft.pdf",
                                               "application/pdf", "the draft, as agreed")
    assert sent["file"]["chunks"] == 153 and sent["file"]["name"] == "treaty-draft.pdf"

    def arrived() -> dict[str, Any] | None:
        got = [m for m in moscow.messages.conversation("washington") if m["kind"] == "file"]
        return got[0] if got and got[0]["state"] == "complete" else None

    await wait_until(lambda: arrived() is not None, 60, "the whole file")
    message = arrived()
    assert message is not None and message["text"] == "the draft, as agreed"
    path, _ = moscow.messages.file(message["msg_id"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    # Progress was shown on both sides, rising, before it was whole.
    assert len(set(seen_at_moscow)) > 5 and seen_at_moscow == sorted(seen_at_moscow)
    assert len({d for d in seen_at_washington if d < 153}) > 5
    await _wait_message(washington, sent["msg_id"], delivered_to_all)


async def test_messages_are_refused_where_nothing_is_verified(line: LocalLine) -> None:
    await line.provision(verify=False)
    washington = await line.terminal("washington")
    with pytest.raises(LocalError) as err:
        await washington.messages.send_text("moscow", "hello?")
    assert err.value.code is ErrorCode.NOT_VERIFIED
    assert "parley keys verify moscow" in err.value.hint
    with pytest.raises(LocalError) as err:
        await washington.messages.send_text("moscow", "  ")
    assert "needs some text" in err.value.message


async def _wait_message(terminal: Terminal, msg_id: str, ok: Any,
                        timeout: float = 15.0) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def check() -> bool:
        for message in terminal.messages.conversation(None, 1000):
            if message["msg_id"] == msg_id and ok(message):
                found.update(message)
                return True
        return False

    await wait_until(check, timeout, f"message {msg_id}")
    return found


async def test_a_file_transfer_cut_by_a_server_restart_resumes_without_starting_over(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    sends: list[str] = []  # every chunk envelope washington hands the server
    stored: list[str] = []  # ...and those the server said it stored
    original = washington.link.send_envelope

    async def counting(envelope: Any, *, ephemeral: bool) -> str:
        if envelope.type == "msg.chunk":
            sends.append(envelope.id)
        status = await original(envelope, ephemeral=ephemeral)
        if envelope.type == "msg.chunk":
            stored.append(envelope.id)
        return status

    washington.link.send_envelope = counting  # type: ignore[method-assign]
    data = os.urandom(20 * 1000 * 1000)
    sent = await washington.messages.send_file("moscow", data, "archive.bin",
                                               "application/octet-stream")
    chunks = sent["file"]["chunks"]
    await wait_until(lambda: washington.messages.ms.outbox_size() < chunks * 2 // 3, 30,
                     "a third stored by the server")
    await line.restart_server()  # every connection drops; the server keeps what it stored
    sent_before, stored_before = set(sends), set(stored)
    cut = len(sends)
    waiting = washington.messages.ms.outbox_size()
    assert 0 < waiting < chunks, "part of it was stored before the restart"

    def complete() -> list[dict[str, Any]]:
        return [m for m in moscow.messages.conversation("washington")
                if m["kind"] == "file" and m["state"] == "complete"]

    await wait_until(lambda: bool(complete()), 60, "the whole file after the restart")
    path, _ = moscow.messages.file(complete()[0]["msg_id"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    # It went on from where it was: what had been stored was not sent again (only what
    # was in flight at the moment of the restart could be).
    from parley.terminal.messages import WINDOW

    assert len(set(sends)) == chunks
    after = set(sends[cut:])
    # Nothing the server had said it stored was sent again; of what was sent before the
    # restart, only what was in flight then (a window at most) went again.
    assert not after & stored_before
    assert len(after & sent_before) <= WINDOW, len(after & sent_before)
    await _wait_message(washington, sent["msg_id"], delivered_to_all, 30)


async def test_the_terminals_own_index_finds_words_prefixes_and_file_names(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    for text in ("The ceasefire holds in the north", "Delegations arrive Thursday evening",
                 'A "quoted" word, and AND OR NOT: plain text, not a query'):
        await washington.messages.send_text("moscow", text)
    await washington.messages.send_file("moscow", b"x" * 1000, "protocol-annex.pdf",
                                        "application/pdf")
    await wait_until(lambda: len(moscow.messages.conversation("washington")) == 4, 10, "all")

    def found(query: str) -> list[str]:
        return [m["text"] or m["file"]["name"] for m in moscow.messages.search(query)]

    assert found("ceasefire") == ["The ceasefire holds in the north"]
    assert found("deleg*") == ["Delegations arrive Thursday evening"]
    assert found("thursday evening") == ["Delegations arrive Thursday evening"]
    assert found("annex") == ["protocol-annex.pdf"]
    assert found('"quoted" AND OR') == ['A "quoted" word, and AND OR NOT: plain text, not a query']
    assert found("missiles") == [] and found("   ") == []
    # The sender's own copies are searchable where they were written, too.
    assert [m["text"] for m in washington.messages.search("ceasefire")] == [
        "The ceasefire holds in the north"]
