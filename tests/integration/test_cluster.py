"""Two line-server nodes serving one PostgreSQL at once (server.cluster).

Real PostgreSQL (parley.lab_postgres), two real servers in this process, real
WebSocket clients logged in as the provisioned devices. What a device does on
one node holds on the other: an envelope stored on node 1 reaches its
recipient on node 2 at once (the doorbell) and its acknowledgement there
shrinks node 1's quota; presence is the device's on every node; the newest
session replaces the oldest across nodes; the mailbox quota and the rate are
one across nodes; call signaling crosses to the other node, and is refused
when the recipient is on none; one node of the two judges the lines; an event
that does not parse is refused and the node carries on.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from parley.clock import now_ms
from parley.core.relay.limits import Limits
from parley.server.store import _MAILBOX_NS, EVENTS_CHANNEL, mailbox_lock
from tests.harness import LocalLine, WireClient, device_of, logged_in, wait_for, wait_until
from tests.integration.test_server_batching import envelope_to


@pytest.fixture
async def nodes(tmp_path: Path, pg_url: str, request: pytest.FixtureRequest
                ) -> AsyncIterator[tuple[LocalLine, LocalLine, dict[str, Path]]]:
    limits = getattr(request, "param", None) or Limits()
    first, second = LocalLine(tmp_path), LocalLine(tmp_path / "node2")
    await first.start(database=pg_url, limits=limits)
    await second.start(database=pg_url, limits=limits)
    try:
        dirs = await first.provision(verify=False)
        yield first, second, dirs
    finally:
        await first.stop()
        await second.stop()


async def frames_until(client: WireClient, kind: str) -> list[dict]:  # type: ignore[type-arg]
    """Frames read up to and with the first of `kind`."""
    seen = [await client.recv()]
    while seen[-1]["t"] != kind:
        seen.append(await client.recv())
    return seen


async def answers(client: WireClient, n: int) -> list[dict]:  # type: ignore[type-arg]
    """The next `n` answers to what was sent (past rosters, presence and deliveries)."""
    got: list[dict] = []  # type: ignore[type-arg]
    while len(got) < n:
        frame = await client.recv()
        if frame["t"] in ("sent", "error", "pong"):
            got.append(frame)
    return got


async def knows_elsewhere(node: LocalLine, device: str) -> None:
    """Wait until `node` has heard that `device` holds a receiving session on another."""
    assert node.server is not None
    relay = node.server.relay
    await wait_until(lambda: device in relay.elsewhere, 10,
                     what=f"{node.url} hearing of {device} on the other node")


async def test_an_envelope_stored_on_one_node_reaches_its_recipient_on_the_other(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    assert node1.server is not None and node2.server is not None
    washington, sender, keys = await logged_in(node1, http, dirs, "washington")
    moscow, recipient, moscow_keys = await logged_in(node2, http, dirs, "moscow")
    # Presence is the device's on every node: washington, on node 1, hears moscow log in.
    presence = (await frames_until(washington, "presence"))[-1]
    assert presence == {"t": "presence", "device": recipient, "online": True}
    await washington.send({"t": "directory", "party": "moscow", "ref": "d"})
    assert (await frames_until(washington, "directory"))[-1]["online"] == [recipient]

    count = 20
    await washington.send(*[{"t": "send", "ref": f"r{n}",
                             "env": envelope_to(keys, sender, moscow_keys.public(recipient), n)}
                            for n in range(count)])
    sent = [f for f in [await washington.recv() for _ in range(count)] if f["t"] == "sent"]
    assert len(sent) == count and {f["status"] for f in sent} == {"stored"}
    delivered = [await moscow.recv() for _ in range(count)]
    assert [d["env"]["id"] for d in delivered] == [f["id"] for f in sent]  # in order, once
    await moscow.send(*[{"t": "ack", "id": d["env"]["id"]} for d in delivered])
    # Acknowledged on node 2: the quota node 1 keeps for both devices is empty again.
    await wait_until(lambda: node1.server.relay.quota.waiting() == (0, 0)  # type: ignore[union-attr]
                     and node2.server.relay.quota.waiting() == (0, 0), 10,  # type: ignore[union-attr]
                     what="the quotas of both nodes emptied by the acks")
    await moscow.ws.close()
    assert (await frames_until(washington, "presence"))[-1] == {
        "t": "presence", "device": recipient, "online": False}


async def test_a_recipient_with_sessions_on_both_nodes_acknowledges_once_for_both(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    washington, sender, keys = await logged_in(node1, http, dirs, "washington")
    here, recipient, moscow_keys = await logged_in(node1, http, dirs, "moscow")
    there, _, _ = await logged_in(node2, http, dirs, "moscow")
    await knows_elsewhere(node1, recipient)
    env = envelope_to(keys, sender, moscow_keys.public(recipient), 1)
    await washington.send({"t": "send", "env": env})
    assert (await frames_until(here, "deliver"))[-1]["env"]["id"] == env["id"]
    assert (await frames_until(there, "deliver"))[-1]["env"]["id"] == env["id"]
    await here.send({"t": "ack", "id": env["id"]})
    # Node 2's session no longer waits for it: its window has room for every other.
    assert node2.server is not None
    await wait_until(lambda: not any(
        s.inflight for s in node2.server.relay.online.get(recipient, ())), 10,  # type: ignore[union-attr]
        what="node 2's session of moscow no longer waiting for the acknowledged envelope")


@pytest.mark.parametrize("nodes", [Limits(max_sessions_per_device=1)], indirect=True)
async def test_a_newer_session_on_another_node_replaces_the_oldest(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    old, _, _ = await logged_in(node1, http, dirs, "washington")
    new, _, _ = await logged_in(node2, http, dirs, "washington")
    replaced = await frames_until(old, "error")
    assert replaced[-1]["code"] == "too_many_connections"
    closing = await old.ws.receive()
    assert closing.type == aiohttp.WSMsgType.CLOSE
    await new.send({"t": "ping", "ref": "still"})
    assert (await frames_until(new, "pong"))[-1]["ref"] == "still"


@pytest.mark.parametrize("nodes", [Limits(mailbox_envelopes=6, sender_share=1.0)],
                         indirect=True)
async def test_a_mailbox_quota_holds_across_nodes(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    assert node2.server is not None
    on1, sender, keys = await logged_in(node1, http, dirs, "washington")
    on2, _, _ = await logged_in(node2, http, dirs, "washington")
    recipient, moscow_keys = device_of(dirs, "moscow")  # away: everything waits for it
    public = moscow_keys.public(recipient)
    await on1.send(*[{"t": "send", "env": envelope_to(keys, sender, public, n)}
                     for n in range(4)])
    assert [a.get("status") for a in await answers(on1, 4)] == ["stored"] * 4
    await wait_until(lambda: node2.server.relay.quota.waiting()[0] == 4, 10,  # type: ignore[union-attr]
                     what="node 2 counting what node 1 stored")
    await on2.send(*[{"t": "send", "env": envelope_to(keys, sender, public, n)}
                     for n in range(4, 8)])
    got = await answers(on2, 4)
    assert [a["t"] for a in got] == ["sent", "sent", "error", "error"]
    assert {a["code"] for a in got[2:]} == {"quota_exceeded"}


@pytest.mark.parametrize("nodes", [Limits(rate_limit=2)], indirect=True)
async def test_a_device_logged_in_to_both_nodes_spends_one_rate(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    on1, device, _ = await logged_in(node1, http, dirs, "washington")
    on2, _, _ = await logged_in(node2, http, dirs, "washington")
    assert node1.server is not None
    await wait_until(lambda: device in node1.server.relay.shared, 10,  # type: ignore[union-attr]
                     what="node 1 knows washington is on node 2 too")
    await on1.send(*[{"t": "ping", "ref": f"a{n}"} for n in range(4)])  # the burst, on node 1
    assert [a["ref"] for a in await answers(on1, 4)] == [f"a{n}" for n in range(4)]
    await asyncio.sleep(0.6)  # told to node 2 within a quarter of a second
    await on2.send(*[{"t": "ping", "ref": f"b{n}"} for n in range(4)])
    got = await answers(on2, 4)
    limited = [a for a in got if a["t"] == "error" and a["code"] == "rate_limited"]
    # Alone, node 2 would have answered all four: it took what node 1 spent.
    assert len(limited) >= 2, got


async def test_call_signaling_crosses_to_the_other_node_and_is_refused_when_none_has_it(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, dirs = nodes
    washington, sender, keys = await logged_in(node1, http, dirs, "washington")
    moscow, recipient, moscow_keys = await logged_in(node2, http, dirs, "moscow")
    await knows_elsewhere(node1, recipient)
    env = envelope_to(keys, sender, moscow_keys.public(recipient), 1)
    await washington.send({"t": "send", "env": env, "ephemeral": True, "ref": "e"})
    assert (await frames_until(washington, "sent"))[-1]["status"] == "delivered"
    assert (await frames_until(moscow, "deliver"))[-1]["env"] == env
    await moscow.ws.close()
    await wait_until(lambda: recipient not in node1.server.relay.elsewhere, 10,  # type: ignore[union-attr]
                     what="node 1 hears moscow logged out of node 2")
    again = envelope_to(keys, sender, moscow_keys.public(recipient), 2)
    await washington.send({"t": "send", "env": again, "ephemeral": True, "ref": "x"})
    refused = (await frames_until(washington, "error"))[-1]
    assert refused["code"] == "recipient_offline" and refused["ref"] == "x"


async def test_one_node_judges_the_lines_and_the_other_takes_over_when_it_stops(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]],
        http: aiohttp.ClientSession) -> None:
    node1, node2, _ = nodes
    servers = [node1.server, node2.server]
    assert servers[0] is not None and servers[1] is not None
    assert [s.relay.housekeeping for s in servers] == [True, False]  # node 1 came first
    # What the operator's pages say of it (the nodes serving, as of the last second).
    for node, leader in ((node1, 1), (node2, 0)):
        async def metrics(url: str = node.url) -> str:
            async with http.get(f"{url}/metrics") as resp:
                return await resp.text()
        shown = await wait_for(metrics, lambda text: "parley_nodes_serving 2.0" in text, 5,
                               "the metrics counting both nodes")
        assert f"parley_node_leader {leader}.0" in shown
        async with http.get(f"{node.url}/") as resp:
            page = await resp.text()
        assert "of 2 serving postgresql://" in page
        assert ("judges the lines" in page) == bool(leader)
    await node1.stop_server()
    await wait_until(lambda: servers[1].relay.housekeeping, 10,  # type: ignore[union-attr]
                     what="node 2 taking the housekeeping over")


async def test_an_event_that_does_not_parse_is_refused_and_the_node_carries_on(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]], pg_url: str,
        http: aiohttp.ClientSession) -> None:
    node1, _, dirs = nodes
    assert node1.server is not None and node1.server.cluster is not None
    cluster = node1.server.cluster
    with psycopg.connect(pg_url, autocommit=True) as db:
        for junk in ["m 1 2 3", "z 1", "m x 1 a b 1", "s 1 1 sid dev 7",
                     "a 1 r s 1 !!", "m 1 1 " + "a" * 2000 + " b 1", ""]:
            db.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, junk))
    await wait_until(lambda: cluster.refused >= 7, 10, what="each junk event refused")
    client, _, _ = await logged_in(node1, http, dirs, "washington")
    await client.send({"t": "ping", "ref": "alive"})
    assert (await frames_until(client, "pong"))[-1]["ref"] == "alive"


async def test_a_notification_not_sealed_by_a_node_or_replayed_is_refused(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]], pg_url: str,
        http: aiohttp.ClientSession) -> None:
    """Any role that may connect to the database may LISTEN and NOTIFY: one that forges
    an event (a session, to hold a device's presence up) or sends a node's own sealed
    notification again (a login already over) changes nothing."""
    node1, node2, dirs = nodes
    assert node1.server is not None and node1.server.cluster is not None
    assert node2.server is not None and node2.server.cluster is not None
    cluster, relay = node1.server.cluster, node1.server.relay
    heard: list[str] = []
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as spy:
        await spy.execute(f"LISTEN {EVENTS_CHANNEL}")

        async def listen() -> None:
            async for note in spy.notifies():
                heard.append(note.payload)
        listening = asyncio.ensure_future(listen())
        client, device, _ = await logged_in(node2, http, dirs, "washington")
        await knows_elsewhere(node1, device)
        await client.ws.close()
        await wait_until(lambda: device not in relay.elsewhere, 10,
                         what="node 1 hearing washington left node 2")
        listening.cancel()
    captured = [p for p in heard if f" {device} 1" in p]  # its login, sealed by node 2
    assert captured and all(p.startswith("#1 ") for p in captured)
    refused = cluster.refused
    node = node2.server.cluster.node
    forged = [f"s {node} 99999 forgedsid {device} 1",  # unsealed
              f"#1 {node} {now_ms()} 999999 AAAAAAAAAAAAAAAAAAAAAA\ns {node} 99999 forgedsid"
              f" {device} 1"]  # a seal made up
    with psycopg.connect(pg_url, autocommit=True) as db:
        for payload in captured + forged:
            db.execute("SELECT pg_notify(%s, %s)", (EVENTS_CHANNEL, payload))
    await wait_until(lambda: cluster.refused == refused + len(captured) + len(forged), 10,
                     what="each forged or replayed notification refused")
    # What the genuine nodes say is still heard, after them (in order).
    moscow, other, _ = await logged_in(node2, http, dirs, "moscow")
    await knows_elsewhere(node1, other)
    assert device not in relay.elsewhere and device not in cluster.view
    await moscow.ws.close()


async def test_a_node_whose_commit_failed_joins_again_under_a_new_id_and_loses_nothing(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]], pg_url: str,
        http: aiohttp.ClientSession) -> None:
    """What node 1 told the others in a group that failed (logins, logouts) never
    happened: it closes its sessions and joins again as a node they never saw, and they
    forget it as one that is gone. The sender's envelope, refused with the group, is
    stored once when it is sent again."""
    node1, node2, dirs = nodes
    assert node1.server is not None and node1.server.cluster is not None
    assert node2.server is not None and node2.server.cluster is not None
    first, second = node1.server.cluster, node2.server.cluster
    washington, sender, keys = await logged_in(node1, http, dirs, "washington")
    moscow, recipient, moscow_keys = await logged_in(node2, http, dirs, "moscow")
    await knows_elsewhere(node1, recipient)
    await knows_elsewhere(node2, sender)
    old = first.node
    env = envelope_to(keys, sender, moscow_keys.public(recipient), 1)
    with psycopg.connect(pg_url) as db:  # another node, stuck holding moscow's mailbox
        db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_MAILBOX_NS, mailbox_lock(recipient)))
        await washington.send({"t": "send", "env": env, "ref": "e"})
        before_close = []
        while (got := await washington.ws.receive(timeout=20)).type == aiohttp.WSMsgType.TEXT:
            before_close.append(json.loads(got.data)["t"])  # (cut off after the lock timeout)
        assert got.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert "sent" not in before_close  # never told "stored" of what was not
        db.rollback()
    await wait_until(lambda: first.node != old and not first.broken, 10,
                     what="node 1 joining again under a new id")
    await wait_until(lambda: old not in second.live and first.node in second.live, 10,
                     what="node 2 seeing node 1's old id gone and its new one")
    await wait_until(lambda: sender not in node2.server.relay.elsewhere, 10,  # type: ignore[union-attr]
                     what="node 2 forgetting washington's session on node 1")
    again, _, _ = await logged_in(node1, http, dirs, "washington")
    await again.send({"t": "send", "env": env, "ref": "e"})
    # ("stored": node 1 does not deliver it itself; node 2, where moscow is, does.)
    assert (await frames_until(again, "sent"))[-1]["status"] == "stored"
    assert (await frames_until(moscow, "deliver"))[-1]["env"]["id"] == env["id"]
    await moscow.send({"t": "ping", "ref": "p"})
    assert "deliver" not in [f["t"] for f in await frames_until(moscow, "pong")]  # once


async def test_what_waits_is_counted_again_from_the_mailbox(
        nodes: tuple[LocalLine, LocalLine, dict[str, Path]], pg_url: str,
        http: aiohttp.ClientSession) -> None:
    """The quotas follow the events; a node that missed some (cut off) counts again from
    the mailbox, once a minute: what another hand removed stops counting."""
    node1, node2, dirs = nodes
    assert node2.server is not None and node2.server.cluster is not None
    washington, sender, keys = await logged_in(node1, http, dirs, "washington")
    recipient, moscow_keys = device_of(dirs, "moscow")
    await washington.send(*[{"t": "send", "env": envelope_to(
        keys, sender, moscow_keys.public(recipient), n)} for n in range(3)])
    assert [a.get("status") for a in await answers(washington, 3)] == ["stored"] * 3
    relay = node2.server.relay
    await wait_until(lambda: relay.quota.waiting()[0] == 3, 10, what="node 2 counting 3")
    with psycopg.connect(pg_url, autocommit=True) as db:  # no event tells of this
        db.execute("DELETE FROM mailbox WHERE recipient = %s", (recipient,))
    node2.server.cluster._next_recount_ms = 0  # (the minute is up)
    await wait_until(lambda: relay.quota.waiting() == (0, 0), 10,
                     what="node 2 counting the mailbox again")
