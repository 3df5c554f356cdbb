"""Browser media without a browser: the page socket's input checks and the ICE filter.

These talk to a real terminal's real local API over a WebSocket, as a page
would, to show that what the page sends is checked and that bad input is
answered, not fatal.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from parley.core.call import CallState, EndReason, MediaKind
from parley.terminal.browser import host_candidate_allowed
from tests.browser import PersonFactory, PersonTerminal, people
from tests.harness import LocalLine

__all__ = ["people"]  # fixture used below

LOOPBACK = ("127.0.0.1",)


@pytest.mark.parametrize(("candidate", "allowed"), [
    ("candidate:1 1 udp 2122194687 127.0.0.1 43330 typ host generation 0", True),
    ("candidate:2 1 udp 2122063615 127.0.0.2 57222 typ host generation 0", False),  # unlisted
    ("candidate:3 1 udp 2122267903 ::1 57882 typ host generation 0", False),
    ("candidate:4 1 udp 2122260223 4b1c5d0e-8a3f.local 50000 typ host", False),  # mDNS
    ("candidate:5 1 udp 1686052607 127.0.0.3 40000 typ srflx raddr 127.0.0.2 rport 0", True),
    ("candidate:6 1 udp 41885439 127.0.0.4 3478 typ relay raddr 127.0.0.2 rport 0", True),
    ("", True),  # end of candidates
    ("candidate:7 1 udp", False),  # not a candidate line
])
def test_only_listed_host_addresses_leave_the_terminal(candidate: str, allowed: bool) -> None:
    assert host_candidate_allowed(candidate, LOOPBACK) is allowed
    assert host_candidate_allowed(candidate, None) is True


async def page_socket(http: aiohttp.ClientSession, person: PersonTerminal
                      ) -> aiohttp.ClientWebSocketResponse:
    origin = person.control.origin
    ws = await http.ws_connect(f"{origin.replace('http', 'ws')}/api/events"
                               f"?token={person.control.token}", headers={"Origin": origin})
    first = await ws.receive_json(timeout=5)
    assert first["t"] == "status" and first["status"]["media"] == "browser"
    return ws


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        message = await ws.receive_json(timeout=5)
        if message["t"] == kind:
            return dict(message)


async def test_bad_page_messages_are_answered_and_the_socket_stays(
        line: LocalLine, people: PersonFactory, http: aiohttp.ClientSession) -> None:
    await line.provision()
    person = await people("washington")
    ws = await page_socket(http, person)
    for bad, code in (
            ("not json", "bad_message"),
            (json.dumps([1, 2]), "unknown_type"),
            (json.dumps({"t": "media.launch"}), "unknown_type"),
            (json.dumps({"t": "media.description", "call_id": "x"}), "bad_message"),
            (json.dumps({"t": "media.connected", "call_id": "x",
                         "certificates": [{"algorithm": "sha-256"}]}), "bad_message"),
            (json.dumps({"t": "media.stats", "call_id": "x",
                         "stats": {"a": {"b": {"c": 1}}}}), "bad_message")):
        await ws.send_str(bad)
        reply = await ws.receive_json(timeout=5)
        assert (reply["t"], reply["error"]["code"]) == ("error", code), bad
    # Well-formed messages for a call this page does not hold are ignored, and so are
    # binary frames: the next thing the socket hears is the answer to the hello after them.
    for ignored in ({"t": "media.failed", "call_id": "nosuchcall", "reason": "x"},
                    {"t": "media.description", "call_id": "nosuchcall", "sdp": "v=0"},
                    {"t": "media.candidate", "call_id": "nosuchcall", "candidate": ""},
                    {"t": "media.connected", "call_id": "nosuchcall", "certificates": []},
                    {"t": "media.stats", "call_id": "nosuchcall", "stats": {"a": 1}}):
        await ws.send_json(ignored)
    await ws.send_bytes(b"\x00\x01")
    await ws.send_json({"t": "page.hello"})
    assert (await ws.receive_json(timeout=5)) == {"t": "page.role", "media": True}
    await ws.close()


async def test_the_newest_page_that_says_hello_does_the_media(
        line: LocalLine, people: PersonFactory, http: aiohttp.ClientSession) -> None:
    await line.provision()
    person = await people("washington")
    first = await page_socket(http, person)
    await first.send_json({"t": "page.hello"})
    assert (await next_of(first, "page.role"))["media"] is True
    second = await page_socket(http, person)
    await second.send_json({"t": "page.hello"})
    assert (await next_of(second, "page.role"))["media"] is True
    assert (await next_of(first, "page.role"))["media"] is False
    await second.close()
    assert (await next_of(first, "page.role"))["media"] is True
    await first.close()


async def test_a_page_from_another_origin_is_refused(
        line: LocalLine, people: PersonFactory, http: aiohttp.ClientSession) -> None:
    await line.provision()
    person = await people("washington")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(
            f"{person.control.origin.replace('http', 'ws')}/api/events"
            f"?token={person.control.token}", headers={"Origin": "http://evil.example"})
    assert refused.value.status == 403


async def test_a_page_that_reports_a_malformed_certificate_fails_the_call_not_as_intercepted(
        line: LocalLine, people: PersonFactory, http: aiohttp.ClientSession) -> None:
    """A broken page is a failed call with a reason; only a real mismatch is an interception."""
    await line.provision()
    person = await people("washington")
    await line.terminal("moscow", auto_answer=True)
    ws = await page_socket(http, person)
    await ws.send_json({"t": "page.hello"})
    assert (await next_of(ws, "page.role"))["media"] is True

    placed = await person.terminal.place_call("moscow", MediaKind.AUDIO)
    opened = await next_of(ws, "media.open")
    assert opened["call_id"] == placed.call_id and "offer" not in opened
    fingerprint = ":".join(["AB"] * 32)
    await ws.send_json({"t": "media.description", "call_id": placed.call_id, "sdp": (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\n"
        "a=ice-ufrag:page\r\na=ice-pwd:a22characterpassword00\r\na=rtcp-mux\r\n"
        f"a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\n"
        "a=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n")})
    assert (await next_of(ws, "media.answer"))["call_id"] == placed.call_id
    await ws.send_json({"t": "media.connected", "call_id": placed.call_id,
                        "certificates": [{"algorithm": "sha-256", "fingerprint": "not:hex"}]})
    ended = await person.terminal.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 10)
    assert ended.end_reason is EndReason.FAILED
    assert "malformed certificate fingerprint" in (ended.alarm or "")
    assert not person.terminal.alarms  # no security alarm: nothing was intercepted
    await ws.close()


async def test_hanging_up_while_the_camera_prompt_is_open_ends_the_call_at_once(
        line: LocalLine, people: PersonFactory, http: aiohttp.ClientSession) -> None:
    """The person has not yet allowed the camera (the page never answers media.open)."""
    await line.provision()
    person = await people("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    ws = await page_socket(http, person)
    await ws.send_json({"t": "page.hello"})
    assert (await next_of(ws, "page.role"))["media"] is True

    waiting = await person.terminal.place_call("moscow", MediaKind.AUDIO)
    assert (await next_of(ws, "media.open"))["call_id"] == waiting.call_id
    ended: list[str] = []
    person.terminal.subscribe(lambda e: ended.append(e["call"]["call_id"])
                              if e["t"] == "call" and e["call"]["state"] == "ended" else None)
    person.terminal.hangup(waiting.call_id)
    # The page is told to let go of the camera, and the UI hears the call ended, now --
    # not when the 55 s media-setup wait runs out.
    closed = await asyncio.wait_for(next_of(ws, "media.close"), 5)
    assert closed["call_id"] == waiting.call_id and waiting.call_id in ended
    assert not person.terminal.sessions
    assert not moscow.book.calls()  # the offer never went: moscow never heard of the call
    await ws.close()
