"""Nothing lost, nothing twice: 1,000 messages while the server is killed again and again.

The server and the receiving terminal are real processes (`parley server`,
`parley terminal`), killed with SIGKILL -- no chance to flush or say goodbye --
and started again on the same data and port. The sending terminal runs here
and keeps queueing throughout, whether the server is up or not. At the end the
receiver's own database must hold every message once, in the order sent, and
the sender's a delivery receipt for each.
"""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import sqlite3
import sys
from pathlib import Path

from parley.children import Child
from parley.lab import provision_line
from tests.harness import LocalLine, wait_until

MESSAGES = 1000
SERVER_KILLS = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start(name: str, args: list[str], logs: Path, ready: str) -> Child:
    child = await Child.spawn(name, [sys.executable, "-m", "parley", *args], logs)
    await child.line(ready, 30)
    return child


def kill(child: Child) -> None:
    child.proc.send_signal(signal.SIGKILL)


def received(db: Path) -> list[tuple[str, int, str]]:
    """(msg_id, seq, text) of what the receiver shows from washington, in its order."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return list(conn.execute("SELECT msg_id, seq, body FROM messages WHERE outgoing=0"
                                 " AND kind='text' AND shown IS NOT NULL ORDER BY shown"))


async def test_every_message_arrives_once_in_order_through_server_and_receiver_crashes(
        tmp_path: Path) -> None:
    rng = random.Random(20261201)
    port = free_port()
    logs = tmp_path / "logs"
    server_args = ["server", "--data", str(tmp_path / "server"), "--port", str(port)]
    server = await start("server", server_args, logs, "ready: ")
    url = f"http://127.0.0.1:{port}"
    await provision_line(tmp_path / "server", url, tmp_path)
    receiver_args = ["terminal", "--data", str(tmp_path / "moscow"), "--ui-port", "0"]
    receiver = await start("moscow", receiver_args, logs, "ui: ")
    line = LocalLine(tmp_path)  # only for the sending terminal, in this process
    line.url = url
    washington = await line.terminal("washington")
    try:
        sent: list[str] = []

        async def send_all() -> None:
            for n in range(MESSAGES):
                sent.append((await washington.messages.send_text("moscow", f"m{n:04d}"))
                            ["msg_id"])
                await asyncio.sleep(rng.uniform(0, 0.02))

        sending = asyncio.ensure_future(send_all())
        for kill_number in range(SERVER_KILLS):
            await asyncio.sleep(rng.uniform(0.8, 2.5))
            kill(server)
            await server.proc.wait()
            if kill_number == 2:  # and once the receiver, while the server is down
                kill(receiver)
                await receiver.proc.wait()
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            server = await start("server", server_args, logs, "ready: ")
            if kill_number == 2:
                receiver = await start("moscow", receiver_args, logs, "ui: ")
        await sending
        assert len(sent) == MESSAGES

        db = tmp_path / "moscow" / "terminal.db"
        await wait_until(lambda: len(received(db)) == MESSAGES, 120,
                         "every message at the receiver")
        got = received(db)
        assert [seq for _, seq, _ in got] == list(range(1, MESSAGES + 1))
        assert [text for _, _, text in got] == [f"m{n:04d}" for n in range(MESSAGES)]
        assert [msg_id for msg_id, _, _ in got] == sent  # each once, in the order sent
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            assert conn.execute("SELECT COUNT(*) FROM messages WHERE outgoing=0").fetchone() \
                == (MESSAGES,)  # and so no notice of a message lost
            # Crashes are not attacks: nothing the receiver saw looked like a replay.
            assert conn.execute("SELECT code, message FROM alarms").fetchall() == []
            assert conn.execute("SELECT COUNT(*) FROM messages WHERE late=1").fetchone() == (0,)

        def receipts() -> int:
            return int(washington.store.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE delivered_ms IS NOT NULL").fetchone()[0])

        await wait_until(lambda: receipts() == MESSAGES, 120, "a delivery receipt for each")
        assert washington.messages.ms.outbox_size() == 0
    finally:
        await line.stop()
        for child in (receiver, server):
            await child.stop()
