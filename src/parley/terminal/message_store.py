"""A terminal's messages on disk: what was sent and received, what waits to be sent.

The tables live in the terminal's own database (`terminal.db`, WAL, 0600):

    messages     one row per message, sent or received (text, or a file's header),
                 with its state and its place in the conversation (`shown`)
    deliveries   per outgoing message and recipient device: stored, delivered, read
    outbox       envelopes still to be sent to the server, retried with backoff
                 until the server says it stored them
    streams      per (conversation, sender device): the next sequence number to
                 show, and what came early (`core.messages.Stream`)
    send_seq     our own next sequence number per conversation
    first_sent   where our numbering began for each recipient device
    chunks_in    which chunks of an incoming file have arrived (and from whom)
    receipts_due receipts owed, written with what they acknowledge and sent in
                 batches (one receipt names many messages)
    messages_fts the full-text index of the texts and file names (SQLite FTS5,
                 on this terminal only: nothing of it leaves it), brought up to
                 date in batches (`index_pending`: each second, and before every
                 search) -- a message is never changed once stored, and
                 indexing each as it came was most of a busy terminal's work

File contents are kept beside the database, in ``files/`` (0700): an outgoing
file's copy (so that it can be sent again after a restart), an incoming one
as its chunks arrive, at their offsets.

Every change that must go with another (a message shown and its stream moved
on; a message queued and its envelopes) is made in one transaction (`batch`),
committed before anything is acknowledged to the server or reported as done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.core.messages import Stream
from parley.files import private_dir
from parley.terminal.store import transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    msg_id TEXT PRIMARY KEY, conv TEXT NOT NULL, party TEXT NOT NULL,
    outgoing INTEGER NOT NULL, sender TEXT NOT NULL, seq INTEGER NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL DEFAULT '',
    file_name TEXT, file_type TEXT, file_size INTEGER, file_sha256 TEXT, chunks INTEGER,
    chunks_done INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL, shown INTEGER, time_ms INTEGER NOT NULL, received_ms INTEGER,
    read_ms INTEGER, error TEXT, late INTEGER NOT NULL DEFAULT 0,
    UNIQUE (conv, sender, seq)
);
CREATE INDEX IF NOT EXISTS messages_party ON messages (party, shown);
CREATE TABLE IF NOT EXISTS deliveries (
    msg_id TEXT NOT NULL, device TEXT NOT NULL, stored_ms INTEGER, delivered_ms INTEGER,
    read_ms INTEGER, own INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (msg_id, device)
);
CREATE TABLE IF NOT EXISTS outbox (
    envelope_id TEXT PRIMARY KEY, recipient TEXT NOT NULL, type TEXT NOT NULL,
    msg_id TEXT, chunk INTEGER, payload TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_try_ms INTEGER NOT NULL, last_error TEXT, created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_try_ms);
CREATE INDEX IF NOT EXISTS outbox_message ON outbox (msg_id);
CREATE TABLE IF NOT EXISTS streams (
    conv TEXT NOT NULL, sender TEXT NOT NULL, next_seq INTEGER NOT NULL, held TEXT NOT NULL,
    gap_since_ms INTEGER, asked_ms INTEGER, first_asked_ms INTEGER,
    lost TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (conv, sender)
);
CREATE TABLE IF NOT EXISTS send_seq (conv TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS first_sent (
    conv TEXT NOT NULL, device TEXT NOT NULL, first_seq INTEGER NOT NULL,
    PRIMARY KEY (conv, device)
);
CREATE TABLE IF NOT EXISTS chunks_in (
    msg_id TEXT NOT NULL, idx INTEGER NOT NULL, sender TEXT NOT NULL, PRIMARY KEY (msg_id, idx)
);
CREATE TABLE IF NOT EXISTS receipts_due (
    device TEXT NOT NULL, conv TEXT NOT NULL, kind TEXT NOT NULL, msg_id TEXT NOT NULL,
    PRIMARY KEY (device, conv, kind, msg_id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    body, file_name, content='messages', content_rowid='rowid');
"""

_COLUMNS = ("msg_id, conv, party, outgoing, sender, seq, kind, body, file_name, file_type,"
            " file_size, file_sha256, chunks, chunks_done, state, shown, time_ms,"
            " received_ms, read_ms, error, late")


