"""Bad input to the line server: each gets a clear error and nobody else notices.

Real server, real WebSocket clients, real enrolled devices. A healthy terminal
pair stays connected and keeps working throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest

from parley.clock import now_ms
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys
from parley.core.relay.limits import Limits
from parley.lab import create_parties
from tests.harness import LocalLine, active_call, connect, device_of


async def test_bad_input_gets_clear_errors_while_others_keep_talking(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    await line.stop_server()  # with a short hold for connections closed before login
    await line.start(port=line.port, limits=Limits(hold_refused=0.5))
    dirs = await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    pings_ok = 0

    async def keep_pinging() -> None:
        nonlocal pings_ok
        while True:
            reply = await washington.link.request({"t": "ping"})
            assert reply["t"] == "pong"
            pings_ok += 1
            await asyncio.sleep(0.02)

    pinger = asyncio.ensure_future(keep_pinging())
    try:
        # Unauthenticated: anything but hello is answered once; then nothing it sends is
        # read, and it is closed after the server's hold (errors to someone who has not
        # logged in are never amplified, and a flood cannot come straight back).
        hold = line.server.config.limits.hold_refused if line.server else 0
        for junk in (json.dumps({"t": "directory", "party": "moscow"}), "{not json",
                     "\n".join(["{}"] * 50)):
            c = await connect(line.url, http, batch="\n" in junk)
            await c.send(junk)
            err = await c.recv()
            assert err["t"] == "error" and err["code"] in ("not_authenticated", "bad_message")
            assert err["code"] == "bad_message" or "hello" in err["hint"]
            await c.send({"t": "ping", "ref": "anyone?"})
            started = asyncio.get_running_loop().time()
            closing = await asyncio.wait_for(c.ws.receive(), hold + 5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR)
            assert asyncio.get_running_loop().time() - started >= hold - 0.2, (junk, closing)
            assert not c.frames  # nothing more was answered

        # Wrong signature on the challenge: refused, then held unread and closed (a flood of
        # bad logins costs the server a connection each, not a login each).
        device, _ = device_of(dirs, "washington")
        c = await connect(line.url, http, batch=False)
        reply = await c.login(device, DeviceKeys.generate(), line.url)
        assert (reply["t"], reply["code"]) == ("error", "auth_failed")
        await c.send({"t": "ping", "ref": "still there?"})
        closing = await asyncio.wait_for(c.ws.receive(), hold + 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR)
        assert not c.frames

        # A login signed for another server (or replayed from another session): refused.
        device, keys = device_of(dirs, "moscow")
        c = await connect(line.url, http, batch=False)
        reply = await c.login(device, keys, "http://127.0.0.1:1")
        assert reply["code"] == "auth_failed"

        # Unknown device.
        c = await connect(line.url, http, batch=False)
        reply = await c.login("nobody/desk", DeviceKeys.generate(), line.url)
        assert reply["code"] == "unknown_device" and "enroll" in reply["hint"]

        # A logged-in client sending junk of every kind keeps its session.
        c = await connect(line.url, http, batch=False)
        device, keys = device_of(dirs, "moscow")
        assert (await c.login(device, keys, line.url))["t"] == "welcome"
        cases: list[tuple[str, str]] = [
            ("{not json", "bad_message"),
            ("[1, 2, 3]", "bad_message"),
            (json.dumps({"no": "type"}), "bad_message"),
            (json.dumps({"t": "launch_missiles"}), "unknown_type"),
            (json.dumps({"t": "directory"}), "bad_message"),
            (json.dumps({"t": "directory", "party": 5}), "bad_message"),
            (json.dumps({"t": "ping", "extra": True}), "bad_message"),
            (json.dumps({"t": "send", "env": {"v": 1}}), "bad_message"),
            ("[" * 5000 + "]" * 5000, "bad_message"),
            (json.dumps({"t": "ping", "ref": "x" * 400_000}), "too_large"),
        ]
        for frame, code in cases:
            await c.send(frame)
            reply = await c.recv()
            assert (reply["t"], reply["code"]) == ("error", code), frame[:60]
            assert reply["message"]
        await c.send({"t": "ping", "ref": "still-here"})
        pong = await c.recv()
        assert {k: v for k, v in pong.items() if k != "time"} == {"t": "pong",
                                                                  "ref": "still-here"}
        assert type(pong["time"]) is int and abs(pong["time"] - now_ms()) < 5_000, pong

        # Envelopes that lie about their sender, or go where there is no line.
        env = seal_envelope(keys, device, washington.me, "call.ringing", {"call_id": "x"}, 1)
        forged = {**env.to_json(), "from": "washington/hotline"}
        await c.send({"t": "send", "env": forged, "ref": "r1"})
        reply = await c.recv()
        assert reply["code"] == "bad_message" and "is not you" in reply["message"]

        # Far too much before logging in: the server stops reading that one connection
        # (it keeps nothing of it but what it had read) and closes it; it lives on.
        c2 = await connect(line.url, http, batch=False)
        with contextlib.suppress(ConnectionError):
            await c2.send("x" * (2 * 1024 * 1024))
        closing = await asyncio.wait_for(c2.ws.receive(), hold + 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR)
        assert line.server is not None and line.server.listener is not None
        assert line.server.listener.held_total >= 1

        # Binary frames are refused politely.
        await c.ws.send_bytes(b"\x00\x01")
        assert (await c.recv())["code"] == "bad_message"
    finally:
        healthy = not pinger.done()  # it loops forever unless a ping failed
        pinger.cancel()

    assert healthy and pings_ok > 0
    assert (await washington.link.request({"t": "ping"}))["t"] == "pong"
    # And after all that, the healthy pair still makes a verified call.
    caller, callee = await active_call(washington, moscow)
    assert caller.verified and caller.sas == callee.sas


async def test_enrollment_codes_are_one_time_and_expire(line: LocalLine,
                                                        http: aiohttp.ClientSession) -> None:
    codes = create_parties(line.root / "server", {"washington": ("W", "UTC")}, [])
    keys = DeviceKeys.generate().public("x/x").to_json()
    body = {"device": "desk", "keys": {k: keys[k] for k in ("sign", "kem", "kem_sig")}}

    async def enroll(payload: Any) -> tuple[int, dict[str, Any]]:
        async with http.post(line.url + "/v1/enroll", data=json.dumps(payload)) as resp:
            return resp.status, await resp.json()

    status, reply = await enroll({**body, "code": codes["washington"]})
    assert status == 200 and reply["device"] == "washington/desk"
    status, reply = await enroll({**body, "code": codes["washington"]})
    assert (status, reply["code"]) == (400, "enroll_code_used")
    assert "new one" in reply["hint"]

    from parley.server.store import ServerStore

    admin = ServerStore(line.root / "server" / "server.db")
    expired = admin.create_enroll_code("washington", ttl_ms=-1, now_ms=0)
    admin.close()
    status, reply = await enroll({**body, "code": expired})
    assert (status, reply["code"]) == (400, "enroll_code_expired")
    status, reply = await enroll({**body, "code": "AAAA-BBBB-CCCC"})
    assert (status, reply["code"]) == (400, "enroll_code_invalid")
    status, reply = await enroll({"code": 5})
    assert (status, reply["code"]) == (400, "bad_message")
    codes = create_parties(line.root / "server", {"washington": ("W", "UTC")}, [])
    status, reply = await enroll({**body, "device": "Bad Name!", "code": codes["washington"]})
    assert (status, reply["code"]) == (400, "bad_message")
    assert "device name" in reply["message"] and "Bad Name!" in reply["message"]
    forged_keys = {**body["keys"], "sign": DeviceKeys.generate().public("x/x").to_json()["sign"]}
    codes = create_parties(line.root / "server", {"washington": ("W", "UTC")}, [])
    status, reply = await enroll({**body, "keys": forged_keys, "code": codes["washington"]})
    assert (status, reply["code"]) == (400, "bad_signature")
    # A bundle with a field too many, or with an id of its own choosing, is refused
    # before the code is spent: the server names the device.
    for keys in ({**body["keys"], "id": "moscow/desk"}, {"sign": body["keys"]["sign"]}):
        status, reply = await enroll({**body, "keys": keys, "code": codes["washington"]})
        assert (status, reply["code"]) == (400, "bad_message")
        assert "enrollment request.keys" in reply["message"]
    # The code is still good, but not for taking over washington/desk, which exists:
    # that is refused (and logged), the code stays unspent, and another name enrolls.
    status, reply = await enroll({**body, "code": codes["washington"]})
    assert (status, reply["code"]) == (400, "device_exists")
    assert "parley server device replace washington/desk" in reply["hint"]
    status, reply = await enroll({**body, "device": "laptop", "code": codes["washington"]})
    assert status == 200 and reply["device"] == "washington/laptop"
    async with http.post(line.url + "/v1/enroll", data=b"x" * 100_000) as resp:
        assert resp.status == 413


async def test_calls_to_offline_or_unlined_parties_are_refused_clearly(line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    placed = await washington.place_call("moscow")  # moscow's terminal is not running
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state == "ended", 10)
    assert ended.end_reason == "unreachable"
    from parley.core.errors import RemoteError

    with pytest.raises(RemoteError) as err:
        await washington.peers.resolve("london")
    assert err.value.code in ("unknown_party", "no_line")


async def test_status_page_health_and_metrics(line: LocalLine,
                                              http: aiohttp.ClientSession) -> None:
    await line.provision()
    await line.terminal("washington")
    async with http.get(line.url + "/") as resp:
        page = await resp.text()
        assert resp.status == 200 and "washington/hotline" in page and "online" in page
    async with http.get(line.url + "/healthz") as resp:
        assert (await resp.json())["ok"] is True
    async with http.get(line.url + "/metrics") as resp:
        text = await resp.text()
        assert "parley_devices_online 1" in text
