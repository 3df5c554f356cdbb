"""The line's limits and the operator's hold on devices, with real sockets, stores and processes.

Each test stands for one way the line was found to break: a device multiplying
its rate by connecting several times, one filling the server's disk, a leaked
enrollment code taking a device over, a new device of a verified party going
unnoticed, loose file modes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from parley.core.call import CallState, EndReason
from parley.core.envelope import MAX_PAYLOAD, seal_envelope
from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.relay.limits import Limits
from parley.core.trust import Trust
from parley.lab import create_parties, enroll_terminal
from parley.server.store import ServerStore
from parley.terminal.link import ServerLink
from parley.terminal.store import TerminalStore
from tests.harness import LocalLine, connect, device_of, local_line, logged_in, wait_until

PARLEY = [sys.executable, "-m", "parley"]


async def parley(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the `parley` command in its own process, as an operator at a shell would."""
    return await asyncio.to_thread(subprocess.run, [*PARLEY, *args], capture_output=True,
                                   text=True, timeout=60)


async def test_four_connections_of_one_device_share_one_rate(tmp_path: Path,
                                                             http: aiohttp.ClientSession) -> None:
    async with local_line(tmp_path, Limits(rate_limit=40)) as line:
        dirs = await line.provision(verify=False)
        clients = [(await logged_in(line, http, dirs, "washington"))[0] for _ in range(4)]
        for client in clients:
            await client.send(*({"t": "ping", "ref": f"p{n}"} for n in range(80)))
        replies = [r for client in clients for r in await client.recv_n(80)]
        pongs = sum(r["t"] == "pong" for r in replies)
        # One burst of 2 x 40 for the device (and what refilled meanwhile), not 4 x 80.
        assert 80 <= pongs < 100, pongs
        assert sum(r.get("code") == "rate_limited" for r in replies) == 320 - pongs


