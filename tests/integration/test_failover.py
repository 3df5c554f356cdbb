"""A line host that loses a machine: two server nodes on one PostgreSQL, one killed.

Both nodes serve the same database at once: washington logs in to node 1 and
moscow to node 2, each given the other node's URL to fail over to. They place a
verified call across the two nodes and exchange messages both ways; node 1 is
killed with SIGKILL in the middle of it. Washington fails over to node 2, and in
the end each side holds every message of the other once, in the order sent, with
a delivery receipt for each; a verified call then goes through node 2. Everything
is real: PostgreSQL, `parley server` processes, the terminals, aiortc.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from functools import partial
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Browser, expect

from parley.core.call import CallState
from parley.lab import provision_line
from parley.terminal.app import Terminal
from tests.browser import PersonFactory, chromium, open_ui, people
from tests.harness import LocalLine, active_call, frames, impostor, wait_for, wait_until
from tests.integration.test_message_crashes import free_port, start

MESSAGES = 150
__all__ = ["chromium", "people"]  # fixtures used below


def received(terminal: Terminal, party: str) -> list[str]:
    return [m["text"] for m in terminal.messages.conversation(party, limit=10 * MESSAGES)
            if m["kind"] == "text" and not m["outgoing"]]


def receipts(terminal: Terminal) -> int:
    return int(terminal.store.db.execute(
        "SELECT COUNT(*) FROM deliveries WHERE delivered_ms IS NOT NULL").fetchone()[0])


async def verified_call(caller_t: Terminal, callee_t: Terminal) -> None:
    """A verified call with audio at the callee, hung up and ended at both ends."""
    caller, callee = await active_call(caller_t, callee_t)
    assert caller.verified and callee.verified and caller.sas == callee.sas
    await wait_for(partial(frames, callee_t, caller.call_id), lambda f: f["audio"] > 0, 10,
                   f"audio at {callee_t.device_id}")
    caller_t.hangup(caller.call_id)
    await callee_t.wait_for_call(
        lambda c: c.call_id == caller.call_id and c.state is CallState.ENDED, 10)


async def test_a_node_killed_mid_exchange_loses_nothing_and_the_terminals_fail_over(
        tmp_path: Path, pg_url: str) -> None:
    logs = tmp_path / "logs"
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]

    def node_args(n: int) -> list[str]:
        return ["server", "--database", pg_url, "--data", str(tmp_path / f"node{n + 1}"),
                "--port", str(ports[n])]

    node1 = await start("node1", node_args(0), logs, "ready: ")
    node2 = await start("node2", node_args(1), logs, "ready: ")  # serves beside node 1
    line = LocalLine(tmp_path)
    line.url = urls[0]
    try:
        await provision_line(tmp_path / "node1", urls[0], tmp_path, database=pg_url)
        washington = await line.terminal("washington", failover_servers=(urls[1],))
        moscow = await line.terminal("moscow", server_url=urls[1],
                                     failover_servers=(urls[0],))
        assert (washington.link.origin, moscow.link.origin) == (urls[0], urls[1])

        # A verified call from node 1 to node 2: its signaling crosses between the nodes.
        moscow.config.auto_answer = True
        await verified_call(washington, moscow)

        async def send(terminal: Terminal, to: str, prefix: str) -> None:
            for n in range(MESSAGES):
                await terminal.messages.send_text(to, f"{prefix}{n:03d}")
                await asyncio.sleep(0.01)

        exchange = asyncio.gather(send(washington, "moscow", "w"),
                                  send(moscow, "washington", "m"))
        await wait_until(lambda: len(received(moscow, "washington")) >= MESSAGES // 3, 30,
                         "a third of the messages through node 1")
        node1.proc.send_signal(signal.SIGKILL)
        await node1.proc.wait()
        in_flight = MESSAGES - len(received(moscow, "washington"))
        assert in_flight > 0, "the node was to die in the middle of the exchange"
        await exchange
        await wait_until(lambda: washington.link.origin == moscow.link.origin == urls[1]
                         and washington.link.connected.is_set()
                         and moscow.link.connected.is_set(), 30, "both on node 2")
        await wait_until(lambda: len(received(moscow, "washington")) == MESSAGES
                         and len(received(washington, "moscow")) == MESSAGES, 60,
                         "every message at each side")
        assert received(moscow, "washington") == [f"w{n:03d}" for n in range(MESSAGES)]
        assert received(washington, "moscow") == [f"m{n:03d}" for n in range(MESSAGES)]
        for terminal in (washington, moscow):
            await wait_until(lambda t=terminal: receipts(t) == MESSAGES, 60,  # type: ignore[misc]
                             f"a delivery receipt for each at {terminal.device_id}")
            # (Its own last receipts may still wait for their "sent", a turn behind.)
            await wait_until(lambda t=terminal: t.messages.ms.outbox_size() == 0,  # type: ignore[misc]
                             30, f"nothing left to send at {terminal.device_id}")
            with sqlite3.connect(terminal.config.data_dir / "terminal.db") as db:
                # Each once: nothing shown twice, no gap noticed, nothing seen as a replay.
                assert db.execute("SELECT COUNT(*) FROM messages WHERE outgoing=0"
                                  " AND kind='text'").fetchone() == (MESSAGES,)
                assert db.execute("SELECT COUNT(*) FROM messages WHERE late=1"
                                  ).fetchone() == (0,)
                assert db.execute("SELECT code, message FROM alarms").fetchall() == []

        assert moscow.link.origin == urls[1]  # never moved
        # Node 2 forgot node 1's sessions the moment its lock went with its connection.
        await wait_until(lambda: "is gone: its sessions are forgotten"
                         in (logs / "node2.log").read_text(), 10, "node 2 noticing node 1 gone")

        # And a verified call through the node that is left.
        await verified_call(washington, moscow)
    finally:
        await line.stop()
        for child in (node2, node1):
            await child.stop()


async def _bad_gateway(_request: web.Request) -> web.Response:
    return web.Response(status=502, text="502 Bad Gateway")


# What a proxy answers for a node that is gone: 502 to everything.
BAD_GATEWAY = web.route("*", "/{tail:.*}", _bad_gateway)


async def test_a_terminal_moves_on_from_a_node_its_proxy_answers_for_with_502(
        line: LocalLine) -> None:
    """Behind nginx, a dead node is a 502 from the proxy, not a refused connection."""
    await line.provision()
    async with impostor(BAD_GATEWAY) as dead:
        washington = await line.terminal("washington", server_url=dead,
                                         failover_servers=(line.url,), connect=False)
        await wait_until(lambda: washington.link.connected.is_set(), 10,
                         what="washington logged in by the node that serves")
        assert washington.link.origin == line.url
        status = washington.status()  # what the web UI shows
        assert status["server"] == line.url and status["servers"] == [dead, line.url]


@pytest.mark.browser
async def test_the_web_ui_says_which_node_of_the_line_host_it_is_on(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    async with impostor(BAD_GATEWAY) as dead:
        washington = await people("washington", server_url=dead,
                                  failover_servers=(line.url,))
        page = await open_ui(chromium, washington)
        await expect(page.get_by_test_id("link-state")).to_have_text(
            f"line server: connected to {line.url} (node 2 of 2)")
