"""The terminal's link to the server survives the server going away and coming back."""

from __future__ import annotations

import asyncio

from tests.harness import LocalLine, active_call, wait_until


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
    assert line._runner is not None
    port = int(line.url.rsplit(":", 1)[1])
    await line._runner.cleanup()
    washington = await line.terminal("washington", connect=False)
    await asyncio.sleep(0.6)
    assert not washington.link.connected.is_set()
    await line.start(port=port)
    await asyncio.wait_for(washington.link.connected.wait(), 15)
