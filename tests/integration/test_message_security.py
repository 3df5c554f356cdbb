"""Messages against a hostile server: what it stores is ciphertext, and nothing it does to an
envelope -- alter it, replay it, reorder it, misroute it -- gets a message shown wrongly."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
from typing import Any

import pytest

from parley.clock import now_ms
from parley.core.encoding import random_id
from parley.core.envelope import seal_envelope
from parley.core.errors import ErrorCode
from parley.core.messages import conversation_id
from parley.lab import create_parties, enroll_terminal
from parley.terminal.app import Terminal
from tests.harness import LocalLine, device_of, wait_until
from tests.hostile import Hostile, M, W, alarm_codes, hostile, on_send

__all__ = ["hostile"]  # the fixture, used below


def shown(terminal: Terminal, party: str) -> list[str]:
    return [m["text"] for m in terminal.messages.conversation(party)
            if not m["outgoing"] and m["kind"] == "text"]


async def test_the_server_holds_no_plaintext_in_its_database_or_its_logs(
        line: LocalLine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    text = f"Meeting moved to 15:00 UTC {secrets.token_hex(8)}"
    marker = b"PARLEY-FILE-BYTES-" + secrets.token_hex(16).encode()
    data = os.urandom(300_000) + marker * 50 + os.urandom(300_000)
    await washington.messages.send_text("moscow", text)
    await washington.messages.send_file("moscow", data, "minutes.txt", "text/plain",
                                        "the minutes")
    await wait_until(lambda: text in shown(moscow, "washington"), 10, "the text")
    await wait_until(lambda: any(m["state"] == "complete" for m in
                                 moscow.messages.conversation("washington")), 20, "the file")
    await line.stop_server()  # and everything it wrote is on disk
    server_files = b"".join(p.read_bytes() for p in (line.root / "server").iterdir()
                            if p.is_file())
    needles = [text.encode(), b"the minutes", b"minutes.txt", marker,
               *(base64.b64encode(b"x" * k + marker)[4 * k // 3 + 4: 4 * k // 3 + 40]
                 for k in range(3)),
               *(base64.urlsafe_b64encode(b"x" * k + marker)[4 * k // 3 + 4: 4 * k // 3 + 40]
                 for k in range(3))]
    for needle in needles:
        assert needle not in server_files, needle
    server_logs = "\n".join(r.getMessage() for r in caplog.records
                            if r.name.startswith(("parley.server", "aiohttp")))
    assert text not in server_logs and "minutes.txt" not in server_logs
    # (The terminals, which are trusted with it, do hold it: here, in their own stores.)
    assert text.encode() in (line.root / "moscow" / "terminal.db").read_bytes() + \
        (line.root / "moscow" / "terminal.db-wal").read_bytes()


async def test_an_altered_message_is_refused_with_an_alarm_and_sent_again_in_order(
        hostile: Hostile) -> None:
    flipped: list[str] = []

    async def flip_the_first(env: dict[str, Any]) -> dict[str, Any]:
        if flipped:
            return env
        flipped.append(env["id"])
        sig = env["sig"]
        return {**env, "sig": sig[:10] + ("B" if sig[10] != "B" else "C") + sig[11:]}

    hostile.relay.tamper = on_send("msg.text", flip_the_first, sender=W)
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    await washington.messages.send_text("moscow", "first")
    await washington.messages.send_text("moscow", "second")
    await wait_until(lambda: ErrorCode.BAD_SIGNATURE in alarm_codes(moscow), 10,
                     "the forgery alarm")
    assert shown(moscow, "washington") == []  # "second" waits for "first"
    # Moscow asks for the missing one again; it comes (unaltered) and both show, in order.
    await wait_until(lambda: shown(moscow, "washington") == ["first", "second"], 20,
                     "the repaired conversation")
    # Washington was told its envelope reached moscow altered.
    await wait_until(lambda: ErrorCode.BAD_SIGNATURE in alarm_codes(washington), 10,
                     "the tamper notice at washington")


async def test_a_replayed_message_is_an_alarm_and_shown_once(hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    sent = await washington.messages.send_text("moscow", "only once")
    await wait_until(lambda: shown(moscow, "washington") == ["only once"], 10, "delivered")
    deliver = next(f for d, dev, f in hostile.relay.log
                   if d == "down" and dev == M and f.get("t") == "deliver"
                   and f["env"]["type"] == "msg.text")
    await wait_until(lambda: moscow.store.ack_confirmed(deliver["env"]["id"]), 10, "acked")
    await hostile.relay.inject(M, deliver)
    await wait_until(lambda: ErrorCode.REPLAY in alarm_codes(moscow), 10, "the replay alarm")
    assert shown(moscow, "washington") == ["only once"]
    assert [m["msg_id"] for m in moscow.messages.conversation("washington")] == [
        sent["msg_id"]]


async def test_reordered_messages_are_shown_in_their_order_never_out_of_it(
        hostile: Hostile) -> None:
    held: list[dict[str, Any]] = []

    async def hold_the_first(direction: str, device: str | None,
                             frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] == "msg.text" and not held:
            held.append(frame)
            return None
        return frame

    hostile.relay.tamper = hold_the_first
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    await washington.messages.send_text("moscow", "one")
    await washington.messages.send_text("moscow", "two")
    await wait_until(lambda: len(held) == 1 and any(
        d == "down" and dev == M and f.get("t") == "deliver" and f["env"]["type"] == "msg.text"
        for d, dev, f in hostile.relay.log[1:] if f is not held[0]), 10, "'two' delivered")
    await asyncio.sleep(0.5)
    assert shown(moscow, "washington") == []  # "two" is held back: "one" has not come
    await hostile.relay.inject(M, held[0])
    await wait_until(lambda: shown(moscow, "washington") == ["one", "two"], 10, "in order")


async def test_a_second_message_under_a_used_number_is_refused_with_an_alarm(
        hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow")
    await washington.messages.send_text("moscow", "the real number one")
    await wait_until(lambda: shown(moscow, "washington") == ["the real number one"], 10, "it")
    # Signed with washington's own key (stolen, say): another message numbered 1.
    w_id, w_keys = device_of(hostile.dirs, "washington")
    conv = conversation_id("washington", "moscow")
    other = seal_envelope(w_keys, w_id, hostile.public(M), "msg.text",
                          {"conv": conv, "seq": 1, "first": 1, "msg_id": random_id(),
                           "text": "a different number one"}, now_ms())
    await hostile.relay.inject(M, {"t": "deliver", "env": other.to_json()})
    await wait_until(lambda: ErrorCode.REPLAY in alarm_codes(moscow), 10, "the alarm")
    alarm = next(a for a in moscow.alarms if a["code"] == ErrorCode.REPLAY)
    assert "two different messages numbered 1" in alarm["message"]
    assert shown(moscow, "washington") == ["the real number one"]


async def test_a_message_meant_for_another_device_is_refused_with_an_alarm(
        hostile: Hostile) -> None:
    codes = create_parties(hostile.line.root / "server", {"moscow": ("The Kremlin", "UTC")}, [])
    await enroll_terminal(hostile.line.root / "moscow-spare", "spare", hostile.relay.url,
                          codes["moscow"])

    async def misroute(direction: str, device: str | None,
                       frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] == "msg.text":
            await hostile.relay.inject("moscow/spare", frame)
            return None
        return frame

    washington = await hostile.line.terminal("washington")
    await hostile.line.terminal("moscow")
    spare = await hostile.line.terminal("moscow-spare")
    hostile.relay.tamper = misroute
    await washington.messages.send_text("moscow", "for moscow/hotline only")
    await wait_until(lambda: ErrorCode.WRONG_RECIPIENT in alarm_codes(spare), 10, "the alarm")
    assert spare.messages.conversation(None) == []
    alarm = next(a for a in spare.alarms if a["code"] == ErrorCode.WRONG_RECIPIENT)
    assert W in alarm["message"] and alarm["subject"] is None  # its header proves nothing
