"""Calls that survive: a restart of the line server in the middle of a call.

Media never went through the server: it keeps flowing while the server is
away; signaling reconnects by itself, and the hang-up afterwards reaches the
other side as ever. Real server, real terminals, real aiortc media.
"""

from __future__ import annotations

import asyncio
import sqlite3
from functools import partial

import aiohttp

from parley.core.call import CallState, EndReason
from tests.harness import LocalLine, active_call, frames, wait_for, wait_until


async def test_a_server_restart_in_the_middle_of_a_call_leaves_the_call_up(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    mine, theirs = await active_call(washington, moscow)
    before = {t.device_id: await frames(t, mine.call_id) for t in (washington, moscow)}

    await line.stop_server()
    await wait_until(lambda: not washington.link.connected.is_set()
                     and not moscow.link.connected.is_set(), 10, "both links down")
    await asyncio.sleep(3.0)  # the server away for a while: media goes on regardless
    during = {t.device_id: await frames(t, mine.call_id) for t in (washington, moscow)}
    for device, counts in during.items():
        assert counts["audio"] > before[device]["audio"] + 100, (device, counts)  # 20 ms each
        assert counts["video"] > before[device]["video"] + 30, (device, counts)
    assert washington.book.info(mine.call_id).state is CallState.ACTIVE
    assert moscow.book.info(theirs.call_id).state is CallState.ACTIVE

    await line.start(port=line.port)
    await wait_until(lambda: washington.link.connected.is_set()
                     and moscow.link.connected.is_set(), 20, "both links back")
    after = during[washington.device_id]
    await wait_for(partial(frames, washington, mine.call_id),
                   lambda f: f["audio"] > after["audio"] + 50, 10, "media still flowing")
    assert washington.book.info(mine.call_id).verified
    washington.hangup(mine.call_id)
    ended = await moscow.wait_for_call(lambda c: c.call_id == theirs.call_id
                                       and c.state is CallState.ENDED, 15)
    assert ended.end_reason is EndReason.REMOTE_HUNG_UP
    assert not washington.alarms and not moscow.alarms


async def test_readiness_says_ready_while_the_store_answers(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    async with http.get(line.url + "/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"ready": True}
    assert line.server is not None
    line.server.store.db.close()  # the database gone from under it
    try:
        async with http.get(line.url + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["why"].startswith("the store does not answer")
    finally:
        line.server.store.backend.conn = sqlite3.connect(line.server.store.path)  # clean stop