async def test_a_full_mailbox_refuses_with_quota_exceeded_and_the_store_stays_in_bounds(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    quota_mib = 2.0
    async with local_line(tmp_path, Limits(mailbox_mib=quota_mib, mailbox_window_kib=600,
                                           sender_share=1.0)) as line:
        dirs = await line.provision(verify=False)
        w_id, w_keys = device_of(dirs, "washington")
        m_id, m_keys = device_of(dirs, "moscow")
        sender = ServerLink(line.url, w_id, w_keys, receive=False)
        await sender.connect_once()
        big = "x" * (MAX_PAYLOAD - 1000)  # the largest a payload may be: about 190 KiB
        stored, refused = 0, []
        for _ in range(30):  # moscow is offline all along: everything would wait for it
            env = seal_envelope(w_keys, w_id, m_keys.public(m_id), "msg.text", {"t": big}, 1)
            try:
                await sender.send_envelope(env, ephemeral=False)
                stored += 1
            except RemoteError as exc:
                refused.append(exc)
        assert 5 <= stored <= 11 and len(refused) == 30 - stored
        assert {exc.code for exc in refused} == {ErrorCode.QUOTA_EXCEEDED}
        assert "moscow/hotline's mailbox on this server is full" in refused[0].message
        assert "nothing was lost" in refused[0].hint
        assert line.server is not None
        waiting = line.server.store.db.execute(
            "SELECT COUNT(*), SUM(length(body)) FROM mailbox").fetchone()
        assert waiting[0] == stored and waiting[1] <= quota_mib * 1024 * 1024
        # The recipient logs in and is sent a window's worth, not everything at once.
        reader, _, _ = await logged_in(line, http, dirs, "moscow")
        first = []
        with contextlib.suppress(TimeoutError):
            while True:
                first.append(await asyncio.wait_for(reader.recv(), 1.0))
        assert all(f["t"] == "deliver" for f in first)
        sizes = [len(json.dumps(f)) for f in first]
        assert 1 <= len(first) < stored and sum(sizes) <= 600 * 1024, sizes
        await reader.send(*({"t": "ack", "id": f["env"]["id"]} for f in first))
        rest = []
        while len(first) + len(rest) < stored:
            frame = await reader.recv()
            rest.append(frame)
            await reader.send({"t": "ack", "id": frame["env"]["id"]})
        await wait_until(lambda: line.server is not None
                         and line.server.relay.quota.waiting() == (0, 0), what="empty")
        env = seal_envelope(w_keys, w_id, m_keys.public(m_id), "msg.text", {"t": big}, 2)
        assert await sender.send_envelope(env, ephemeral=False) == "delivered"
        await sender.close()


async def test_an_operator_revokes_and_replaces_a_device_and_every_step_is_logged(
        line: LocalLine) -> None:
    await line.provision()
    srv = ["--data", str(line.root / "server")]
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    # A leaked code cannot take moscow/hotline over: refused, logged, the code still good.
    code = (await parley("server", "enroll-code", "moscow", "--quiet", *srv)).stdout.strip()
    with pytest.raises(RemoteError) as err:
        await enroll_terminal(line.root / "imposter", "hotline", line.url, code)
    assert err.value.code is ErrorCode.DEVICE_EXISTS
    assert "parley server device replace moscow/hotline" in err.value.hint
    await enroll_terminal(line.root / "spare", "spare", line.url, code)

    # Revoked from the admin CLI (another process): the running server notices at once.
    done = await parley("server", "device", "revoke", "moscow/hotline", "--reason",
                        "laptop lost", *srv)
    assert done.returncode == 0 and "can no longer log in" in done.stdout
    await wait_until(lambda: moscow.link.last_error is not None
                     and moscow.link.last_error.code is ErrorCode.DEVICE_REVOKED, 10,
                     "moscow told it was revoked")
    assert not moscow.link.connected.is_set()
    with pytest.raises(LocalError) as refused:
        await washington.place_call("moscow/hotline")  # no longer listed
    assert refused.value.code is ErrorCode.UNKNOWN_DEVICE

    # Replaced: a code bound to the device enrolls new keys under its name.
    out = (await parley("server", "device", "replace", "moscow/hotline", *srv)).stdout
    code = next(line.split(": ")[1] for line in out.splitlines()
                if line.startswith("replacement code"))
    assert f"--code {code}" in out
    with pytest.raises(RemoteError) as err:
        await enroll_terminal(line.root / "wrong-name", "other", line.url, code)
    assert "replaces moscow/hotline" in err.value.message
    await moscow.stop()
    line.terminals.remove(moscow)
    replacement = await enroll_terminal(line.root / "moscow-new", "hotline", line.url, code)
    assert replacement.device_id == "moscow/hotline"
    new_moscow = await line.terminal("moscow-new", auto_answer=True)
    assert new_moscow.link.connected.is_set()
    # Washington had verified the old keys: the new ones are a changed key, refused.
    trust, _, _ = await washington.peers.trust("moscow/hotline", fresh=True)
    assert trust is Trust.CHANGED
    with pytest.raises(LocalError) as refused:
        await washington.place_call("moscow/hotline")
    assert refused.value.code is ErrorCode.KEY_CHANGED

    log = (await parley("server", "device", "log", *srv)).stdout
    for action in ("enrolled", "refused", "revoked", "replace", "replaced"):
        assert f" {action} " in log, (action, log)
    assert "laptop lost" in log
    listed = (await parley("server", "device", "list", *srv)).stdout
    assert "moscow/hotline" in listed and "moscow/spare" in listed


async def test_a_verified_party_gaining_a_device_raises_an_alarm_and_calls_ring_the_verified_one(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    # moscow/hotline, verified here, is offline; moscow enrolls a new device, online.
    codes = create_parties(line.root / "server", {"moscow": ("The Kremlin", "UTC")}, [])
    await enroll_terminal(line.root / "laptop", "laptop", line.url, codes["moscow"])
    laptop = await line.terminal("laptop", auto_answer=True, require_verified=False)

    def new_device() -> list[dict[str, Any]]:
        return [a for a in washington.alarms if a["code"] == ErrorCode.NEW_DEVICE]

    await wait_until(lambda: bool(new_device()), 10, "the new-device alarm")
    alarm = new_device()[0]
    assert alarm["subject"] == "moscow/laptop" and "moscow/hotline" in alarm["message"]
    assert "verify it" in alarm["hint"] and alarm["title"] == \
        "A verified party has a new device"
    # It is rung for nothing: a call to moscow goes to the verified device, offline.
    washington.book.require_verified = False
    placed = await washington.place_call("moscow")
    assert placed.peer == "moscow/hotline"
    ended = await washington.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ENDED, 15)
    assert ended.end_reason is EndReason.UNREACHABLE
    assert laptop.book.calls() == []
    # Seeing the directory again raises nothing new; it stays until acknowledged, also
    # across a restart, and then it is gone from the open list.
    await washington.peers.refresh("moscow")
    assert len(new_device()) == 1 and new_device()[0]["count"] == 1
    await washington.stop()
    line.terminals.remove(washington)
    washington = await line.terminal("washington")
    assert len(new_device()) == 1
    washington.acknowledge_alarms([alarm["id"]], "enrolled by moscow's operator")
    assert new_device() == []
    kept = washington.store.alarms(include_acknowledged=True)
    assert any(a.id == alarm["id"] and a.acked_ms and a.ack_note for a in kept)


async def test_a_server_stops_at_once_while_it_holds_connections(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with local_line(tmp_path, Limits(hold_refused=30.0)) as line:
        for _ in range(3):
            junk = await connect(line.url, http)
            await junk.send("{not json")
            assert (await junk.recv())["t"] == "error"
        assert line.server is not None and line.server.listener is not None
        await wait_until(lambda: line.server is not None and line.server.listener is not None
                         and line.server.listener.held == 3, 5, "three held")
        started = asyncio.get_running_loop().time()
        await line.stop_server()
        assert asyncio.get_running_loop().time() - started < 5.0  # not the 30 s hold


def test_data_directories_and_databases_are_private_and_loose_ones_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    old_umask = os.umask(0o022)  # an ordinary user's umask: files would be 0644
    try:
        store = ServerStore(tmp_path / "srv" / "server.db")
        store.add_principal("washington", "W", "UTC", 1)
        store.close()
        terminal = TerminalStore.init(tmp_path / "term", "desk")
        terminal.set("x", "y")
        terminal.close()
    finally:
        os.umask(old_umask)
    for directory in (tmp_path / "srv", tmp_path / "term"):
        assert mode(directory) == 0o700
        files = [p for p in directory.iterdir() if p.is_file()]
        assert files and all(mode(p) == 0o600 for p in files), [(p.name, oct(mode(p)))
                                                                 for p in files]

    # Others may write the server's data: refused, with the chmod that fixes it.
    os.chmod(tmp_path / "srv", 0o777)
    with pytest.raises(LocalError) as err:
        ServerStore(tmp_path / "srv" / "server.db")
    assert "writable by other users" in err.value.message
    assert f"chmod 700 {tmp_path / 'srv'}" in err.value.hint
    # Only readable by others: the server's files hold no secret, so it only warns.
    os.chmod(tmp_path / "srv", 0o755)
    with caplog.at_level(logging.WARNING, logger="parley.files"):
        ServerStore(tmp_path / "srv" / "server.db").close()
    assert "readable by other users" in caplog.text
    # A terminal's are secrets: readable by others is refused too.
    os.chmod(tmp_path / "term", 0o750)
    with pytest.raises(LocalError) as err:
        TerminalStore(tmp_path / "term")
    assert "readable by other users" in err.value.message and "chmod 700" in err.value.hint
    os.chmod(tmp_path / "term", 0o700)
    os.chmod(tmp_path / "term" / "terminal.db", 0o664)
    with pytest.raises(LocalError) as err:
        TerminalStore(tmp_path / "term")
    assert "terminal.db" in err.value.message and "chmod 600" in err.value.hint


async def test_a_held_connection_that_never_reads_is_gone_after_its_hold(
        tmp_path: Path) -> None:
    async with local_line(tmp_path, Limits(hold_refused=0.5)) as line:
        assert line.server is not None and line.server.listener is not None
        listener = line.server.listener
        _reader, writer = await asyncio.open_connection("127.0.0.1", line.port)
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with contextlib.suppress(ConnectionError):
            for _ in range(200):  # pipelined, and nothing of the answers ever read
                writer.write(request * 50)
                await asyncio.sleep(0)
        await wait_until(lambda: listener.held >= 1, 5, "held for sending too much")
        await wait_until(lambda: listener.held == 0 and not listener.guards, 10,
                         "let go of, though it never read")
        writer.close()


def test_the_server_raises_its_open_file_limit_for_its_connections() -> None:
    import resource

    from parley.server.listener import ensure_fds

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert ensure_fds(4096 + 2048 + 256) >= min(6400, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_files_owned_by_another_user_are_refused(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give a file to another user")
    ServerStore(tmp_path / "srv" / "server.db").close()
    os.chown(tmp_path / "srv" / "server.db", 12345, 12345)
    with pytest.raises(LocalError) as err:
        ServerStore(tmp_path / "srv" / "server.db")
    assert "belongs to another user" in err.value.message and "chown" in err.value.hint


async def test_a_recipient_that_does_not_read_is_closed_and_its_senders_go_on(
        tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.server import app as server_app

    monkeypatch.setattr(server_app, "CONGESTED_S", 1.0)
    async with local_line(tmp_path, Limits(rate_limit=100_000,
                                           byte_rate_limit=10**12)) as line:
        dirs = await line.provision(verify=False)
        w_id, w_keys = device_of(dirs, "washington")
        m_id, m_keys = device_of(dirs, "moscow")
        # moscow logs in with a socket it never reads from again.
        stuck, _, _ = await logged_in(line, http, dirs, "moscow")
        sender, _, _ = await logged_in(line, http, dirs, "washington")
        big = {"t": "send", "ephemeral": True, "env": seal_envelope(
            w_keys, w_id, m_keys.public(m_id), "call.ice",
            {"call_id": "c", "candidate": "x" * 100_000}, 1).to_json()}
        for _ in range(300):
            await sender.send(big)
        await sender.send({"t": "ping", "ref": "after"})
        replies = []
        while not replies or replies[-1].get("ref") != "after":
            replies.append(await asyncio.wait_for(sender.recv(), 20))
        assert replies[-1]["t"] == "pong"  # the sender was not held up for ever
        await wait_until(lambda: line.server is not None
                         and m_id not in line.server.relay.online, 5,
                         "the recipient that did not read closed")
        assert not stuck.ws.closed or stuck.ws.close_code is not None
