"""The line server on PostgreSQL: a verified call and messages, and a line moved there.

A real PostgreSQL (parley.lab_postgres), the real server, real terminals with real
aiortc media. `parley server migrate-store` is run as the operator runs it, on a
line that has a message waiting for a recipient who is away: the recipient, back
on the server now on PostgreSQL, gets it once, and the devices are the same.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
import pytest

from parley.core.call import CallState
from parley.core.errors import ErrorCode, LocalError
from parley.server.store import ServerStore
from tests.harness import (
    LocalLine,
    active_call,
    device_of,
    frames,
    logged_in,
    wait_for,
    wait_until,
)
from tests.integration.test_cli import run
from tests.integration.test_server_batching import envelope_to


def _texts(terminal, party: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [m["text"] for m in terminal.messages.conversation(party)
            if m["kind"] == "text" and not m["outgoing"]]


async def test_a_verified_call_and_messages_through_a_server_on_postgresql(
        tmp_path: Path, pg_url: str) -> None:
    line = LocalLine(tmp_path)
    await line.start(database=pg_url)
    try:
        assert line.server is not None and line.server.store.backend.name == "postgresql"
        await line.provision()
        washington = await line.terminal("washington")
        moscow = await line.terminal("moscow", auto_answer=True)
        caller, callee = await active_call(washington, moscow)
        assert caller.verified and callee.verified and caller.sas == callee.sas
        for t in (washington, moscow):
            await wait_for(partial(frames, t, caller.call_id),
                           lambda f: f["audio"] > 0 and f["video"] > 0, 10,
                           f"audio and video at {t.device_id}")
        for n in range(20):
            await washington.messages.send_text("moscow", f"w{n}")
            await moscow.messages.send_text("washington", f"m{n}")
        await wait_until(lambda: _texts(moscow, "washington") == [f"w{n}" for n in range(20)]
                         and _texts(washington, "moscow") == [f"m{n}" for n in range(20)],
                         20, "twenty messages each way, in order")
        washington.hangup(caller.call_id)
        await moscow.wait_for_call(
            lambda c: c.call_id == caller.call_id and c.state is CallState.ENDED, 10)
        # Everything acknowledged in the end: nothing waits in PostgreSQL's mailbox.
        with psycopg.connect(pg_url, autocommit=True) as db:
            await wait_until(lambda: db.execute("SELECT count(*) FROM mailbox").fetchone()[0]
                             == 0, 10, "every envelope acknowledged")
            assert db.execute("SELECT count(*) FROM acked").fetchone()[0] >= 40
        async with aiohttp.ClientSession() as http, http.get(f"{line.url}/readyz") as ready:
            assert ready.status == 200 and (await ready.json())["ready"] is True
    finally:
        await line.stop()


def _parley(*argv: str) -> subprocess.CompletedProcess[str]:
    return run(*argv, check=False, env={"PARLEY_HOME": "/nonexistent"}, timeout=120)


async def test_migrate_store_moves_a_line_with_waiting_mail_into_postgresql(
        tmp_path: Path, pg_url: str) -> None:
    line = LocalLine(tmp_path)
    await line.start()
    server_data = tmp_path / "server"
    try:
        await line.provision()
        washington = await line.terminal("washington")
        moscow = await line.terminal("moscow")
        await moscow.stop()  # away: what is sent now waits in the server's mailbox
        line.terminals.remove(moscow)
        for n in range(3):
            await washington.messages.send_text("moscow", f"while away {n}")
        await wait_until(lambda: all(
            m["deliveries"][0]["stored_ms"] for m in washington.messages.conversation("moscow")
            if m["outgoing"]), 10, "three messages stored at the server")
        await line.stop_server()

        refused = _parley("server", "migrate-store", "--data", str(server_data), "--to",
                          "postgresql://nobody:secret@127.0.0.1:9/none")
        assert refused.returncode != 0 and "cannot reach the database" in refused.stderr
        assert "secret" not in refused.stderr

        copied = _parley("server", "migrate-store", "--data", str(server_data), "--to", pg_url,
                         "--json")
        assert copied.returncode == 0, copied.stderr
        counts = json.loads(copied.stdout.strip().splitlines()[-1])["copied"]
        assert counts["principals"] == 2 and counts["lines"] == 1 and counts["devices"] == 2
        assert counts["mailbox"] == 3
        # A second copy into the same database is refused: it is not empty any more.
        again = _parley("server", "migrate-store", "--data", str(server_data), "--to", pg_url)
        assert again.returncode != 0 and "not empty" in again.stderr
        listed = _parley("server", "principal", "list", "--data", str(server_data),
                         "--database", pg_url)
        assert listed.returncode == 0 and "moscow" in listed.stdout, listed.stderr

        with psycopg.connect(pg_url) as db:
            copied_top = db.execute("SELECT max(seq) FROM mailbox").fetchone()[0]
        await line.start(port=line.port, database=pg_url)
        assert line.server is not None and line.server.store.backend.name == "postgresql"
        back = await line.terminal("moscow")  # the same device, the same keys
        await wait_until(lambda: _texts(back, "washington") == [
            f"while away {n}" for n in range(3)], 20, "the waiting messages, once, in order")
        await wait_until(lambda: washington.link.connected.is_set(), 20, what="washington back")
        await washington.messages.send_text("moscow", "after the move")
        await wait_until(lambda: _texts(back, "washington")[-1:] == ["after the move"], 10,
                         "a new message through PostgreSQL")
        assert len(_texts(back, "washington")) == 4
        with psycopg.connect(pg_url, autocommit=True) as db:
            await wait_until(lambda: db.execute("SELECT count(*) FROM mailbox").fetchone()[0]
                             == 0, 10, "every envelope acknowledged")
            # ... numbered after the copied ones: the identity followed them.
            sequence = db.execute("SELECT pg_get_serial_sequence('mailbox', 'seq')"
                                  ).fetchone()[0]
            assert db.execute(f"SELECT last_value FROM {sequence}").fetchone()[0] > copied_top
    finally:
        await line.stop()


async def test_nodes_serve_beside_each_other_and_a_standby_waits_until_none_does(
        tmp_path: Path, pg_url: str) -> None:
    first, second = LocalLine(tmp_path / "node1"), LocalLine(tmp_path / "node2")
    standby = LocalLine(tmp_path / "node3")
    await first.start(database=pg_url)
    try:
        await second.start(database=pg_url)  # serves beside the first
        assert first.server is not None and second.server is not None
        nodes = {first.server.store.backend.node_id, second.server.store.backend.node_id}
        assert len(nodes) == 2 and first.server.store.backend.live_nodes() == nodes
        with pytest.raises(LocalError) as refused:
            await standby.start(database=pg_url, standby=True)
        assert refused.value.code is ErrorCode.BUSY
        assert "another line server node runs on" in refused.value.message
        assert "standby" in (refused.value.hint or "")
        await first.stop_server()
        with pytest.raises(LocalError):  # one is left
            await standby.start(database=pg_url, standby=True)
        await second.stop_server()
        await standby.start(database=pg_url, standby=True)  # none is: it serves
        assert standby.server is not None and standby.server.store.backend.node
    finally:
        for line in (first, second, standby):
            await line.stop()


async def test_readyz_says_when_postgresql_stops_answering_and_recovers(
        tmp_path: Path, pg_url: str) -> None:
    line = LocalLine(tmp_path)
    await line.start(database=pg_url)
    try:
        async with aiohttp.ClientSession() as http:
            with psycopg.connect(pg_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                              " application_name = 'parley-server'")
            async with http.get(f"{line.url}/readyz") as ready:
                assert ready.status == 503
                assert "does not answer" in (await ready.json())["why"]
            async with http.get(f"{line.url}/readyz") as ready:  # connected again
                assert ready.status == 200, await ready.text()
    finally:
        await line.stop()


async def test_a_node_cut_off_from_the_database_closes_its_sessions_and_joins_again(
        tmp_path: Path, pg_url: str) -> None:
    """What a node knew of the others while it was cut off may be stale, and they have
    forgotten its sessions (its lock went with its connection): it closes them, and its
    terminals come back to it joined again, under a new node id."""
    line = LocalLine(tmp_path)
    await line.start(database=pg_url)
    try:
        await line.provision()
        washington = await line.terminal("washington")
        moscow = await line.terminal("moscow")
        assert line.server is not None
        node = line.server
        before = node.store.backend.node_id
        sockets = (washington.link._ws, moscow.link._ws)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)",
                          (node.store.db.info.backend_pid,))
        await wait_until(lambda: node.store.backend.node_id != before, 10,
                         what="the node connected again, with a new id")
        await wait_until(lambda: all(
            t.link.connected.is_set() and t.link._ws is not None and t.link._ws is not old
            for t, old in zip((washington, moscow), sockets, strict=True)), 20,
            what="both sessions closed by the node cut off, and back")
        assert node.store.backend.live_nodes() == {node.store.backend.node_id}
        await washington.messages.send_text("moscow", "after the cut")
        await wait_until(lambda: _texts(moscow, "washington") == ["after the cut"], 10,
                         what="a message through the node joined again")
    finally:
        await line.stop()


def test_another_role_cannot_read_the_nodes_key_and_the_documented_revoke_shuts_it_out(
        pg_url: str) -> None:
    """Any role that may connect can NOTIFY, which is why notifications are sealed; the
    key is the database owner's alone, and docs/deployment.md's REVOKE and GRANT let no
    other role connect at all (run here as written, on this test's database, with an
    owner that is not a superuser, as a line's is not)."""
    parts = urlsplit(pg_url)
    database = parts.path.lstrip("/")
    owner, intruder = f"owner_{database}", f"intruder_{database}"

    def as_role(role: str) -> str:
        return urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(f'CREATE ROLE "{owner}" LOGIN')
        db.execute(f'CREATE ROLE "{intruder}" LOGIN')
        db.execute(f'ALTER DATABASE "{database}" OWNER TO "{owner}"')
    try:
        store = ServerStore(url=as_role(owner))
        try:
            assert store.anyone_connects()  # (which the node warns of at start)
            store.node_key()
        finally:
            store.close()
        with psycopg.connect(as_role(intruder), autocommit=True) as other:
            other.execute("NOTIFY parley_events, 'm 1 1 a b 1'")  # allowed: so it is sealed
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                other.execute("SELECT key FROM node_key")
        doc = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
        shown = next(line for line in doc.splitlines() if "REVOKE CONNECT" in line)
        words = shlex.split(shown)
        statements = [words[i + 1] for i, word in enumerate(words) if word == "-c"]
        assert len(statements) == 2
        with psycopg.connect(pg_url, autocommit=True) as db:  # (as postgres would)
            for sql in statements:
                db.execute(sql.replace("DATABASE parley", f'DATABASE "{database}"')
                           .replace("TO parley", f'TO "{owner}"'))
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(as_role(intruder)).close()
        again = ServerStore(url=as_role(owner))  # the line's own role still serves
        try:
            assert not again.anyone_connects()
        finally:
            again.close()
    finally:
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(f'DROP ROLE "{intruder}"')


async def test_a_slow_commit_holds_its_own_frames_back_and_nothing_else(
        tmp_path: Path, pg_url: str, http: aiohttp.ClientSession) -> None:
    """The COMMIT (PostgreSQL's wait for its disk) runs off the server's event loop: while
    one takes two seconds, the server answers other requests; the sender hears "stored"
    only once it is committed, and what it sends meanwhile is committed next, together."""
    line = LocalLine(tmp_path)
    await line.start(database=pg_url)
    try:
        dirs = await line.provision(verify=False)
        client, device, keys = await logged_in(line, http, dirs, "washington")
        recipient, moscow_keys = device_of(dirs, "moscow")
        with psycopg.connect(pg_url, autocommit=True) as db:  # every COMMIT that stores
            db.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                       " PERFORM pg_sleep(2); RETURN NULL; END $$")
            db.execute("CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON mailbox DEFERRABLE"
                       " INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow()")
            first = envelope_to(keys, device, moscow_keys.public(recipient), 1)
            started = time.monotonic()
            await client.send({"t": "send", "env": first, "ref": "first"})
            await asyncio.sleep(0.3)  # its COMMIT under way
            async with http.get(f"{line.url}/healthz") as resp:
                assert resp.status == 200
            answered = time.monotonic() - started
            second = envelope_to(keys, device, moscow_keys.public(recipient), 2)
            await client.send({"t": "send", "env": second, "ref": "second"})
            sent = [f for f in [await client.recv(), await client.recv()]]
            heard = time.monotonic() - started
            committed = {r[0] for r in db.execute("SELECT id FROM mailbox")}
        assert answered < 1.5, f"the server answered only after {answered:.1f} s"
        assert [(f["t"], f["ref"], f["status"]) for f in sent] == [
            ("sent", "first", "stored"), ("sent", "second", "stored")]
        assert heard >= 2 and committed == {first["id"], second["id"]}
    finally:
        await line.stop()


