"""The terminal's link to the server survives the server going away and coming back."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, web

from parley.core import wire
from parley.core.errors import ErrorCode, RemoteError
from parley.core.keys import DeviceKeys
from parley.terminal.enroll import enroll
from parley.terminal.link import ServerLink
from parley.terminal.store import TerminalStore
from tests.harness import LocalLine, active_call, impostor, wait_until


async def test_terminals_reconnect_after_a_server_restart_and_call_again(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    events: list[bool] = []
    washington.subscribe(lambda e: events.append(e["connected"]) if e["t"] == "link" else None)

    await line.restart_server()
    await wait_until(lambda: False in events, 10, "the drop to be noticed")
    await asyncio.wait_for(washington.link.connected.wait(), 15)
    await asyncio.wait_for(moscow.link.connected.wait(), 15)
    assert events[-1] is True and washington.status()["connected"]
    caller, callee = await active_call(washington, moscow)
    assert caller.verified and caller.sas == callee.sas


async def test_a_terminal_started_before_its_server_connects_when_it_appears(
        line: LocalLine) -> None:
    await line.provision()
    await line.stop_server()
    washington = await line.terminal("washington", connect=False)
    await asyncio.sleep(0.6)  # long enough for a first attempt that must fail
    assert not washington.link.connected.is_set()
    await line.start(port=line.port)
    await asyncio.wait_for(washington.link.connected.wait(), 15)


async def test_a_server_that_answers_with_an_oversized_batch_is_refused_and_retried() -> None:
    """A hostile server's malformed login reply is a refused login, not the end of the link."""
    connections = 0

    async def hostile(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse(protocols=(wire.BATCH_SUBPROTOCOL,))
        await ws.prepare(request)
        await ws.send_str("\n".join(['{"t":"pong"}'] * (wire.MAX_BATCH + 1)))
        await ws.receive()
        return ws

    async with impostor(web.get("/v1/ws", hostile)) as url:
        link = ServerLink(url, "washington/desk", DeviceKeys.generate())
        task = asyncio.ensure_future(link.run())
        try:
            await wait_until(lambda: link.last_error is not None, 10, "the login to be refused")
            assert link.last_error is not None and link.last_error.code is ErrorCode.TOO_LARGE
            assert connections == 1 and not task.done() and not link.connected.is_set()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await link.close()


async def test_enrolling_at_an_address_that_is_not_a_line_server_says_so(
        tmp_path: Path) -> None:
    async def not_parley(_request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad Gateway</html>",
                            content_type="text/html")

    store = TerminalStore.init(tmp_path / "desk", "desk")
    try:
        async with impostor(web.post("/v1/enroll", not_parley)) as url:
            with pytest.raises(RemoteError) as refused:
                await enroll(store, url, "AAAA-BBBB-CCCC")
        assert "unreadable enrollment reply" in refused.value.message
        assert "line server" in refused.value.hint
        assert store.get("device_id") is None
    finally:
        store.close()


def test_an_error_code_from_another_version_reads_as_a_server_error() -> None:
    assert ErrorCode.from_wire("no_line") is ErrorCode.NO_LINE
    assert ErrorCode.from_wire("something_new") is ErrorCode.SERVER_ERROR
    assert ErrorCode.from_wire(None) is ErrorCode.SERVER_ERROR


async def test_a_stopping_server_closes_every_connection_at_once(line: LocalLine) -> None:
    """Logged-in or not, receiving or send-only: each gets 'going away', not a timeout."""
    await line.provision()
    await line.terminal("washington")
    async with aiohttp.ClientSession() as http:
        anonymous = await http.ws_connect(line.url.replace("http", "ws") + "/v1/ws")
        assert (await anonymous.receive_json(timeout=5))["t"] == "challenge"
        started = asyncio.get_running_loop().time()
        await line.stop()
        closing = await anonymous.receive(timeout=5)
        assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, WSCloseCode.GOING_AWAY)
        assert asyncio.get_running_loop().time() - started < 5
