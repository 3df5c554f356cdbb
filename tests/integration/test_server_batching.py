"""Batches on the wire: several frames in one WebSocket message, each as if alone.

Real server, real SQLite, real WebSocket clients offering the batching
subprotocol (`wire.BATCH_SUBPROTOCOL`). Whatever a batch holds, every frame in
it is answered on its own, in order; a bad one gets its own error and its
neighbours carry on; the limits per frame and per message hold; and a client
that did not offer batches still gets exactly one frame per message.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core import wire
from parley.core.encoding import b64e
from parley.core.envelope import Envelope, seal_envelope
from parley.core.keys import DeviceKeys, DevicePublicKeys
from parley.core.relay.fastpath import quick_send
from parley.core.relay.limits import Limits
from parley.terminal.link import ServerLink
from tests.harness import LocalLine, connect, device_of, local_line, logged_in, wait_until


def envelope_to(keys: DeviceKeys, sender: str, recipient: DevicePublicKeys,
                n: int) -> dict[str, Any]:
    return seal_envelope(keys, sender, recipient, "msg.text", {"text": f"number {n}"},
                         1_000 + n).to_json()


async def test_each_frame_of_a_batch_is_answered_in_order_as_if_alone(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    client, device, keys = await logged_in(line, http, dirs, "washington")
    assert client.batched
    forged = {**seal_envelope(keys, device, keys.public("moscow/hotline"), "msg.text",
                              {"text": "hi"}, 1).to_json(), "from": "moscow/hotline"}
    await client.send(
        {"t": "ping", "ref": "first"},
        "{not json",
        {"t": "launch_missiles"},
        {"t": "ping", "ref": "extra", "extra": True},
        {"t": "directory", "party": "moscow", "ref": "dir"},
        {"t": "send", "env": forged, "ref": "forged"},
        {"t": "ping", "ref": "x" * (wire.MAX_FRAME + 1)},
        "[" * 50 + "]" * 50,
        {"t": "ping", "ref": "last"},
    )
    replies = await client.recv_n(9)
    assert [(r["t"], r.get("code"), r.get("ref")) for r in replies] == [
        ("pong", None, "first"),
        ("error", "bad_message", None),
        ("error", "unknown_type", None),
        ("error", "bad_message", None),
        ("directory", None, "dir"),
        ("error", "bad_message", "forged"),
        ("error", "too_large", None),
        ("error", "bad_message", None),
        ("pong", None, "last"),
    ]
    assert "not valid JSON" in replies[1]["message"]
    assert "launch_missiles" in replies[2]["message"]
    assert "extra" in replies[3]["message"]
    assert replies[4]["devices"][0]["id"] == "moscow/hotline"
    assert "is not you" in replies[5]["message"]
    assert "nested too deeply" in replies[7]["message"]
    # Nine frames in, nine answers out, and the session is as good as new.
    await client.send({"t": "ping", "ref": "again"})
    assert (await client.recv())["ref"] == "again"


async def test_envelopes_in_batches_are_relayed_stored_and_acknowledged_in_order(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    sender, sender_id, sender_keys = await logged_in(line, http, dirs, "washington")
    receiver, receiver_id, receiver_keys = await logged_in(line, http, dirs, "moscow")
    assert (await sender.recv())["t"] == "presence"  # moscow came online
    recipient = receiver_keys.public(receiver_id)

    # Ephemeral: delivered now, in order; one for a device that does not exist fails alone.
    envs = [envelope_to(sender_keys, sender_id, recipient, n) for n in range(6)]
    stray = {**envs[5], "to": "moscow/nobody"}
    frames: list[dict[str, Any]] = [
        {"t": "send", "env": env, "ephemeral": True, "ref": f"e{n}"}
        for n, env in enumerate(envs[:5])]
    frames.insert(2, {"t": "send", "env": stray, "ephemeral": True, "ref": "stray"})
    await sender.send(*frames)
    replies = await sender.recv_n(6)
    assert [(r["t"], r.get("ref"), r.get("code") or r.get("status")) for r in replies] == [
        ("sent", "e0", "delivered"), ("sent", "e1", "delivered"),
        ("error", "stray", "unknown_device"),
        ("sent", "e2", "delivered"), ("sent", "e3", "delivered"), ("sent", "e4", "delivered")]
    delivered = await receiver.recv_n(5)
    assert [d["env"] for d in delivered] == envs[:5]

    # Stored while the recipient is away; it gets them at login, in order, and acks in one go.
    await receiver.ws.close()
    assert (await sender.recv()) == {"t": "presence", "device": receiver_id, "online": False}
    stored = [envelope_to(sender_keys, sender_id, recipient, n) for n in range(10, 14)]
    await sender.send(*({"t": "send", "env": env, "ref": f"s{n}"}
                        for n, env in enumerate(stored)))
    replies = await sender.recv_n(4)
    assert [(r["ref"], r["status"]) for r in replies] == [(f"s{n}", "stored") for n in range(4)]

    receiver = await connect(line.url, http)
    assert (await receiver.login(receiver_id, receiver_keys, line.url))["t"] == "welcome"
    mailbox = await receiver.recv_n(4)
    assert [m["env"] for m in mailbox] == stored
    await receiver.send(*({"t": "ack", "id": env["id"]} for env in stored),
                        {"t": "ping", "ref": "after-acks"})
    assert (await receiver.recv())["ref"] == "after-acks"  # so the acks were handled
    async with http.get(line.url + "/metrics") as resp:
        assert "parley_mailbox_envelopes 0" in await resp.text()


@pytest.fixture(params=["sqlite", "postgresql"])
async def either_line(request: pytest.FixtureRequest, tmp_path: Path
                      ) -> AsyncIterator[tuple[LocalLine, Any]]:
    """A line on each store, and a connection of another's to its database, which sees
    only what was committed. (On PostgreSQL the COMMIT runs off the event loop.)"""
    local = LocalLine(tmp_path)
    if request.param == "sqlite":
        await local.start()
        other: Any = sqlite3.connect(local.root / "server" / "server.db")
    else:
        url = request.getfixturevalue("pg_url")
        await local.start(database=url)
        other = psycopg.connect(url, autocommit=True)
    try:
        yield local, other
    finally:
        other.close()
        await local.stop()


async def test_stored_means_committed_before_the_sender_hears_it(
        either_line: tuple[LocalLine, Any], http: aiohttp.ClientSession,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mailbox writes are committed a turn at a time, never after the frame that tells."""
    line, other = either_line
    dirs = await line.provision(verify=False)
    mark = "?" if isinstance(other, sqlite3.Connection) else "%s"
    told, untrue = [], []

    def on_disk(ids: list[str]) -> set[str]:
        marks = ",".join([mark] * len(ids))
        return {row[0] for row in other.execute(
            f"SELECT id FROM mailbox WHERE id IN ({marks})", ids)}

    # Look at the disk at the very moment the server hands a "stored" to a socket.
    send_str = web.WebSocketResponse.send_str

    async def watched(ws: web.WebSocketResponse, data: str, compress: int | None = None) -> None:
        for frame in map(json.loads, data.split("\n")):
            if frame.get("status") == "stored":
                told.append(frame["id"])
                if not on_disk([frame["id"]]):
                    untrue.append(frame["id"])
        await send_str(ws, data, compress)

    monkeypatch.setattr(web.WebSocketResponse, "send_str", watched)
    sender, sender_id, sender_keys = await logged_in(line, http, dirs, "washington")
    receiver_id, receiver_keys = device_of(dirs, "moscow")
    recipient = receiver_keys.public(receiver_id)
    try:
        envs = [envelope_to(sender_keys, sender_id, recipient, n) for n in range(40)]
        for start in range(0, 40, 10):  # a batch, then single frames back to back
            # A ping first, so that a reply is already queued when the first envelope is.
            if start == 0:
                await sender.send({"t": "ping", "ref": "before"},
                                  *({"t": "send", "env": env} for env in envs[:10]))
            else:
                await sender.send({"t": "ping", "ref": "before"})
                for env in envs[start:start + 10]:
                    await sender.send({"t": "send", "env": env})
            assert (await sender.recv())["ref"] == "before"
            for env in envs[start:start + 10]:
                reply = await sender.recv()
                assert (reply["t"], reply["id"], reply["status"]) == ("sent", env["id"], "stored")
        assert told == [env["id"] for env in envs] and untrue == []

        receiver = await connect(line.url, http)
        assert (await receiver.login(receiver_id, receiver_keys, line.url))["t"] == "welcome"
        assert [(await receiver.recv())["env"]["id"] for _ in envs] == [e["id"] for e in envs]
        await receiver.send(*({"t": "ack", "id": env["id"]} for env in envs[:20]))
        for env in envs[20:]:
            await receiver.send({"t": "ack", "id": env["id"]})
        await receiver.send({"t": "ping", "ref": "acked"})
        assert (await receiver.recv())["ref"] == "acked"
        assert on_disk([env["id"] for env in envs]) == set()  # the acks were committed too
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("window", [Limits().mailbox_window, 7],
                         ids=["one window", "windows of 7"])