@dataclass
class Message:
    msg_id: str
    conv: str
    party: str  # the other party of the conversation
    outgoing: bool
    sender: str  # the device that wrote it
    seq: int
    kind: str  # text | file | lost
    body: str
    file_name: str | None
    file_type: str | None
    file_size: int | None
    file_sha256: str | None
    chunks: int | None
    chunks_done: int
    state: str  # out: queued, sent, failed; in: held, shown, receiving, complete, corrupt
    shown: int | None
    time_ms: int
    received_ms: int | None
    read_ms: int | None
    error: str | None
    late: bool = False  # declared lost, then it came after all


@dataclass(frozen=True)
class OutboxEntry:
    envelope_id: str
    recipient: str
    type: str
    msg_id: str | None
    chunk: int | None
    payload: dict[str, Any] | None
    attempts: int
    next_try_ms: int


class MessageStore:
    def __init__(self, db: sqlite3.Connection, data_dir: Path) -> None:
        self.db = db
        self.files = private_dir(data_dir / "files")
        db.executescript(SCHEMA)
        for trigger in ("insert", "delete", "update"):  # indexed in batches now
            db.execute(f"DROP TRIGGER IF EXISTS messages_fts_{trigger}")
        for table, column, kind in (("messages", "late", "INTEGER NOT NULL DEFAULT 0"),
                                    ("streams", "first_asked_ms", "INTEGER"),
                                    ("streams", "lost", "TEXT NOT NULL DEFAULT '[]'"),
                                    ("deliveries", "own", "INTEGER NOT NULL DEFAULT 0")):
            if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """One transaction: everything in it is committed together, or nothing is."""
        return transaction(self.db)

    def _next(self, name: str) -> int:
        self.db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET"
                        " value=value+1", (name,))
        return int(self.db.execute("SELECT value FROM counters WHERE name=?",
                                   (name,)).fetchone()[0])

    # -- messages ---------------------------------------------------------------------

    def next_seq(self, conv: str) -> int:
        self.db.execute("INSERT INTO send_seq VALUES (?, 1) ON CONFLICT(conv) DO UPDATE SET"
                        " next_seq=next_seq+1", (conv,))
        return int(self.db.execute("SELECT next_seq FROM send_seq WHERE conv=?",
                                   (conv,)).fetchone()[0])

    def first_sent(self, conv: str, device: str, seq: int) -> int:
        """Where our numbering began for `device` (recorded with its first message)."""
        self.db.execute("INSERT OR IGNORE INTO first_sent VALUES (?,?,?)", (conv, device, seq))
        return int(self.db.execute("SELECT first_seq FROM first_sent WHERE conv=? AND device=?",
                                   (conv, device)).fetchone()[0])

    def add(self, message: Message, *, show: bool) -> Message:
        if show:
            message.shown = self._next("shown")
        self.db.execute(f"INSERT INTO messages ({_COLUMNS}) VALUES"
                        f" ({','.join('?' * 21)})", _row(message))
        return message

    def show(self, msg_id: str) -> None:
        # A held text is now shown; a held file shows as receiving (or stays complete, if
        # all of it came while it waited for its turn).
        self.db.execute("UPDATE messages SET shown=?, state=CASE WHEN state!='held' THEN state"
                        " WHEN kind='file' THEN 'receiving' ELSE 'shown' END"
                        " WHERE msg_id=? AND shown IS NULL", (self._next("shown"), msg_id))

    def get(self, msg_id: str) -> Message | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM messages WHERE msg_id=?",
                              (msg_id,)).fetchone()
        return _message(row) if row else None

    def by_seq(self, conv: str, sender: str, seq: int) -> Message | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM messages WHERE conv=? AND sender=? AND"
                              " seq=?", (conv, sender, seq)).fetchone()
        return _message(row) if row else None

    def set_state(self, msg_id: str, state: str, error: str | None = None) -> None:
        self.db.execute("UPDATE messages SET state=?, error=coalesce(?, error) WHERE msg_id=?",
                        (state, error, msg_id))

    def chunk_done(self, msg_id: str) -> int:
        self.db.execute("UPDATE messages SET chunks_done=chunks_done+1 WHERE msg_id=?",
                        (msg_id,))
        return int(self.db.execute("SELECT chunks_done FROM messages WHERE msg_id=?",
                                   (msg_id,)).fetchone()[0])

    def conversation(self, party: str | None, limit: int = 200,
                     before: int | None = None) -> list[Message]:
        """The latest `limit` messages shown (of one party's conversation), oldest first."""
        query = f"SELECT {_COLUMNS} FROM messages WHERE shown IS NOT NULL"
        args: list[Any] = []
        if party is not None:
            query += " AND party=?"
            args.append(party)
        if before is not None:
            query += " AND shown<?"
            args.append(before)
        rows = self.db.execute(query + " ORDER BY shown DESC LIMIT ?", (*args, limit))
        return [_message(r) for r in rows][::-1]

    def unread(self) -> dict[str, int]:
        rows = self.db.execute("SELECT party, COUNT(*) FROM messages WHERE outgoing=0 AND"
                               " shown IS NOT NULL AND read_ms IS NULL AND (kind='text' OR"
                               " (kind='file' AND state='complete')) GROUP BY party")
        return {r[0]: int(r[1]) for r in rows}

    _READABLE = ("party=? AND outgoing=0 AND shown IS NOT NULL AND shown<=? AND read_ms IS"
                 " NULL AND (kind='text' OR (kind='file' AND state='complete'))")

    def mark_read(self, party: str, upto: int, now_ms: int) -> list[Message]:
        """What the person saw of `party`'s conversation (shown up to `upto`), now read.

        Only what can be read: a text, or a file that arrived whole -- never one still
        coming or damaged, so a read receipt never claims more than was there.
        """
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM messages WHERE {self._READABLE}",
                               (party, upto)).fetchall()
        self.db.execute(f"UPDATE messages SET read_ms=? WHERE {self._READABLE}",
                        (now_ms, party, upto))
        return [_message(r) for r in rows]

    def last_shown(self) -> int:
        row = self.db.execute("SELECT MAX(shown) FROM messages").fetchone()
        return int(row[0] or 0)

    def index_pending(self) -> int:
        """Add what was stored since the last time to the full-text index; how many."""
        row = self.db.execute("SELECT value FROM counters WHERE name='fts_rowid'").fetchone()
        done = int(row[0]) if row else 0
        last = self.db.execute("SELECT MAX(rowid) FROM messages").fetchone()[0]
        if last is None or last <= done:
            return 0
        with self.batch():
            self.db.execute("INSERT INTO messages_fts (rowid, body, file_name) SELECT rowid,"
                            " body, coalesce(file_name, '') FROM messages WHERE rowid>? AND"
                            " rowid<=?", (done, last))
            self.db.execute("INSERT INTO counters VALUES ('fts_rowid', ?) ON CONFLICT(name) DO"
                            " UPDATE SET value=excluded.value", (last,))
        return int(last - done)

    def search(self, query: str, limit: int = 50) -> list[Message]:
        """Messages whose text or file name matches (FTS5: words, "phrases", prefix*)."""
        self.index_pending()
        rows = self.db.execute(
            f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))} FROM"
            " messages_fts f JOIN messages m ON m.rowid = f.rowid WHERE messages_fts MATCH ?"
            " AND m.shown IS NOT NULL ORDER BY rank LIMIT ?", (query, limit))
        return [_message(r) for r in rows]

    # -- deliveries of what we sent ---------------------------------------------------------

    def add_delivery(self, msg_id: str, device: str, *, own: bool = False) -> None:
        """`device` is sent `msg_id`; `own`: one of our own party's other devices, sent a
        copy -- it may ask for it again, but its receipts are not the recipient's."""
        self.db.execute("INSERT OR IGNORE INTO deliveries (msg_id, device, own) VALUES"
                        " (?,?,?)", (msg_id, device, int(own)))

    def delivered(self, msg_id: str, device: str, column: str, now_ms: int) -> bool:
        """Record a receipt; False if it named no message we sent to that device."""
        assert column in ("stored_ms", "delivered_ms", "read_ms")
        cur = self.db.execute(f"UPDATE deliveries SET {column}=coalesce({column}, ?) WHERE"
                              " msg_id=? AND device=? AND own=0", (now_ms, msg_id, device))
        return cur.rowcount == 1

    def deliveries(self, msg_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT device, stored_ms, delivered_ms, read_ms FROM deliveries"
                               " WHERE msg_id=? AND own=0 ORDER BY device", (msg_id,))
        return [{"device": r[0], "stored_ms": r[1], "delivered_ms": r[2], "read_ms": r[3]}
                for r in rows]

    def recipients(self, msg_id: str) -> dict[str, bool]:
        """Every device `msg_id` was sent to (our own others among them): confirmed
        delivered?"""
        return {r[0]: r[1] is not None for r in self.db.execute(
            "SELECT device, delivered_ms FROM deliveries WHERE msg_id=?", (msg_id,))}

    def undelivered_counts(self) -> tuple[int, int]:
        """(outgoing messages, those every recipient device has confirmed delivered)."""
        row = self.db.execute(
            "SELECT COUNT(*), SUM(done) FROM (SELECT m.msg_id, MIN(d.delivered_ms IS NOT NULL)"
            " AS done FROM messages m JOIN deliveries d ON d.msg_id = m.msg_id WHERE"
            " m.outgoing=1 AND d.own=0 GROUP BY m.msg_id)").fetchone()
        return int(row[0] or 0), int(row[1] or 0)

    # -- the outbox ---------------------------------------------------------------------------

    def enqueue(self, envelope_id: str, recipient: str, type_: str, now_ms: int, *,
                msg_id: str | None = None, chunk: int | None = None,
                payload: dict[str, Any] | None = None) -> None:
        self.db.execute("INSERT OR IGNORE INTO outbox (envelope_id, recipient, type, msg_id,"
                        " chunk, payload, next_try_ms, created_ms) VALUES (?,?,?,?,?,?,?,?)",
                        (envelope_id, recipient, type_, msg_id, chunk,
                         json.dumps(payload) if payload is not None else None, now_ms, now_ms))

    def due(self, now_ms: int, limit: int, skip: set[str]) -> list[OutboxEntry]:
        # In the order queued (rowid), reading no further than the first `limit` due; a
        # file's parts only once the server has its header for that recipient, so that
        # they never arrive before it.
        rows = self.db.execute(
            "SELECT envelope_id, recipient, type, msg_id, chunk, payload, attempts, next_try_ms"
            " FROM outbox o WHERE next_try_ms<=? AND NOT (type='msg.chunk' AND EXISTS (SELECT 1"
            " FROM outbox h WHERE h.msg_id=o.msg_id AND h.recipient=o.recipient AND"
            " h.type='msg.file')) ORDER BY rowid LIMIT ?", (now_ms, limit + len(skip)))
        out = [OutboxEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None,
                           r[6], r[7]) for r in rows if r[0] not in skip]
        return out[:limit]

    def next_due_ms(self) -> int | None:
        row = self.db.execute("SELECT MIN(next_try_ms) FROM outbox").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def outbox_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def sent(self, envelope_id: str) -> bool:
        return self.db.execute("DELETE FROM outbox WHERE envelope_id=?",
                               (envelope_id,)).rowcount == 1

    def mark_sent_if_done(self, msg_id: str) -> bool:
        """'sent' once nothing of a queued message waits in the outbox; True if it was so."""
        return self.db.execute(
            "UPDATE messages SET state='sent' WHERE msg_id=? AND state='queued' AND NOT EXISTS"
            " (SELECT 1 FROM outbox WHERE msg_id=?)", (msg_id, msg_id)).rowcount == 1

    def retry_later(self, envelope_id: str, next_try_ms: int, error: str) -> None:
        self.db.execute("UPDATE outbox SET attempts=attempts+1, next_try_ms=?, last_error=?"
                        " WHERE envelope_id=?", (next_try_ms, error, envelope_id))

    def retry_now(self, now_ms: int) -> None:
        """The server is back: everything waiting to be sent goes again now."""
        self.db.execute("UPDATE outbox SET next_try_ms=? WHERE next_try_ms>?", (now_ms, now_ms))

    def pending_to(self, msg_id: str, device: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE msg_id=? AND recipient=?",
                                   (msg_id, device)).fetchone()[0])

    def pending_for(self, msg_id: str) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE msg_id=?",
                                   (msg_id,)).fetchone()[0])

    # -- streams ----------------------------------------------------------------------------

    def stream(self, conv: str, sender: str) -> Stream:
        row = self.db.execute("SELECT next_seq, held, gap_since_ms, asked_ms, first_asked_ms,"
                              " lost FROM streams WHERE conv=? AND sender=?",
                              (conv, sender)).fetchone()
        if row is None:
            return Stream()
        return Stream(row[0], set(json.loads(row[1])), row[2], row[3], row[4],
                      set(json.loads(row[5])))

    def save_stream(self, conv: str, sender: str, stream: Stream) -> None:
        self.db.execute("INSERT INTO streams (conv, sender, next_seq, held, gap_since_ms,"
                        " asked_ms, first_asked_ms, lost) VALUES (?,?,?,?,?,?,?,?) ON"
                        " CONFLICT(conv, sender) DO UPDATE SET next_seq=excluded.next_seq,"
                        " held=excluded.held, gap_since_ms=excluded.gap_since_ms,"
                        " asked_ms=excluded.asked_ms, first_asked_ms=excluded.first_asked_ms,"
                        " lost=excluded.lost",
                        (conv, sender, stream.next_seq, json.dumps(sorted(stream.held)),
                         stream.gap_since_ms, stream.asked_ms, stream.first_asked_ms,
                         json.dumps(sorted(stream.lost))))

    def streams_with_gaps(self) -> list[tuple[str, str, Stream]]:
        rows = self.db.execute("SELECT conv, sender FROM streams WHERE held != '[]'")
        return [(r[0], r[1], self.stream(r[0], r[1])) for r in rows.fetchall()]

    # -- incoming chunks --------------------------------------------------------------------

    def chunk_arrived(self, msg_id: str, index: int, sender: str) -> bool:
        """Note chunk `index` of `msg_id`; False if it had come before."""
        return self.db.execute("INSERT OR IGNORE INTO chunks_in VALUES (?,?,?)",
                               (msg_id, index, sender)).rowcount == 1

    def chunks_finished(self, msg_id: str) -> None:
        """The file is whole (or given up): which parts came no longer matters."""
        self.db.execute("DELETE FROM chunks_in WHERE msg_id=?", (msg_id,))

    # -- receipts owed ------------------------------------------------------------------------

    def owe_receipt(self, device: str, conv: str, kind: str, msg_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO receipts_due VALUES (?,?,?,?)",
                        (device, conv, kind, msg_id))

    def receipts_owed(self, limit: int) -> list[tuple[str, str, str, list[str]]]:
        """Owed receipts, grouped: (device, conv, kind, up to `limit` message ids)."""
        rows = self.db.execute("SELECT device, conv, kind, msg_id FROM receipts_due ORDER BY"
                               " rowid").fetchall()
        groups: dict[tuple[str, str, str], list[str]] = {}
        for device, conv, kind, msg_id in rows:
            ids = groups.setdefault((device, conv, kind), [])
            if len(ids) < limit:
                ids.append(msg_id)
        return [(*key, ids) for key, ids in groups.items()]

    def receipts_sent(self, device: str, conv: str, kind: str, ids: list[str]) -> None:
        self.db.executemany("DELETE FROM receipts_due WHERE device=? AND conv=? AND kind=? AND"
                            " msg_id=?", [(device, conv, kind, i) for i in ids])

    def file_path(self, msg_id: str, sender: str) -> Path:
        """Where a file's bytes are kept: named by a hash, so that nothing a peer sends
        (its message id, its file name) ever becomes part of a path."""
        name = hashlib.sha256(f"{sender}\x00{msg_id}".encode()).hexdigest()[:40]
        return private_dir(self.files / name[:2]) / name


def _row(m: Message) -> tuple[Any, ...]:
    return (m.msg_id, m.conv, m.party, int(m.outgoing), m.sender, m.seq, m.kind, m.body,
            m.file_name, m.file_type, m.file_size, m.file_sha256, m.chunks, m.chunks_done,
            m.state, m.shown, m.time_ms, m.received_ms, m.read_ms, m.error, int(m.late))


def _message(row: Any) -> Message:
    values = list(row)
    values[3] = bool(values[3])
    values[20] = bool(values[20])
    return Message(*values)
