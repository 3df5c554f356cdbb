"""Messages at their edges: what a careless sender, a lost reply or a hostile server could
make of them -- a path for an id, a reply that never came, a gap that closes late, a file
half there, our own other device, a request to send again what arrived long ago."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.clock import now_ms
from parley.core import messages as core
from parley.core.encoding import b64e, random_id
from parley.core.envelope import seal_envelope
from parley.core.errors import ErrorCode
from parley.lab import create_parties, enroll_terminal
from parley.terminal.app import Terminal
from tests.harness import LocalLine, device_of, logged_in, wait_until
from tests.hostile import Hostile, M, W, alarm_codes, hostile

__all__ = ["hostile"]  # the fixture, used below
CONV = core.conversation_id("washington", "moscow")


def texts(terminal: Terminal, party: str) -> list[str]:
    return [m["text"] for m in terminal.messages.conversation(party)
            if not m["outgoing"] and m["kind"] == "text"]


def delivered(terminal: Terminal, msg_id: str) -> bool:
    ds = terminal.messages.info(terminal.messages.ms.get(msg_id))["deliveries"]  # type: ignore[arg-type]
    return bool(ds) and all(d["delivered_ms"] for d in ds)


async def test_an_acknowledged_envelope_sent_again_is_not_stored_or_delivered_again(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    sender, sender_id, sender_keys = await logged_in(line, http, dirs, "washington")
    receiver, receiver_id, receiver_keys = await logged_in(line, http, dirs, "moscow")
    assert (await sender.recv())["t"] == "presence"
    env = seal_envelope(sender_keys, sender_id, receiver_keys.public(receiver_id), "msg.text",
                        {"text": "once"}, now_ms()).to_json()
    await sender.send({"t": "send", "env": env, "ref": "first"})
    assert (await sender.recv())["status"] == "delivered"
    assert (await receiver.recv())["env"] == env
    await receiver.send({"t": "ack", "id": env["id"]}, {"t": "ping", "ref": "acked"})
    while (frame := await receiver.recv()).get("t") != "pong":
        assert frame["t"] == "acked"
    # Its "sent" lost, the sender sends it again: it is not stored, and not delivered again.
    for attempt in ("again", "and again"):
        await sender.send({"t": "send", "env": env, "ref": attempt})
        reply = await sender.recv()
        assert (reply["t"], reply["ref"], reply["status"]) == ("sent", attempt, "delivered")
    await receiver.send({"t": "ping", "ref": "nothing-else"})
    while (frame := await receiver.recv()).get("t") != "pong":
        assert frame["t"] == "acked"  # never another deliver
    assert frame["ref"] == "nothing-else"
    assert line.server is not None
    assert not line.server.store.waiting(receiver_id, env["id"])
    # Across a restart too: what the server remembers of it is on disk.
    await line.restart_server()
    sender, _, _ = await logged_in(line, http, dirs, "washington")
    await sender.send({"t": "send", "env": env, "ref": "after-restart"})
    while (reply := await sender.recv()).get("t") != "sent":
        pass
    assert reply["status"] == "delivered"
    with sqlite3.connect(line.root / "server" / "server.db") as db:
        assert db.execute("SELECT COUNT(*) FROM mailbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM acked").fetchone() == (1,)
    # Forgotten once it could no longer be taken for new (a month on, and a minute).
    assert line.server.store.forget_acked(now_ms() + 1) == 1
    line.server.store.commit_group()


async def test_a_lost_sent_reply_delivers_the_message_once_and_raises_no_alarm(
        hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    dropped: list[str] = []
    closing: list[asyncio.Future[Any]] = []

    async def lose_the_first_sent(direction: str, device: str | None,
                                  frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == W and frame.get("t") == "sent" and not dropped:
            dropped.append(frame["id"])
            # The moment it is lost is after moscow has it and its ack is committed: the
            # worst case, where only the server can tell a new envelope from this one.
            await wait_until(lambda: moscow.store.ack_confirmed(frame["id"]), 10, "acked")
            closing.append(asyncio.ensure_future(hostile.relay.clients[W].close()))
            return None
        return frame

    hostile.relay.tamper = lose_the_first_sent
    sent = await washington.messages.send_text("moscow", "only once")
    await wait_until(lambda: texts(moscow, "washington") == ["only once"], 10, "delivered")
    await wait_until(lambda: bool(dropped), 10, "the lost reply")
    await wait_until(lambda: washington.messages.ms.outbox_size() == 0, 20,
                     "sent again, and this time told")
    await wait_until(lambda: delivered(washington, sent["msg_id"]), 10, "the receipt")
    await asyncio.sleep(0.5)
    assert alarm_codes(moscow) == [] and alarm_codes(washington) == []
    assert texts(moscow, "washington") == ["only once"]


async def test_a_message_id_that_is_a_path_is_refused_and_nothing_is_written_for_it(
        hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    w_id, w_keys = device_of(hostile.dirs, "washington")
    outside = hostile.line.root / "escaped"
    bad_ids = [f"../../../{outside.name}", "a" * 15, "<img src=x>aaaaaaaaaaaa", "x/y" * 6,
               "." * 20]
    for n, bad in enumerate(bad_ids):
        for type_, payload in (
                ("msg.file", {"conv": CONV, "seq": n + 1, "first": 1, "msg_id": bad,
                              "name": "x.txt", "type": "text/plain", "size": 3, "chunks": 1,
                              "sha256": "0" * 64}),
                ("msg.chunk", {"msg_id": bad, "index": 0, "data": b64e(b"abc")}),
                ("msg.receipt", {"conv": CONV, "kind": "read", "ids": [bad]})):
            env = seal_envelope(w_keys, w_id, hostile.public(M), type_, payload, now_ms())
            await hostile.relay.inject(M, {"t": "deliver", "env": env.to_json()})
    await wait_until(lambda: sum("is not a message id" in r.getMessage()
                                 for r in caplog.records) == 3 * len(bad_ids), 10,
                     "each refused")
    assert moscow.messages.conversation(None) == []
    assert not outside.exists()
    assert [p for p in (hostile.dirs["moscow"] / "files").rglob("*") if p.is_file()] == []
    # Refused, not fatal: the next good message shows as usual.
    await moscow.messages.send_text("washington", "still here")


async def test_a_message_declared_lost_that_comes_after_all_is_shown_marked_late(
        hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "GAP_WAIT_MS", 300)
    monkeypatch.setattr(core, "LOST_AFTER_MS", 1_500)
    monkeypatch.setattr(core, "RESEND_AGAIN_MS", 600)
    held: list[dict[str, Any]] = []
    passed: list[dict[str, Any]] = []

    async def lose_the_first(direction: str, device: str | None,
                             frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] == "msg.text":
            if len(passed) == 1 or not held:  # the first, and every copy sent again, lost
                if not held:
                    held.append(frame)
                return None
            passed.append(frame)
        return frame

    hostile.relay.tamper = lose_the_first
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    await washington.messages.send_text("moscow", "one")
    await washington.messages.send_text("moscow", "two")
    await wait_until(lambda: texts(moscow, "washington") == ["two"], 20,
                     "'one' declared lost, 'two' shown")
    notices = [m for m in moscow.messages.conversation("washington") if m["kind"] == "lost"]
    assert len(notices) == 1 and "message 1 from washington/hotline" in notices[0]["text"]
    # The server (or the network) had only held it back: it comes after all.
    await hostile.relay.inject(M, held[0])
    await wait_until(lambda: texts(moscow, "washington") == ["two", "one"], 10, "shown late")
    one = next(m for m in moscow.messages.conversation("washington") if m["text"] == "one")
    assert one["late"] and not next(m for m in moscow.messages.conversation("washington")
                                    if m["text"] == "two")["late"]
    assert moscow.messages.unread() == {"washington": 2}
    assert ErrorCode.REPLAY not in alarm_codes(moscow)


async def test_a_file_still_arriving_is_not_read_and_is_not_reported_read(
        hostile: Hostile) -> None:
    chunks_through = asyncio.Event()

    async def hold_the_parts(direction: str, device: str | None,
                             frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] == "msg.chunk" and not chunks_through.is_set():
            return None
        return frame

    hostile.relay.tamper = hold_the_parts
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    sent = await washington.messages.send_file("moscow", b"x" * 300_000, "report.pdf",
                                               "application/pdf")
    note = await washington.messages.send_text("moscow", "see the report")
    await wait_until(lambda: texts(moscow, "washington") == ["see the report"], 10, "the note")
    header = moscow.messages.ms.get(sent["msg_id"])
    assert header is not None and header.state == "receiving"
    assert moscow.messages.unread() == {"washington": 1}  # the note; not the file, not yet
    assert moscow.messages.mark_read("washington") == 1
    await wait_until(lambda: any(d["read_ms"] for d in washington.messages.info(
        washington.messages.ms.get(note["msg_id"]))["deliveries"]), 10, "the note read")  # type: ignore[arg-type]
    file_deliveries = washington.messages.info(
        washington.messages.ms.get(sent["msg_id"]))["deliveries"]  # type: ignore[arg-type]
    assert [d["read_ms"] for d in file_deliveries] == [None]
    assert [d["delivered_ms"] for d in file_deliveries] == [None]
    with pytest.raises(Exception, match="has not arrived whole"):
        moscow.messages.file(sent["msg_id"])


async def test_our_other_device_gets_a_copy_as_ours_and_does_not_hold_up_delivered(
        line: LocalLine) -> None:
    dirs = await line.provision()
    code = create_parties(line.root / "server", {"washington": ("The White House", "UTC")},
                          [])["washington"]
    await enroll_terminal(line.root / "washington-spare", "spare", line.url, code)
    washington = await line.terminal("washington")
    spare = await line.terminal("washington-spare")
    moscow = await line.terminal("moscow")
    # Each of washington's devices verifies the other (and the spare, moscow).
    await washington.peers.verify("washington/spare", None, now_ms())
    await spare.peers.verify("washington/hotline", None, now_ms())
    await spare.peers.verify("moscow/hotline", None, now_ms())
    assert dirs  # provisioned: moscow and washington/hotline verified each other
    sent = await washington.messages.send_text("moscow", "from the hotline")
    await wait_until(lambda: texts(moscow, "washington") == ["from the hotline"], 10, "moscow")
    await wait_until(lambda: bool(spare.messages.conversation("moscow")), 10, "the copy")
    copy = spare.messages.conversation("moscow")[0]
    assert (copy["outgoing"], copy["mine"], copy["sender"], copy["text"]) == (
        True, False, "washington/hotline", "from the hotline")
    assert copy["deliveries"] == [] and spare.messages.unread() == {}
    # The hotline counts moscow's devices only: delivered once moscow has it.
    await wait_until(lambda: delivered(washington, sent["msg_id"]), 10, "delivered")
    mine = washington.messages.info(washington.messages.ms.get(sent["msg_id"]))  # type: ignore[arg-type]
    assert [d["device"] for d in mine["deliveries"]] == ["moscow/hotline"] and mine["mine"]
    # Moscow's answer reaches both of washington's devices (once moscow has verified the
    # new one too), unread on each.
    await moscow.peers.verify("washington/spare", None, now_ms())
    await moscow.messages.send_text("washington", "received")
    for terminal in (washington, spare):
        await wait_until(lambda t=terminal: texts(t, "moscow") == ["received"], 10, "answer")  # type: ignore[misc]
        assert terminal.messages.unread() == {"moscow": 1}


async def test_a_request_to_send_again_what_was_delivered_sends_nothing(
        hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    sent = await washington.messages.send_text("moscow", "delivered already")
    await wait_until(lambda: delivered(washington, sent["msg_id"]), 10, "delivered")
    m_id, m_keys = device_of(hostile.dirs, "moscow")

    async def ask_again() -> None:
        env = seal_envelope(m_keys, m_id, hostile.public(W), "msg.resend",
                            {"conv": CONV, "from_seq": 1, "to_seq": 1}, now_ms())
        await hostile.relay.inject(W, {"t": "deliver", "env": env.to_json()})
        await wait_until(lambda: washington.replay.seen(env.id), 10, "the request handled")

    await ask_again()
    await asyncio.sleep(0.3)
    assert washington.messages.ms.outbox_size() == 0  # moscow confirmed it: nothing to send
    # Had moscow not confirmed it, the same request would send it again.
    washington.store.db.execute("UPDATE deliveries SET delivered_ms=NULL")
    await ask_again()
    await wait_until(lambda: delivered(washington, sent["msg_id"]), 10, "confirmed again")
    assert texts(moscow, "washington") == ["delivered already"]
    assert alarm_codes(moscow) == []


async def test_a_part_of_a_file_must_be_exactly_its_size_and_after_its_header(
        hostile: Hostile, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    w_id, w_keys = device_of(hostile.dirs, "washington")
    data = b"y" * (core.CHUNK_BYTES + 10)
    msg_id = random_id()

    async def deliver(type_: str, payload: dict[str, Any]) -> None:
        env = seal_envelope(w_keys, w_id, hostile.public(M), type_, payload, now_ms())
        await hostile.relay.inject(M, {"t": "deliver", "env": env.to_json()})

    chunk = {"msg_id": msg_id, "index": 1, "data": b64e(data[core.CHUNK_BYTES:])}
    await deliver("msg.chunk", chunk)  # before its header: dropped
    await deliver("msg.file", {"conv": CONV, "seq": 1, "first": 1, "msg_id": msg_id,
                               "name": "a.bin", "type": "application/octet-stream",
                               "size": len(data), "chunks": 2,
                               "sha256": hashlib.sha256(data).hexdigest()})
    await deliver("msg.chunk", {**chunk, "data": b64e(b"short")})  # the wrong size: refused
    await deliver("msg.chunk", {**chunk, "index": 0, "data": b64e(data[:100])})  # also
    await wait_until(lambda: sum("carries" in r.getMessage() for r in caplog.records) == 2,
                     10, "both refused")
    assert any("came before its header" in r.getMessage() for r in caplog.records)
    header = moscow.messages.ms.get(msg_id)
    assert header is not None and header.chunks_done == 0
    # The right parts, in any order, make it whole.
    await deliver("msg.chunk", chunk)
    await deliver("msg.chunk", {**chunk, "index": 0, "data": b64e(data[:core.CHUNK_BYTES])})
    await wait_until(lambda: moscow.messages.ms.get(msg_id).state == "complete", 10,  # type: ignore[union-attr]
                     "whole")
    path, _ = moscow.messages.file(msg_id)
    assert await asyncio.to_thread(Path(path).read_bytes) == data