async def test_a_commit_that_fails_off_the_loop_tells_nobody_stored_and_cuts_every_session(
        tmp_path: Path, pg_url: str, http: aiohttp.ClientSession) -> None:
    """The COMMIT fails on the store's thread (here a deferred check the database makes at
    COMMIT): no frame of its turn leaves, every connection is cut off, the server goes
    on, and the envelope sent again is stored once."""
    line = LocalLine(tmp_path)
    await line.start(database=pg_url)
    try:
        dirs = await line.provision(verify=False)
        client, device, keys = await logged_in(line, http, dirs, "washington")
        watcher, _, _ = await logged_in(line, http, dirs, "moscow")
        recipient, moscow_keys = device_of(dirs, "moscow")
        env = envelope_to(keys, device, moscow_keys.public(recipient), 1)
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                       " RAISE EXCEPTION 'the disk is full'; END $$")
            db.execute("CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON mailbox DEFERRABLE"
                       " INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()")
            await client.send({"t": "send", "env": env, "ref": "lost"})
            for ws in (client.ws, watcher.ws):
                heard = []
                while (got := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                    heard.append(json.loads(got.data).get("t"))
                assert got.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert "sent" not in heard and "deliver" not in heard
            assert list(db.execute("SELECT id FROM mailbox")) == []
            db.execute("DROP TRIGGER refuse ON mailbox")
        again, _, _ = await logged_in(line, http, dirs, "washington")
        await again.send({"t": "send", "env": env, "ref": "again"})
        reply = await again.recv()
        while reply["t"] != "sent":
            reply = await again.recv()
        assert (reply["ref"], reply["status"]) == ("again", "stored")
        async with http.get(f"{line.url}/readyz") as resp:
            assert resp.status == 200
    finally:
        await line.stop()