async def test_a_terminal_link_reads_its_mailbox_in_batches_and_acks_in_batches(
        line: LocalLine, http: aiohttp.ClientSession, window: int) -> None:
    # With a window of 7 the server sends more as acknowledgements come, none twice,
    # and the whole mailbox arrives without a reconnection.
    await line.stop_server()
    await line.start(port=line.port, limits=Limits(mailbox_window=window))
    dirs = await line.provision(verify=False)
    sender, sender_id, sender_keys = await logged_in(line, http, dirs, "washington")
    receiver_id, receiver_keys = device_of(dirs, "moscow")
    stored = [envelope_to(sender_keys, sender_id, receiver_keys.public(receiver_id), n)
              for n in range(30)]
    await sender.send(*({"t": "send", "env": env} for env in stored))
    assert {r["status"] for r in await sender.recv_n(30)} == {"stored"}

    received: list[dict[str, Any]] = []
    link: ServerLink

    async def on_deliver(env: dict[str, Any]) -> None:
        received.append(env)
        await link.ack(env["id"])

    link = ServerLink(line.url, receiver_id, receiver_keys, on_deliver=on_deliver)
    try:
        await link.connect_once()  # the welcome and the mailbox may share a message
        assert link._outbox is not None and link._outbox.batched
        await wait_until(lambda: len(received) == 30, what="the mailbox")
        assert received == stored
        assert (await link.request({"t": "ping"}))["t"] == "pong"  # after the acks
        async with http.get(line.url + "/metrics") as resp:
            assert "parley_mailbox_envelopes 0" in await resp.text()
        # And what is sent to it now arrives as it comes.
        more = envelope_to(sender_keys, sender_id, receiver_keys.public(receiver_id), 99)
        await sender.send({"t": "send", "env": more, "ephemeral": True, "ref": "now"})
        await wait_until(lambda: len(received) == 31, what="the live envelope")
        assert received[-1] == more
    finally:
        await link.close()


