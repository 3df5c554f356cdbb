"""A hostile server: a relay in front of the real one that rewrites what passes through.

The relay fronts the server completely (the server's public URL is the relay's,
as a hostile operator would set it up): terminals enroll, verify and log in
through it. Each attack must be refused by the terminal with a clear alarm, and
no media may flow.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.clock import now_ms
from parley.core.call import CallState, EndReason
from parley.core.encoding import random_id
from parley.core.envelope import seal_envelope
from parley.core.errors import ErrorCode, LocalError
from parley.lab import create_parties, enroll_terminal
from parley.terminal.app import Terminal
from parley.terminal.link import ServerLink
from tests.harness import LocalLine, device_of, frames, wait_until
from tests.hostile import Hostile, M, W, alarm_codes, hostile, on_send

__all__ = ["hostile"]  # the fixture, used below

async def call_until_ended(hostile: Hostile) -> tuple[Terminal, Terminal, Any]:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    placed = await washington.place_call("moscow")
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 15)
    return washington, moscow, ended


async def media_frames(terminal: Terminal) -> int:
    """Every frame any media session of this terminal ever received."""
    total = 0
    for call_id in set(terminal.sessions) | set(terminal.final_stats):
        total += sum((await frames(terminal, call_id)).values())
    return total


async def assert_no_media(*terminals: Terminal) -> None:
    await asyncio.sleep(1.0)  # long enough for frames to arrive if any media had connected
    for t in terminals:
        assert await media_frames(t) == 0, f"{t.device_id} received media"
        assert all(c.state is not CallState.ACTIVE for c in t.book.calls())


async def test_swapped_dtls_fingerprint_is_refused(hostile: Hostile) -> None:
    async def swap_fingerprint(original: dict[str, Any]) -> dict[str, Any]:
        payload = await hostile.attacker_offer(original["from"], random_id())
        return hostile.forge(original["from"], original["to"], "call.offer", payload,
                             envelope_id=original["id"]).to_json()

    hostile.relay.tamper = on_send("call.offer", swap_fingerprint)
    washington, moscow, ended = await call_until_ended(hostile)
    assert ended.end_reason is EndReason.INTERCEPTED
    assert "interception" in (ended.alarm or "")
    assert ErrorCode.BAD_SIGNATURE in alarm_codes(moscow)
    assert "does not verify" in moscow.alarms[0]["message"]
    assert moscow.book.calls() == [], "the forged offer never rang"
    await assert_no_media(washington, moscow)
    assert all(pc.connectionState != "connected" for pc in hostile.peers)


async def test_swapped_device_key_in_the_directory_is_refused(hostile: Hostile) -> None:
    attacker_bundle = hostile.attacker.public(W).to_json()

    async def swap_directory(direction: str, device: str | None,
                             frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "directory" \
                and frame["party"] == "washington":
            return {**frame, "devices": [attacker_bundle]}
        return frame

    hostile.relay.tamper = swap_directory
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    # The attacker now calls moscow in washington's name, with the swapped key.
    payload = await hostile.attacker_offer(W, random_id())
    forged = hostile.forge(W, M, "call.offer", payload)
    await hostile.relay.inject(M, {"t": "deliver", "env": forged.to_json()})
    await wait_until(lambda: ErrorCode.KEY_CHANGED in alarm_codes(moscow), 10, "key alarm")
    alarm = next(a for a in moscow.alarms if a["code"] == ErrorCode.KEY_CHANGED)
    assert "has changed since you verified it" in alarm["message"]
    assert "parley keys verify washington" in alarm["hint"]
    assert moscow.book.calls() == []
    # Calling out to the "changed" device is refused too, with the way out.
    with pytest.raises(LocalError) as err:
        await moscow.place_call("washington")
    assert err.value.code is ErrorCode.KEY_CHANGED
    described = await moscow.peers.describe("washington")
    assert described[0]["trust"] == "changed"
    await assert_no_media(washington, moscow)


async def test_replayed_offer_is_dropped_even_after_a_restart(hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    placed = await washington.place_call("moscow")
    await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, 20)
    washington.hangup(placed.call_id)
    await moscow.wait_for_call(lambda c: c.state is CallState.ENDED, 10)
    offer = next(f for d, dev, f in hostile.relay.log
                 if d == "down" and dev == M and f.get("t") == "deliver"
                 and f["env"]["type"] == "call.offer")
    calls_before = len(moscow.book.calls())

    await hostile.relay.inject(M, offer)
    await wait_until(lambda: ErrorCode.REPLAY in alarm_codes(moscow), 10, "replay alarm")
    assert len(moscow.book.calls()) == calls_before

    # A restarted terminal still remembers what it has seen.
    await moscow.stop()
    hostile.line.terminals.remove(moscow)
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    await wait_until(lambda: M in hostile.relay.clients, 10, "moscow back online")
    await hostile.relay.inject(M, offer)
    await wait_until(lambda: ErrorCode.REPLAY in alarm_codes(moscow), 10, "replay alarm")
    assert moscow.book.calls() == []
    assert not moscow.sessions


async def test_envelope_whose_signature_does_not_verify_is_refused(hostile: Hostile) -> None:
    async def flip_a_signature_bit(env: dict[str, Any]) -> dict[str, Any]:
        sig = env["sig"]
        return {**env, "sig": sig[:10] + ("B" if sig[10] != "B" else "C") + sig[11:]}

    hostile.relay.tamper = on_send("call.answer", flip_a_signature_bit, sender=M)
    washington, moscow, ended = await call_until_ended(hostile)
    placed = ended
    assert ended.end_reason is EndReason.INTERCEPTED
    assert ErrorCode.BAD_SIGNATURE in alarm_codes(washington)
    # Moscow is told, recognises its own answer, and hangs up as intercepted too.
    other = await moscow.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert other.end_reason is EndReason.INTERCEPTED
    assert ErrorCode.BAD_SIGNATURE in alarm_codes(moscow)
    await assert_no_media(washington, moscow)


async def test_envelope_meant_for_another_device_is_refused(hostile: Hostile) -> None:
    spare = "moscow/spare"
    codes = create_parties(hostile.line.root / "server", {"moscow": ("The Kremlin", "UTC")}, [])
    await enroll_terminal(hostile.line.root / "moscow-spare", "spare", hostile.relay.url,
                          codes["moscow"])

    async def misroute(direction: str, device: str | None,
                       frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] == "call.offer":
            await hostile.relay.inject(spare, frame)
            return None
        return frame

    hostile.relay.tamper = misroute
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    backup = await hostile.line.terminal("moscow-spare", auto_answer=True)
    await washington.place_call(M)
    await wait_until(lambda: ErrorCode.WRONG_RECIPIENT in alarm_codes(backup), 10,
                     "wrong-recipient alarm")
    assert "meant for moscow/hotline" in backup.alarms[0]["message"]
    assert backup.book.calls() == [] and moscow.book.calls() == []
    ended = await washington.wait_for_call(lambda c: c.state is CallState.ENDED, 15)
    assert ended.end_reason is EndReason.UNREACHABLE
    await assert_no_media(washington, moscow, backup)


async def test_unverified_peer_is_refused_with_how_to_verify(line: LocalLine) -> None:
    await line.provision(verify=False)
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    with pytest.raises(LocalError) as err:
        await washington.place_call("moscow")
    assert err.value.code is ErrorCode.NOT_VERIFIED
    assert "parley keys verify moscow" in err.value.hint
    # With the policy off on the caller only, the callee (policy on) still refuses.
    washington.book.require_verified = False
    placed = await washington.place_call("moscow")
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.NOT_VERIFIED
    refused = next(a for a in moscow.alarms if a["code"] == ErrorCode.NOT_VERIFIED)
    assert "parley keys verify washington" in refused["hint"]
    await assert_no_media(washington, moscow)


async def test_a_flood_of_forgeries_cannot_push_a_genuine_alarm_out_of_sight(
        hostile: Hostile) -> None:
    washington = await hostile.line.terminal("washington")
    await hostile.line.terminal("moscow", auto_answer=True)
    # The genuine alarm: an envelope meant for moscow, delivered to washington.
    misrouted = hostile.forge(M, M, "call.ice", {"call_id": "c", "candidate": ""})
    await hostile.relay.inject(W, {"t": "deliver", "env": misrouted.to_json()})
    await wait_until(lambda: ErrorCode.WRONG_RECIPIENT in alarm_codes(washington), 10,
                     "the genuine alarm")
    genuine = next(a for a in washington.alarms if a["code"] == ErrorCode.WRONG_RECIPIENT)
    # Then 200 forgeries in moscow's name, which would once have flushed it out.
    for n in range(200):
        forged = hostile.forge(M, W, "call.ice", {"call_id": f"f{n}", "candidate": ""})
        await hostile.relay.inject(W, {"t": "deliver", "env": forged.to_json()})

    def forgeries() -> int:
        return sum(a["count"] for a in washington.alarms if a["code"] == ErrorCode.BAD_SIGNATURE)

    await wait_until(lambda: forgeries() == 200, 30, "200 forgeries counted")
    assert [a["id"] for a in washington.alarms if a["code"] == ErrorCode.BAD_SIGNATURE] \
        == [next(a["id"] for a in washington.alarms if a["code"] == ErrorCode.BAD_SIGNATURE)]
    assert genuine["id"] in [a["id"] for a in washington.status()["alarms"]]
    # Only an operator's acknowledgement takes it off the open list; it is kept.
    washington.acknowledge_alarms([genuine["id"]], "misrouting reported to the line host")
    assert genuine["id"] not in [a["id"] for a in washington.alarms]
    assert ErrorCode.BAD_SIGNATURE in alarm_codes(washington)
    kept = {a.id: a for a in washington.store.alarms(include_acknowledged=True)}
    assert kept[genuine["id"]].acked_ms is not None


async def test_an_offer_held_past_the_callers_patience_rings_nothing(
        hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.core import call as call_module

    monkeypatch.setattr(call_module, "REACH_TIMEOUT_MS", 1_500)  # the caller's patience
    held: list[dict[str, Any]] = []

    async def hold(direction: str, device: str | None,
                   frame: dict[str, Any]) -> dict[str, Any] | None:
        # The server takes the offer (and the cancel after it), says "delivered", and waits.
        if direction == "down" and device == M and frame.get("t") == "deliver" \
                and frame["env"]["type"] in ("call.offer", "call.end"):
            held.append(frame)
            return None
        return frame

    hostile.relay.tamper = hold
    washington = await hostile.line.terminal("washington")
    moscow = await hostile.line.terminal("moscow", auto_answer=True)
    placed = await washington.place_call("moscow")
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.UNREACHABLE
    hostile.relay.tamper = None
    offer = next(f for f in held if f["env"]["type"] == "call.offer")
    await hostile.relay.inject(M, offer)  # delivered late, without its cancel
    late = await moscow.wait_for_call(lambda c: c.call_id == placed.call_id, 10)
    assert late.state is CallState.ENDED and late.end_reason is EndReason.MISSED
    assert "after its caller gave up" in (late.alarm or "")
    await asyncio.sleep(0.5)
    assert not moscow.sessions and not moscow.final_stats, "no camera, no microphone"
    sent_by_moscow = [f["env"]["type"] for d, dev, f in hostile.relay.log
                      if d == "up" and dev == M and f.get("t") == "send"]
    assert "call.ringing" not in sent_by_moscow and "call.answer" not in sent_by_moscow


async def test_an_envelope_not_opened_for_a_passing_reason_stays_on_the_server_until_it_is(
        hostile: Hostile, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.terminal import link as link_module

    monkeypatch.setattr(link_module, "REQUEST_TIMEOUT_S", 1.0)
    # A stored envelope waits for moscow while it is offline: a (genuine) tamper notice
    # from washington, which moscow can only open after looking washington up.
    w_id, w_keys = device_of(hostile.dirs, "washington")
    notice = seal_envelope(w_keys, w_id, hostile.public(M), "notice.tamper",
                           {"envelope_id": "x" * 22, "envelope_type": "call.offer",
                            "code": "bad_signature"}, now_ms())
    sender = ServerLink(hostile.relay.url, w_id, w_keys, receive=False)
    await sender.connect_once()
    assert await sender.send_envelope(notice, ephemeral=False) == "stored"
    await sender.close()
    dropping = True

    async def no_directory(direction: str, device: str | None,
                           frame: dict[str, Any]) -> dict[str, Any] | None:
        if dropping and direction == "down" and device == M and frame.get("t") == "directory":
            return None  # the lookup times out
        return frame

    hostile.relay.tamper = no_directory
    moscow = await hostile.line.terminal("moscow")
    assert hostile.line.server is not None
    store = hostile.line.server.store

    def acked() -> bool:
        return any(d == "up" and dev == M and f.get("t") == "ack" and f["id"] == notice.id
                   for d, dev, f in hostile.relay.log)

    await asyncio.sleep(2.5)  # the first try timed out, and the retry too
    assert not acked() and [row[1] for row in store.pending(M, 0, 10)] == [notice.id]
    assert moscow.alarms == []
    dropping = False  # the directory answers again: the next try opens it
    await wait_until(acked, 15, "the acknowledgement once it was handled")
    assert ErrorCode.BAD_SIGNATURE in alarm_codes(moscow)  # what the notice reported
    await wait_until(lambda: store.pending(M, 0, 10) == [], 5, "gone from the server")
    # The server confirmed the ack: delivered again now, it is a replay.
    await wait_until(lambda: store_confirmed(moscow, notice.id), 5, "the ack confirmed")
    again = next(f for d, dev, f in hostile.relay.log
                 if d == "down" and dev == M and f.get("t") == "deliver")
    await hostile.relay.inject(M, again)
    await wait_until(lambda: ErrorCode.REPLAY in alarm_codes(moscow), 5, "the replay alarm")


def store_confirmed(terminal: Terminal, envelope_id: str) -> bool:
    return terminal.store.ack_confirmed(envelope_id)


async def test_a_stored_envelope_delivered_again_after_a_lost_ack_is_no_alarm(
        hostile: Hostile) -> None:
    # The server "crashes" before committing the ack: its confirmation never comes, and
    # the envelope is delivered again, which the terminal acknowledges again quietly.
    async def lose_confirmations(direction: str, device: str | None,
                                 frame: dict[str, Any]) -> dict[str, Any] | None:
        return None if direction == "down" and frame.get("t") == "acked" else frame

    hostile.relay.tamper = lose_confirmations
    w_id, w_keys = device_of(hostile.dirs, "washington")
    moscow = await hostile.line.terminal("moscow")
    notice = seal_envelope(w_keys, w_id, hostile.public(M), "notice.tamper",
                           {"envelope_id": "y" * 22, "envelope_type": "call.offer",
                            "code": "bad_signature"}, now_ms())
    sender = ServerLink(hostile.relay.url, w_id, w_keys, receive=False)
    await sender.connect_once()
    await sender.send_envelope(notice, ephemeral=False)
    await sender.close()

    def acks() -> int:
        return sum(1 for d, dev, f in hostile.relay.log if d == "up" and dev == M
                   and f.get("t") == "ack" and f["id"] == notice.id)

    await wait_until(lambda: acks() == 1, 10, "the first acknowledgement")
    first = next(f for d, dev, f in hostile.relay.log
                 if d == "down" and dev == M and f.get("t") == "deliver")
    await hostile.relay.inject(M, first)
    await wait_until(lambda: acks() == 2, 5, "acknowledged again")
    assert ErrorCode.REPLAY not in alarm_codes(moscow)
    assert not moscow.store.ack_confirmed(notice.id)