async def test_limits_per_message_and_per_frame(line: LocalLine,
                                                http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    client, _, _ = await logged_in(line, http, dirs, "washington")

    # One frame too many: one error for the message, and none of it is processed.
    await client.send(*({"t": "ping", "ref": f"p{n}"} for n in range(wire.MAX_BATCH + 1)))
    refused = await client.recv()
    assert (refused["t"], refused["code"]) == ("error", "too_large")
    assert str(wire.MAX_BATCH) in refused["message"]
    await client.send({"t": "ping", "ref": "alone"})
    assert (await client.recv())["ref"] == "alone"

    # As many as allowed: all answered, in order; what comes back keeps to the same limits.
    client.messages.clear()
    await client.send(*({"t": "ping", "ref": f"p{n}"} for n in range(wire.MAX_BATCH)))
    pongs = await client.recv_n(wire.MAX_BATCH)
    assert [p["ref"] for p in pongs] == [f"p{n}" for n in range(wire.MAX_BATCH)]
    for message in client.messages:
        assert message.count("\n") < wire.MAX_BATCH and len(message) <= wire.MAX_FRAME

    # Big frames are packed only as far as MAX_FRAME a message.
    receiver, receiver_id, receiver_keys = await logged_in(line, http, dirs, "moscow")
    sender_id, sender_keys = device_of(dirs, "washington")
    big = [seal_envelope(sender_keys, sender_id, receiver_keys.public(receiver_id), "msg.text",
                         {"text": f"{n}" * 100_000}, 1).to_json() for n in range(3)]
    await client.send(*({"t": "send", "env": env, "ephemeral": True} for env in big))
    delivered = await receiver.recv_n(3)
    assert [d["env"] for d in delivered] == big
    assert [m.count("\n") + 1 for m in receiver.messages[-2:]] == [2, 1]
    assert all(len(m) <= wire.MAX_FRAME for m in receiver.messages)
    assert (await client.recv())["t"] == "presence"
    assert [r["t"] for r in await client.recv_n(3)] == ["sent"] * 3

    # A message over the WebSocket limit still closes just that connection (1009).
    await client.send("x" * (2 * 1024 * 1024))
    closing = await asyncio.wait_for(client.ws.receive(), 5)
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert client.ws.close_code == 1009


async def test_rate_limit_counts_every_frame_of_a_batch(tmp_path: Path,
                                                        http: aiohttp.ClientSession) -> None:
    async with local_line(tmp_path, Limits(rate_limit=5.0)) as line:
        dirs = await line.provision(verify=False)
        client, _, _ = await logged_in(line, http, dirs, "washington")
        await client.send(*({"t": "ping", "ref": f"p{n}"} for n in range(15)))
        replies = await client.recv_n(15)
        # A burst of twice the rate is allowed (refilling at 5/s adds none in a few ms);
        # each refused frame is answered, with its ref.
        assert [r["t"] for r in replies] == ["pong"] * 10 + ["error"] * 5
        assert [r["ref"] for r in replies] == [f"p{n}" for n in range(15)]
        assert {r["code"] for r in replies[10:]} == {"rate_limited"}


async def test_a_refused_login_ends_the_batch_it_came_in(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    device, _ = device_of(dirs, "washington")
    client = await connect(line.url, http)
    sig = DeviceKeys.generate().sign(wire.auth_statement(client.challenge["nonce"], device,
                                                         line.url))
    await client.send({"t": "hello", "device": device, "sig": b64e(sig)},
                      {"t": "ping", "ref": "sneaky"})
    reply = await client.recv()
    assert (reply["t"], reply["code"]) == ("error", "auth_failed")
    with pytest.raises(TimeoutError):  # the ping after it was never read: held, unanswered
        await asyncio.wait_for(client.ws.receive(), 1.0)
    assert not client.frames


async def test_clients_that_do_not_offer_batches_get_one_frame_per_message(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(verify=False)
    device, keys = device_of(dirs, "washington")
    client = await connect(line.url, http, batch=False)
    assert client.ws.protocol is None and not client.batched
    assert (await client.login(device, keys, line.url))["t"] == "welcome"
    for n in range(30):  # sent back to back, answered within the same turns
        await client.send({"t": "ping", "ref": f"p{n}"})
    pongs = await client.recv_n(30)
    assert [p["ref"] for p in pongs] == [f"p{n}" for n in range(30)]
    assert len(client.messages) == 32 and all("\n" not in m for m in client.messages)
    # Without batches a frame may still span lines, as JSON allows.
    await client.send(json.dumps({"t": "ping", "ref": "pretty"}, indent=2))
    assert (await client.recv())["ref"] == "pretty"


# -- the relay's fast path agrees with the general one -------------------------------------
# Pure checks rather than sockets, kept here beside the relay they speed up: whatever
# `quick_send` accepts, `wire.parse_message` and `Envelope.from_json` accept too, with the
# same values; and what Parley's clients actually send takes the fast path.

SENDER, RECIPIENT = DeviceKeys.generate(), DeviceKeys.generate()
SEALED = seal_envelope(SENDER, "washington/hotline", RECIPIENT.public("moscow/hotline"),
                       "call.ice", {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host"},
                       1_700_000_000_000).to_json()

# Mostly near the limits of what is valid, sometimes just past them.
_name = st.text(alphabet="az09-_", min_size=1, max_size=41) | st.text(alphabet="az09-_/A.é",
                                                                       max_size=3)
_device = st.builds("{}/{}".format, _name, _name) | _name
_base64ish = st.text(alphabet="AZaz09-_+/", max_size=90) | st.text(alphabet="AZaz09-_+/=.\n",
                                                                   max_size=9)
_numbers = (st.integers(-2, 3) | st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**63, 2**64,
                                                  2**64 + 1, -(2**63) - 1])
            | st.floats(allow_nan=False) | st.booleans())
_junk = st.none() | _numbers | st.text(max_size=6) | st.lists(st.integers(), max_size=2) \
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
_FIELD_VALUES = {
    "v": _numbers, "id": st.text(max_size=34),
    "type": st.text(alphabet="az09._-", min_size=1, max_size=41) | st.text(max_size=3),
    "from": _device, "to": _device, "time": _numbers, "ct": _base64ish,
    "sig": st.sampled_from([SEALED["sig"] + "==", SEALED["sig"][:-1], SEALED["sig"] + "A",
                            SEALED["sig"] + "=", SEALED["sig"][:-2] + "-_"]) | _base64ish,
}


@st.composite
def send_frames(draw: st.DrawFn) -> str:
    env: dict[str, Any] = dict(SEALED)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELD_VALUES)), max_size=3)):
        env[name] = draw(_FIELD_VALUES[name] if draw(st.integers(0, 5)) else _junk)
    if draw(st.integers(0, 9)) == 0:
        del env[draw(st.sampled_from(sorted(SEALED)))]
    if draw(st.integers(0, 9)) == 0:
        env[draw(st.text(max_size=4))] = 1
    frame: dict[str, Any] = {"t": "send" if draw(st.integers(0, 9)) else draw(st.text(max_size=5)),
                             "env": env}
    for name, values in (("ephemeral", st.booleans() | _junk),
                         ("ref", st.text(max_size=41) | _junk)):
        if draw(st.booleans()):
            frame[name] = draw(values if draw(st.integers(0, 5)) else _junk)
    if draw(st.integers(0, 9)) == 0:
        frame[draw(st.text(max_size=5))] = draw(_junk)
    if draw(st.integers(0, 19)) == 0:
        frame["env"] = draw(_junk)
    keys = draw(st.permutations(list(frame)))
    return json.dumps({k: frame[k] for k in keys}, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(send_frames())
def test_what_the_fast_path_accepts_the_general_path_accepts_alike(raw: str) -> None:
    quick = quick_send(raw)
    if quick is None:
        return
    general = wire.parse_message(raw, wire.CLIENT_MESSAGES, what="message")
    env = Envelope.from_json(general["env"])
    assert quick == (general, (env.id, env.sender, env.recipient, env.type))


def test_parley_clients_frames_take_the_fast_path() -> None:
    for frame in ({"t": "send", "env": SEALED, "ephemeral": True, "ref": "r" * 40},
                  {"t": "send", "env": SEALED, "ephemeral": False},
                  {"t": "send", "env": {**SEALED, "ct": ""}, "ref": ""}):
        for raw in (wire.encode_frame(frame), json.dumps(frame)):
            quick = quick_send(raw)
            assert quick is not None and quick[0] == frame
            assert quick[1] == (SEALED["id"], "washington/hotline", "moscow/hotline",
                                SEALED["type"])
