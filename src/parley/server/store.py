"""The line server's store: principals, lines, enrollment codes, devices, mail.

Two backends behind one class, chosen by a URL (`open_store`): SQLite, one
file in the data directory (0600, in a 0700 directory, WAL mode; the default),
or PostgreSQL (``postgresql://...``), which several server nodes can share.
Both run the same SQL (SQLite's ``?`` placeholders become PostgreSQL's), the
same schema (`MIGRATIONS`, with SQLite's column types spelled PostgreSQL's way
by `_postgres_ddl`) and the same tests.

An envelope the server said it stored survives a crash of the server process:
it is committed before the server says so. Mailbox writes (envelopes stored,
envelopes acknowledged) join one open *group* transaction instead of
committing one by one, which was one WAL write per envelope and per ack; the
server calls `commit_group` once per event-loop turn, before any frame of
that turn leaves it (see `LineServer._make_durable`). Everything else commits
as it happens. No statement inside a transaction may fail on a constraint
(PostgreSQL would abort the whole group): duplicates are ``ON CONFLICT DO
NOTHING`` and counted. Enrollment codes are kept only as SHA-256 hashes.

Devices are never overwritten by an enrollment: a code spent with the name of
a device that exists is refused. Only the operator replaces a device
(`replace_device`: the old keys stop working at once and a one-time code
bound to that device enrolls its new keys) or revokes one (`revoke_device`);
both, and every enrollment and refused takeover, are written to the device
log (`device_log`), and every running server notices them through
`directory_version` (a counter every change of parties, lines or devices
moves, whichever process or node made it).

The schema carries its version (SQLite's ``PRAGMA user_version``, a
``parley_schema`` row in PostgreSQL) and is brought up to date at open, one
step at a time, each step in a transaction of its own (PostgreSQL's DDL is
transactional, and nodes starting together take turns: an advisory lock).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.keys import DevicePublicKeys, check_name, device_id, split_device_id
from parley.core.relay.peers import KEY_BYTES, SEAL_HEAD_MAX
from parley.core.wire import check_storable_id
from parley.files import check_private, create_private_file, private_dir

log = logging.getLogger(__name__)

DB_FILE = "server.db"

# Each step takes the schema from the version before it to its own. Written for SQLite;
# `_postgres_ddl` gives PostgreSQL's spelling of the same.
MIGRATIONS: list[str] = [
    # 1: the first line server
    """
    CREATE TABLE IF NOT EXISTS principals (
        name TEXT PRIMARY KEY, display TEXT NOT NULL, timezone TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS lines (
        a TEXT NOT NULL REFERENCES principals(name), b TEXT NOT NULL REFERENCES principals(name),
        created_ms INTEGER NOT NULL, PRIMARY KEY (a, b), CHECK (a < b)
    );
    CREATE TABLE IF NOT EXISTS enroll_codes (
        code_hash TEXT PRIMARY KEY, party TEXT NOT NULL REFERENCES principals(name),
        created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, used_ms INTEGER, used_by TEXT
    );
    CREATE TABLE IF NOT EXISTS devices (
        id TEXT PRIMARY KEY, party TEXT NOT NULL REFERENCES principals(name), name TEXT NOT NULL,
        sign BLOB NOT NULL, kem BLOB NOT NULL, kem_sig BLOB NOT NULL, enrolled_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS mailbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, recipient TEXT NOT NULL,
        sender TEXT NOT NULL, body TEXT NOT NULL, stored_ms INTEGER NOT NULL,
        UNIQUE (recipient, id)
    );
    CREATE INDEX IF NOT EXISTS mailbox_recipient ON mailbox (recipient, seq);
    """,
    # 2: devices are replaced or revoked by the operator only, and every change is logged
    """
    ALTER TABLE devices ADD COLUMN revoked_ms INTEGER;
    ALTER TABLE enroll_codes ADD COLUMN device TEXT;
    CREATE TABLE device_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, action TEXT NOT NULL,
        device TEXT NOT NULL, fingerprint TEXT, detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 3: what was acknowledged is remembered (its id only) as long as it could come again
    """
    CREATE TABLE acked (
        recipient TEXT NOT NULL, id TEXT NOT NULL, stored_ms INTEGER NOT NULL,
        PRIMARY KEY (recipient, id)
    ) WITHOUT ROWID;
    CREATE INDEX acked_time ON acked (stored_ms);
    """,
    # 4: line tests signed by both ends, each line's announced state, alerts to deliver
    """
    CREATE TABLE linetests (
        test_id TEXT PRIMARY KEY, line TEXT NOT NULL, caller TEXT NOT NULL,
        callee TEXT NOT NULL, ended_ms INTEGER NOT NULL, filed_ms INTEGER NOT NULL,
        status TEXT NOT NULL, reasons TEXT NOT NULL, record TEXT NOT NULL
    );
    CREATE INDEX linetests_line ON linetests (line, ended_ms);
    CREATE TABLE line_state (
        line TEXT PRIMARY KEY, status TEXT NOT NULL, reasons TEXT NOT NULL,
        since_ms INTEGER NOT NULL
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY AUTOINCREMENT, url TEXT NOT NULL, body BLOB NOT NULL,
        created_ms INTEGER NOT NULL, next_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT
    );
    """,
    # 5: a line's media policy: calls may go directly, or through the TURN relay only
    """
    ALTER TABLE lines ADD COLUMN media TEXT NOT NULL DEFAULT 'any';
    """,
    # 6: one counter of changes to parties, lines and devices, which every node watches
    """
    CREATE TABLE directory (
        one INTEGER PRIMARY KEY CHECK (one = 1), version INTEGER NOT NULL
    );
    INSERT INTO directory VALUES (1, 0);
    """,
    # 7: several nodes serving one database: who is logged in on which node, and call
    # signaling on its way from one node to another
    """
    CREATE TABLE node_sessions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, node INTEGER NOT NULL, sid TEXT NOT NULL,
        device TEXT NOT NULL, receive INTEGER NOT NULL, UNIQUE (sid)
    );
    CREATE INDEX node_sessions_node ON node_sessions (node);
    CREATE TABLE transit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, recipient TEXT NOT NULL, body TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX transit_time ON transit (created_ms);
    """,
    # 8: the key the nodes seal their notifications with (core.relay.peers.Seal): only
    # the line's own role reads it, though any role that connects may notify
    """
    CREATE TABLE node_key (
        one INTEGER PRIMARY KEY CHECK (one = 1), key TEXT NOT NULL
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

def _payloads(events: list[str]) -> list[str]:
    """Events joined by newlines into notifications PostgreSQL takes (8,000 bytes each)."""
    payloads: list[str] = []
    chunk: list[str] = []
    size = 0
    for event in events:  # (each is sealed: a first line of its own)
        if chunk and size + len(event) + 1 > MAX_NOTIFY - SEAL_HEAD_MAX:
            payloads.append("\n".join(chunk))
            chunk, size = [], 0
        chunk.append(event)
        size += len(event) + 1
    if chunk:
        payloads.append("\n".join(chunk))
    return payloads


_storable_id = check_storable_id


CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def _hash_code(code: str) -> str:
    normalized = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(b"parley-enroll-code-v1\x00" + normalized.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    display: str
    timezone: str


@dataclass(frozen=True)
class DeviceRecord:
    """A device as the operator sees it in `parley server device list`."""

    device_id: str
    fingerprint: str
    enrolled_ms: int
    revoked_ms: int | None


@dataclass(frozen=True)
class DeviceEvent:
    time_ms: int
    action: str  # enrolled, replaced, revoked, refused
    device: str
    fingerprint: str | None
    detail: str


class _SQLite:
    """The embedded store: one file, one connection, on the server's event loop."""

    name = "sqlite"
    Error: type[Exception] = sqlite3.Error

    def __init__(self, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        create_private_file(path)
        check_private([path.parent, path], what="the server's data", secret=False)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: durable across crashes
        self.conn.execute("PRAGMA foreign_keys=ON")

    def __str__(self) -> str:
        return str(self.path)

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def begin_exclusive(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")  # one writer at a time, from the first statement

    def begin_snapshot(self) -> None:
        self.conn.execute("BEGIN")  # WAL: every read of it sees one moment

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, version: int) -> None:
        self.conn.execute(f"PRAGMA user_version={int(version)}")

    def statements(self, migration: str) -> list[str]:
        return _statements(migration)

    def executemany(self, sql: str, rows: list[Any]) -> None:
        self.conn.executemany(sql, rows)

    def identity_follows(self, table: str, column: str) -> None:
        """SQLite's AUTOINCREMENT follows the largest key inserted by itself."""

    def close(self) -> None:
        self.conn.close()


def _postgres_ddl(migration: str) -> list[str]:
    """A migration written for SQLite, in PostgreSQL's types: 64-bit integers for every
    integer (times are milliseconds), identity columns, bytea."""
    sql = migration.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    # Text compares byte by byte, as in SQLite (and as `add_line` orders a line's two
    # parties), whatever the database's locale.
    sql = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)
    sql = sql.replace(") WITHOUT ROWID", ")")
    return _statements(sql)


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


_SECRET_PARAMS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """A database URL fit for a log: any password in it (user:PASS@, ?password=,
    ?sslpassword=) replaced."""
    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{netloc[1]}")
    if parts.query:
        pairs = [(k, "***" if k.lower() in _SECRET_PARAMS else v)
                 for k, v in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(pairs, safe="*"))
    return urlunsplit(parts)


# Transactions that change the directory take this lock (a PostgreSQL advisory lock),
# as SQLite's BEGIN IMMEDIATE makes them take turns; so does bringing the schema up.
_DIRECTORY_LOCK = 0x7061726C6579  # "parley"
# Held by the one server node serving a database, for as long as its connection lives.
_NODE_LOCK = 0x7061726C6580  # shared by serving nodes; exclusive: no node serves
_LEADER_LOCK = 0x7061726C6581  # the node that does the line's housekeeping
_NODES_NS = 0x70617200  # (this, node id): one lock per serving node, which others watch
_MAILBOX_NS = 0x70617201  # (this, mailbox_lock(recipient)): its mailbox's writes take turns
MAILBOX_LOCKS = 1024  # a group holds one lock per mailbox it writes, at most this many
# A wait for a lock held by a few statements at a time (a mailbox, the directory) longer
# than this is another node stuck: it fails, rather than hold the event loop.
LOCK_WAIT_S = 5
EVENTS_CHANNEL = "parley_events"
MAX_NOTIFY = 7_900  # PostgreSQL's limit on a notification's payload is 8,000 bytes


def mailbox_lock(recipient: str) -> int:
    """Which of the `MAILBOX_LOCKS` locks guards `recipient`'s mailbox (the same on every
    node)."""
    digest = hashlib.sha256(recipient.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:4], "big") % MAILBOX_LOCKS


class _Postgres:
    """PostgreSQL through psycopg 3: one connection per store, in autocommit mode with
    explicit transactions (the mailbox group, the directory's changes). A connection
    lost between transactions is made again on next use; one lost inside a
    transaction fails it (the server then closes its connections, as for any failed
    commit, and the terminals send again what was not acknowledged)."""

    name = "postgresql"

    def __init__(self, url: str, *, connect_timeout: float = 10) -> None:
        self.node = False  # a serving node: holds the node lock, shared (`claim_node`)
        self.exclusive = False  # holds it alone: no other node serves (a schema upgrade)
        self.node_id = 0  # this node's own lock, made at each connection (0: none)
        self.leader = False
        self.connects = 0  # connections made: a node that connected again has lost its locks
        # A transaction was begun and not ended: kept here, not asked of the connection,
        # which forgets it when it breaks (and a lost group must fail its commit).
        self._open = False
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - a dependency of the package
            raise LocalError("PostgreSQL needs psycopg", code=ErrorCode.BAD_CONFIG,
                             hint="pip install 'psycopg[binary]'") from exc
        self._psycopg = psycopg
        self.Error: type[Exception] = psycopg.Error
        self.url = url
        self._timeout = connect_timeout
        self._sql: dict[str, str] = {}
        self._retry_at = 0.0  # a reconnect failed: not tried again before then (monotonic)
        try:
            self.conn = self._connect()
        except self._psycopg.Error as exc:
            raise LocalError(f"cannot reach the database {redact(self.url)}: {exc}".strip(),
                             code=ErrorCode.SERVER_ERROR,
                             hint="check that PostgreSQL runs and the URL (host, port,"
                                  " database, user) is right; a password goes in ~/.pgpass"
                                  " or PGPASSFILE, not in the URL") from None

    def _connect(self, timeout: float | None = None) -> Any:
        # Client-side keepalives and a send timeout: a partitioned network fails a query
        # within ~20 s instead of holding the node for minutes.
        conn = self._psycopg.connect(self.url, **self._connect_args("parley-server", timeout))
        conn.execute("SET statement_timeout = '30s'")
        # A node whose machine vanished lets go of its lock within half a minute.
        conn.execute("SET tcp_keepalives_idle = 10")
        conn.execute("SET tcp_keepalives_interval = 5")
        conn.execute("SET tcp_keepalives_count = 3")
        self.connects += 1
        self.exclusive = self.leader = False
        if self.node:  # connected again: serving again, beside whoever serves now
            claimed = conn.execute("SELECT pg_try_advisory_lock_shared(%s)",
                                   (_NODE_LOCK,)).fetchone()
            if not (claimed and claimed[0]):
                conn.close()
                raise self._psycopg.OperationalError(
                    "the database is being upgraded or taken over (retrying)")
            self._take_node_id(conn)
        return conn

    def _connect_args(self, name: str, timeout: float | None) -> dict[str, Any]:
        return {"autocommit": True, "application_name": name,
                "connect_timeout": max(1, int(timeout or self._timeout)), "keepalives": 1,
                "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                "tcp_user_timeout": 20_000}

    async def listen(self, channel: str) -> Any:
        """A connection of its own, on the event loop, that hears `channel`'s
        notifications (`AsyncConnection.notifies`)."""
        conn = await self._psycopg.AsyncConnection.connect(
            self.url, **self._connect_args("parley-server-events", 5))
        await conn.execute(f"LISTEN {channel}")
        return conn

    def _take_node_id(self, conn: Any) -> None:
        while True:
            ident = secrets.randbelow(2**31 - 2) + 1
            if conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                            (_NODES_NS, ident)).fetchone()[0]:
                self.node_id = ident
                return

    def _reconnect(self) -> None:
        """Connect again after the connection broke; at most once a second (each try
        holds the event loop up to the connect timeout), failing as a store error."""
        now = time.monotonic()
        if now < self._retry_at:
            raise self._psycopg.OperationalError("the database is not reachable (retrying)")
        log.warning("the database connection was lost; connecting again")
        try:
            self.conn = self._connect(timeout=2)
        except self._psycopg.Error:
            self._retry_at = time.monotonic() + 1.0
            raise

    def renew_node_id(self) -> None:
        """Let go of this node's lock and take a new one (an id the others never saw). (A
        connection that broke took its lock with it: the next one takes a new id.)"""
        if self.conn.closed:
            return
        old = self.node_id
        if old:
            self.conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_NODES_NS, old))
        self.node_id = 0
        self._take_node_id(self.conn)
        log.warning("node %d is now node %d", old, self.node_id)

    def ensure_node_id(self) -> None:
        """A serving node has an id (one taken away by a failed `renew_node_id`, again)."""
        if self.node and not self.node_id:
            self._take_node_id(self.conn)

    def claim_alone(self) -> bool:
        """The node lock alone (no node serves): for a schema upgrade, a standby's turn."""
        self.exclusive = bool(self.execute("SELECT pg_try_advisory_lock(?)",
                                           (_NODE_LOCK,)).fetchone()[0])
        return self.exclusive

    def claim_shared(self) -> bool:
        """The node lock beside the other serving nodes, and a lock of this node's own."""
        if not self.execute("SELECT pg_try_advisory_lock_shared(?)",
                            (_NODE_LOCK,)).fetchone()[0]:
            return False
        self.node = True
        if self.exclusive:
            self.release_alone()
        if not self.node_id:
            self._take_node_id(self.conn)
        return True

    def release_alone(self) -> None:
        self.execute("SELECT pg_advisory_unlock(?)", (_NODE_LOCK,))
        self.exclusive = False

    def try_leader(self) -> bool:
        if not self.leader:
            self.leader = bool(self.execute("SELECT pg_try_advisory_lock(?)",
                                            (_LEADER_LOCK,)).fetchone()[0])
        return self.leader

    def live_nodes(self) -> set[int]:
        """The ids of the nodes serving now (whose connection holds their lock)."""
        rows = self.execute(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted AND"
            " objsubid = 2 AND classid::bigint = ? AND database = (SELECT oid FROM"
            " pg_database WHERE datname = current_database())", (_NODES_NS,))
        return {int(r[0]) for r in rows}

    def __str__(self) -> str:
        return redact(self.url)

    def _text(self, sql: str) -> str:
        """The store's SQL (``?`` placeholders) in psycopg's (``%s``), made once each."""
        text = self._sql.get(sql)
        if text is None:
            text = self._sql[sql] = sql.replace("?", "%s")
        return text

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        text = self._text(sql)
        if self.conn.closed and not self._open:
            self._reconnect()
        cur = self.conn.execute(text, params)
        if text.startswith("BEGIN"):
            self._open = True
        return cur

    @property
    def in_transaction(self) -> bool:
        if self._open or self.conn.closed:
            return self._open
        status = self.conn.info.transaction_status
        return bool(status != self._psycopg.pq.TransactionStatus.IDLE)

    def rollback(self) -> None:
        self._open = False
        if not self.conn.closed:
            self.conn.execute("ROLLBACK")

    def begin_exclusive(self) -> None:
        self.execute("BEGIN")
        try:
            self.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'")
            self.execute("SELECT pg_advisory_xact_lock(?)", (_DIRECTORY_LOCK,))
        except BaseException:
            self.rollback()  # not left open for the mailbox group to join
            raise

    def begin_snapshot(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        """COMMIT, which PostgreSQL turns into a silent ROLLBACK when a statement of the
        transaction failed: that is an error here, never a success."""
        self._open = False
        if self.conn.closed:
            raise self._psycopg.OperationalError(
                "the connection to the database was lost with this transaction")
        failed = self._psycopg.pq.TransactionStatus.INERROR
        if self.conn.info.transaction_status == failed:
            self.conn.execute("ROLLBACK")
            raise self._psycopg.OperationalError(
                "a statement of this transaction failed: it was rolled back")
        cur = self.conn.execute("COMMIT")
        if cur.statusmessage != "COMMIT":
            raise self._psycopg.OperationalError(
                f"the transaction was not committed ({cur.statusmessage})")

    def schema_version(self) -> int:
        self.execute("CREATE TABLE IF NOT EXISTS parley_schema (one INTEGER PRIMARY KEY"
                     " CHECK (one = 1), version INTEGER NOT NULL)")
        row = self.execute("SELECT version FROM parley_schema").fetchone()
        return int(row[0]) if row else 0

    def set_schema_version(self, version: int) -> None:
        self.execute("INSERT INTO parley_schema VALUES (1, ?) ON CONFLICT (one) DO UPDATE"
                     " SET version = excluded.version", (version,))

    def statements(self, migration: str) -> list[str]:
        return _postgres_ddl(migration)

    def executemany(self, sql: str, rows: list[Any]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self._text(sql), rows)

    def identity_follows(self, table: str, column: str) -> None:
        """Rows copied with their keys: the next key the table makes comes after them."""
        self.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'),"
                     f" coalesce(max({column}), 1), max({column}) IS NOT NULL) FROM {table}")

    def close(self) -> None:
        self._retry_at = float("inf")  # closed for good: never connected again
        self.conn.close()


def is_postgres(url: str | None) -> bool:
    return bool(url) and urlsplit(str(url)).scheme in ("postgresql", "postgres")


def open_store(database: str | None, data_dir: Path, *, node: bool = False,
               standby: bool = False, alone: bool = False) -> ServerStore:
    """The store a `--database` URL names: none or ``sqlite:`` is ``server.db`` in the data
    directory, ``sqlite:///PATH`` that file, ``postgresql://...`` a PostgreSQL database.
    On PostgreSQL, a server `node` serves it beside other nodes (a `standby` only once
    none does), and a tool may hold it `alone` (refused while a node serves); see
    `ServerStore.claim_node`."""
    if is_postgres(database):
        return ServerStore(url=str(database), node=node, standby=standby, alone=alone)
    if not database or database == "sqlite:":
        return ServerStore(data_dir / DB_FILE)
    parts = urlsplit(database)
    if parts.scheme == "sqlite" and parts.path:
        return ServerStore(Path(parts.path))
    raise LocalError(f"unknown database {redact(database)!r}", code=ErrorCode.BAD_CONFIG,
                     hint="give sqlite: (the data directory's server.db), sqlite:///PATH, or"
                          " postgresql://USER@HOST:PORT/DBNAME")


class ServerStore:
    def __init__(self, path: Path | None = None, *, url: str | None = None,
                 node: bool = False, standby: bool = False, alone: bool = False) -> None:
        if (path is None) == (url is None):
            raise ValueError("a store is a file (path) or a PostgreSQL database (url)")
        self.backend: _SQLite | _Postgres = _Postgres(url) if url is not None else \
            _SQLite(path or Path(DB_FILE))
        self.Error = self.backend.Error
        self._events: list[str] = []  # told to every node when the open group commits
        self._transit: list[tuple[str, str, int]] = []  # written then (put_transit)
        self._transit_event: Callable[[int, str], str] = lambda seq, to: ""
        # Seals each notification (server.cluster sets it: core.relay.peers.Seal).
        self.seal: Callable[[str], str] = lambda body: body
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._committing: concurrent.futures.Future[None] | None = None  # commit_group_soon
        self._locked: set[int] = set()  # the mailbox locks the open group holds
        # A group that failed where its caller may not have said so (committed early, in
        # lock_mailboxes): the server treats it as a failed commit (`take_lost`).
        self.lost: BaseException | None = None
        try:
            if node or alone:
                self.claim_node(alone=standby or alone)
            self._migrate()
            if node:
                self.serve_shared()
        except BaseException:
            self.backend.close()
            raise

    @property
    def db(self) -> Any:
        """The backend's connection (sqlite3 or psycopg), for tests and tools."""
        return self.backend.conn

    @property
    def path(self) -> Path:
        assert isinstance(self.backend, _SQLite), "a PostgreSQL store has no file"
        return self.backend.path

    @property
    def where(self) -> str:
        """The database, fit for a log: its file, or its URL without a password."""
        return str(self.backend)

    def _q(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        if self._committing is not None:
            self.settle()
        return self.backend.execute(sql, params)

    def _migrate(self) -> None:
        backend = self.backend
        if isinstance(backend, _Postgres):
            with self.transaction():  # nodes starting together: one brings it up
                version = backend.schema_version()
        else:
            version = backend.schema_version()
        if version > SCHEMA_VERSION:
            raise LocalError(
                f"{self.where} has schema version {version}; this Parley knows up to"
                f" {SCHEMA_VERSION}", code=ErrorCode.BAD_CONFIG,
                hint="run the newer Parley that wrote it, or restore a backup")
        borrowed = False  # the node lock, taken only to bring the schema up
        if version < SCHEMA_VERSION and isinstance(backend, _Postgres) \
                and not backend.exclusive:
            # Never under a node that serves it: only with the node lock held alone
            # (another tool bringing it up holds it a moment; serving nodes, for good).
            if backend.node:
                raise LocalError(
                    f"{self.where} has schema version {version}, and nodes of an older"
                    f" Parley serve it; this one needs {SCHEMA_VERSION}", code=ErrorCode.BUSY,
                    hint="stop the older nodes, then start the new ones: the first to start"
                         " brings the schema up")
            deadline = time.monotonic() + 10
            while not (borrowed := backend.claim_alone()):
                version = backend.schema_version()
                if version >= SCHEMA_VERSION:
                    break
                if time.monotonic() > deadline:
                    raise LocalError(
                        f"{self.where} has schema version {version}; this Parley needs"
                        f" {SCHEMA_VERSION}", code=ErrorCode.BUSY,
                        hint="a server node of an older Parley serves it: upgrade the"
                             " nodes; the first to start brings the schema up")
                time.sleep(0.1)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                if backend.schema_version() >= target:
                    continue  # another node took this step meanwhile
                for statement in backend.statements(MIGRATIONS[target - 1]):
                    self._q(statement)
                backend.set_schema_version(target)
        if borrowed and isinstance(backend, _Postgres):
            backend.release_alone()

    def claim_node(self, *, alone: bool = False) -> None:
        """Serve this database as a node (PostgreSQL): beside the nodes that serve it
        already, or, `alone` (a standby), only once no other node does -- or say who does.

        The first node takes the node lock alone (and brings the schema up); every
        serving node then holds it shared, and a lock of its own besides, which the
        others watch to know it is alive. Each lock is free the moment its node's
        connection ends (a crash, a kill, its machine gone within ~25 s).
        """
        backend = self.backend
        if not isinstance(backend, _Postgres):
            return
        if backend.claim_alone():
            return  # the first: brings the schema up (`_migrate`), then shares the lock
        deadline = time.monotonic() + (0 if alone else 10)
        while not alone:  # a moment while the first brings the schema up
            if backend.claim_shared():
                return
            if time.monotonic() > deadline:
                raise LocalError(f"the node lock of {self.where} is held alone for more"
                                 " than 10 s", code=ErrorCode.BUSY,
                                 hint="a node is upgrading the schema, or a tool copies a"
                                      " line into it: start this node again when it is done")
            time.sleep(0.1)
        # (Serving nodes share it: the oldest of them is named.)
        holder = self._q(
            "SELECT a.client_addr, a.backend_start FROM pg_locks l JOIN pg_stat_activity"
            " a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND"
            " l.database = (SELECT oid FROM pg_database WHERE datname ="
            " current_database()) AND l.objsubid = 1"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = ? ORDER BY a.backend_start",
            (_NODE_LOCK,)).fetchone()
        seen = ""
        if holder is not None:  # (what a role without pg_read_all_stats may not see)
            since = f" since {holder[1]:%c}" if holder[1] is not None else ""
            seen = f" (connected from {holder[0] or 'a local socket'}{since})"
        raise LocalError(f"another line server node runs on {self.where}{seen}",
                         code=ErrorCode.BUSY,
                         hint="a standby waits while any node serves; without --standby"
                              " this node would serve beside it")

    def serve_shared(self) -> None:
        """After the schema is up: serve beside the nodes that start after this one."""
        backend = self.backend
        if isinstance(backend, _Postgres) and backend.exclusive and not backend.node \
                and not backend.claim_shared():
            raise RuntimeError("the node lock held alone could not be shared")

    def check(self) -> None:
        """Raise `Error` unless the database answers a read of its devices."""
        self._q("SELECT count(*) FROM devices").fetchone()

    def close(self) -> None:
        try:
            self.commit_group()
        finally:
            if self._committer is not None:
                self._committer.shutdown()
            self.backend.close()

    # -- principals and lines ---------------------------------------------------

    def add_principal(self, name: str, display: str, timezone: str, now_ms: int) -> Principal:
        check_name(name, what="party name")
        with self.transaction():
            if self._q("INSERT INTO principals VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                       (name, display or name, timezone, now_ms)).rowcount == 0:
                raise LocalError(f"party {name!r} already exists", code=ErrorCode.BAD_CONFIG)
            self._directory_changed()
        return Principal(name, display or name, timezone)

    def principals(self) -> list[Principal]:
        rows = self._q("SELECT name, display, timezone FROM principals ORDER BY name")
        return [Principal(*row) for row in rows]

    def principal(self, name: str) -> Principal | None:
        row = self._q("SELECT name, display, timezone FROM principals WHERE name=?",
                      (name,)).fetchone()
        return Principal(*row) if row else None

    def principal_exists(self, name: str) -> bool:
        return self.principal(name) is not None

    def _need_principal(self, name: str) -> None:
        if self.principal(name) is None:
            raise LocalError(f"no party named {name!r}", code=ErrorCode.UNKNOWN_PARTY,
                             hint="create it with 'parley server principal add NAME'")

    def add_line(self, a: str, b: str, now_ms: int) -> None:
        if a == b:
            raise LocalError("a line joins two different parties", code=ErrorCode.BAD_CONFIG)
        self._need_principal(a)
        self._need_principal(b)
        with self.transaction():
            if self._q("INSERT INTO lines (a, b, created_ms) VALUES (?,?,?) ON CONFLICT DO"
                       " NOTHING", (*sorted((a, b)), now_ms)).rowcount:
                self._directory_changed()

    def lines(self) -> list[tuple[str, str]]:
        return list(self._q("SELECT a, b FROM lines ORDER BY a, b"))

    def set_line_media(self, a: str, b: str, policy: str) -> None:
        """Whether the line's calls may go directly ("any") or through TURN only ("relay")."""
        if policy not in ("any", "relay"):
            raise LocalError(f"unknown media policy {policy!r}", code=ErrorCode.BAD_CONFIG,
                             hint="use any (direct allowed) or relay (TURN only)")
        lo, hi = sorted((a, b))
        with self.transaction():
            if self._q("UPDATE lines SET media=? WHERE a=? AND b=?",
                       (policy, lo, hi)).rowcount == 0:
                raise LocalError(f"there is no line between {a} and {b}",
                                 code=ErrorCode.NO_LINE,
                                 hint="open it with 'parley server line add A B'")
            self._directory_changed()

    def line_media(self, a: str, b: str) -> str:
        lo, hi = sorted((a, b))
        row = self._q("SELECT media FROM lines WHERE a=? AND b=?", (lo, hi)).fetchone()
        if row is None:
            return "any"
        return "any" if row[0] == "any" else "relay"  # anything else: the safer of the two

    def line_peers(self, party: str) -> list[str]:
        rows = self._q(
            "SELECT b FROM lines WHERE a=? UNION SELECT a FROM lines WHERE b=? ORDER BY 1",
            (party, party))
        return [r[0] for r in rows]

    def may_talk(self, a: str, b: str) -> bool:
        if a == b:
            return True  # a party's own devices
        lo, hi = sorted((a, b))
        return self._q("SELECT 1 FROM lines WHERE a=? AND b=?", (lo, hi)).fetchone() \
            is not None

    def directory_version(self) -> int:
        """Moves whenever parties, lines or devices changed, here or in another process."""
        return int(self._q("SELECT version FROM directory").fetchone()[0])

    def _directory_changed(self) -> None:
        self._q("UPDATE directory SET version = version + 1")

    # -- enrollment ---------------------------------------------------------------

    def _new_code(self, party: str, ttl_ms: int, now_ms: int, device: str | None) -> str:
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(12))
        code = f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"
        self._q("INSERT INTO enroll_codes (code_hash, party, created_ms, expires_ms,"
                " device) VALUES (?,?,?,?,?)",
                (_hash_code(code), party, now_ms, now_ms + ttl_ms, device))
        return code

    def create_enroll_code(self, party: str, ttl_ms: int, now_ms: int) -> str:
        """A one-time code that enrolls one new device of `party` (never an existing one)."""
        self._need_principal(party)
        return self._new_code(party, ttl_ms, now_ms, None)

    def enroll(self, code: str, device: str, keys: dict[str, object], now_ms: int, *,
               source: str = "") -> DevicePublicKeys:
        """Spend a one-time code: register the device's public keys under its party.

        A device that exists keeps its keys: only a code that `replace_device` made
        for it enrolls new ones. A refused attempt leaves the code unspent; one that
        named an existing device is written to the device log.
        """
        check_name(device, what="device name")
        digest = _hash_code(code)
        taken: str | None = None  # an existing device the enrollment named
        try:
            with self.transaction():
                row = self._q(
                    "SELECT party, expires_ms, used_ms, device FROM enroll_codes"
                    " WHERE code_hash=?", (digest,)).fetchone()
                if row is None:
                    raise RemoteError("this enrollment code is not valid",
                                      code=ErrorCode.ENROLL_CODE_INVALID,
                                      hint="check it for typos or ask the server operator for"
                                           " a new one")
                party, expires_ms, used_ms, bound = row
                if bound is not None and not self.revoked(bound):
                    raise RemoteError(
                        f"this replacement code for {bound} is no longer valid: the device"
                        " was enrolled again since", code=ErrorCode.ENROLL_CODE_INVALID,
                        hint="ask the server operator for a new one")
                if used_ms is not None:
                    raise RemoteError("this enrollment code has already been used",
                                      code=ErrorCode.ENROLL_CODE_USED,
                                      hint="codes work once; ask the server operator for a new"
                                           " one")
                if now_ms > expires_ms:
                    raise RemoteError("this enrollment code has expired",
                                      code=ErrorCode.ENROLL_CODE_EXPIRED,
                                      hint="ask the server operator for a new one")
                public = DevicePublicKeys.from_json({**keys, "id": device_id(party, device)})
                ident = public.device_id
                if bound is not None and bound != ident:
                    raise RemoteError(
                        f"this code replaces {bound}, not {ident}",
                        code=ErrorCode.ENROLL_CODE_INVALID,
                        hint="enroll the replacement under the name"
                             f" {split_device_id(bound)[1]!r} ('parley terminal init --name"
                             " ...'), or ask for a code for a new device")
                exists = self._q("SELECT 1 FROM devices WHERE id=?",
                                 (ident,)).fetchone() is not None
                if exists and bound is None:
                    taken = ident
                    raise RemoteError(
                        f"{ident} is already enrolled; an enrollment never replaces a device",
                        code=ErrorCode.DEVICE_EXISTS,
                        hint="give this terminal another name ('parley terminal init --name"
                             f" ...'); if it replaces {ident}, ask the server operator to run"
                             f" 'parley server device replace {ident}' and use the code it"
                             " prints")
                self._q("UPDATE enroll_codes SET used_ms=?, used_by=? WHERE code_hash=?",
                        (now_ms, ident, digest))
                if exists:
                    self._q("UPDATE devices SET sign=?, kem=?, kem_sig=?, enrolled_ms=?,"
                            " revoked_ms=NULL WHERE id=?",
                            (public.sign, public.kem, public.kem_sig, now_ms, ident))
                    self._cancel_codes(ident, now_ms)  # any other code for it is spent now
                else:
                    self._q(
                        "INSERT INTO devices (id, party, name, sign, kem, kem_sig, enrolled_ms)"
                        " VALUES (?,?,?,?,?,?,?)",
                        (ident, party, device, public.sign, public.kem, public.kem_sig, now_ms))
                self._log(now_ms, "replaced" if exists else "enrolled", ident,
                          public.fingerprint, "with a replacement code" if exists else "")
                self._directory_changed()
        except RemoteError:
            if taken is not None:
                self._log(now_ms, "refused", taken, None,
                          "an enrollment named this existing device"
                          + (f" (from {source})" if source else ""))
            raise
        return public

    def replace_device(self, ident: str, ttl_ms: int, now_ms: int, reason: str) -> str:
        """Revoke `ident`'s keys now; a one-time code that enrolls its new keys.

        Only the latest code works: one issued before it is cancelled.
        """
        record = self._device_record(ident)
        party, _ = split_device_id(ident)
        with self.transaction():
            self._revoke(ident, now_ms)
            self._cancel_codes(ident, now_ms)
            code = self._new_code(party, ttl_ms, now_ms, ident)
            self._log(now_ms, "replace", ident, record.fingerprint,
                      reason or "keys revoked; a replacement code was issued")
        return code

    def revoke_device(self, ident: str, now_ms: int, reason: str) -> None:
        """Revoke `ident`: no login, no routing to it, and no pending replacement code."""
        record = self._device_record(ident)
        with self.transaction():
            cancelled = self._cancel_codes(ident, now_ms)
            if record.revoked_ms is not None and not cancelled:
                raise LocalError(f"{ident} is revoked already", code=ErrorCode.BAD_CONFIG,
                                 hint=f"'parley server device replace {ident}' enrolls new"
                                      " keys for it")
            self._revoke(ident, now_ms)
            self._log(now_ms, "revoked", ident, record.fingerprint,
                      reason + (" (its replacement code was cancelled)" if cancelled else ""))

    def _revoke(self, ident: str, now_ms: int) -> None:
        # What waits for it was sealed to the keys now revoked: nobody will read it.
        self._directory_changed()
        self._q("UPDATE devices SET revoked_ms=coalesce(revoked_ms, ?) WHERE id=?",
                (now_ms, ident))
        self._q("DELETE FROM mailbox WHERE recipient=?", (ident,))

    def _cancel_codes(self, ident: str, now_ms: int) -> int:
        """Spend every unspent replacement code bound to `ident`; how many there were."""
        return int(self._q("UPDATE enroll_codes SET used_ms=?, used_by='cancelled' WHERE"
                           " device=? AND used_ms IS NULL", (now_ms, ident)).rowcount)

    def cancel_code(self, code: str, now_ms: int) -> str:
        """Spend an unspent code unused (a code given out by mistake); the party it was for."""
        with self.transaction():
            row = self._q("SELECT party, device FROM enroll_codes WHERE code_hash=? AND"
                          " used_ms IS NULL", (_hash_code(code),)).fetchone()
            if row is None:
                raise LocalError("no unspent code like that", code=ErrorCode.ENROLL_CODE_INVALID,
                                 hint="'parley server codes' lists the unspent ones")
            self._q("UPDATE enroll_codes SET used_ms=?, used_by='cancelled' WHERE"
                    " code_hash=?", (now_ms, _hash_code(code)))
            self._log(now_ms, "cancelled", row[1] or f"{row[0]}/(new device)", None,
                      "an enrollment code was cancelled")
        return str(row[0])

    def unspent_codes(self, now_ms: int) -> list[tuple[str, str | None, int, int]]:
        """(party, device it replaces, created, expires) of every code still good."""
        rows = self._q("SELECT party, device, created_ms, expires_ms FROM enroll_codes"
                       " WHERE used_ms IS NULL AND expires_ms>=? ORDER BY created_ms, party",
                       (now_ms,))
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def _device_record(self, ident: str) -> DeviceRecord:
        split_device_id(ident)
        for record in self.device_records():
            if record.device_id == ident:
                return record
        raise LocalError(f"no device {ident} is enrolled here", code=ErrorCode.UNKNOWN_DEVICE,
                         hint="'parley server device list' shows them")

    def _log(self, now_ms: int, action: str, device: str, fingerprint: str | None,
             detail: str) -> None:
        self._q("INSERT INTO device_log (time_ms, action, device, fingerprint, detail)"
                " VALUES (?,?,?,?,?)", (now_ms, action, device, fingerprint, detail))

    def device_log(self, limit: int = 100) -> list[DeviceEvent]:
        rows = self._q("SELECT time_ms, action, device, fingerprint, detail FROM"
                       " device_log ORDER BY seq DESC LIMIT ?", (limit,))
        return [DeviceEvent(*row) for row in rows][::-1]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # The server commits its open mailbox group first, on the one path that handles
        # a failed commit (LineServer._make_durable): a group committed here could fail
        # while frames that report it still wait to leave.
        self.settle()
        if self.backend.in_transaction:
            raise RuntimeError("mailbox writes are still open: commit the group first")
        self.backend.begin_exclusive()
        try:
            yield
        except BaseException:
            if self.backend.in_transaction:
                self.backend.rollback()
            raise
        self.backend.commit()

    # -- directory ----------------------------------------------------------------

    _ACTIVE = "SELECT id, sign, kem, kem_sig FROM devices WHERE revoked_ms IS NULL"

    def device(self, ident: str) -> DevicePublicKeys | None:
        """An enrolled device's keys, unless it was revoked."""
        row = self._q(self._ACTIVE + " AND id=?", (ident,)).fetchone()
        return DevicePublicKeys(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3])) \
            if row else None

    def revoked(self, ident: str) -> bool:
        return self._q("SELECT 1 FROM devices WHERE id=? AND revoked_ms IS NOT NULL",
                       (ident,)).fetchone() is not None

    def devices(self, party: str | None = None) -> list[DevicePublicKeys]:
        rows = self._q(self._ACTIVE + " AND party=? ORDER BY id", (party,)) if party \
            else self._q(self._ACTIVE + " ORDER BY id")
        return [DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]

    def device_keys(self) -> dict[str, bytes]:
        return {r[0]: bytes(r[1]) for r in self._q(
            "SELECT id, sign FROM devices WHERE revoked_ms IS NULL")}

    def device_records(self) -> list[DeviceRecord]:
        rows = self._q("SELECT id, sign, kem, kem_sig, enrolled_ms, revoked_ms FROM"
                       " devices ORDER BY id")
        return [DeviceRecord(r[0], DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]),
                                                    bytes(r[3])).fingerprint, r[4], r[5])
                for r in rows]

    # -- mailbox: envelopes stored until delivered ---------------------------------

    def _join_group(self) -> None:
        if self._committing is not None:
            self.settle()
        if not self.backend.in_transaction:
            self._q("BEGIN")
            self._locked = set()  # (a group's mailbox locks end with it)

    @property
    def group_open(self) -> bool:
        """Are there mailbox writes not yet committed? (Not those of a COMMIT in flight:
        any write after it waits for it, and joins a group of its own.)"""
        return self._committing is None and self.backend.in_transaction

    def commit_group(self) -> None:
        """Commit the mailbox writes made since the last commit, and tell the other nodes
        what they did (`notify`: delivered by PostgreSQL with the commit, never without
        it); on failure, forget them."""
        self.settle()
        if self._end_group():
            self.backend.commit()

    def commit_group_soon(self) -> concurrent.futures.Future[None] | None:
        """Commit the open group without waiting for it, on PostgreSQL: the group's last
        statements here, its COMMIT (the wait for the database's disk) on a thread of
        the store's own, while the caller goes on. Until that COMMIT ends, the next use
        of the store waits for it (`settle`), so nothing joins the group in flight or
        reads around it. The future fails as `commit_group` would; None: nothing to
        commit, or a store that commits at once (SQLite, whose commit is a local write)."""
        self.settle()
        if not isinstance(self.backend, _Postgres):
            self.commit_group()
            return None
        if not self._end_group():
            return None
        if self._committer is None:
            self._committer = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="parley-commit")
        self._committing = self._committer.submit(self.backend.commit)
        return self._committing

    @property
    def committing(self) -> bool:
        """A COMMIT is in flight (`commit_group_soon`): the store's next use waits for it."""
        return self._committing is not None and not self._committing.done()

    def settle(self) -> None:
        """Wait for a COMMIT in flight (`commit_group_soon`) to end, however it ends (its
        future tells how)."""
        committing = self._committing
        if committing is not None:
            concurrent.futures.wait([committing])
            self._committing = None

    def _end_group(self) -> bool:
        """The open group's last statements (its call signaling in transit, its
        notifications); False if no group is open."""
        if self.backend.in_transaction:
            events, self._events = self._events, []
            transit, self._transit = self._transit, []
            try:
                if transit:  # one statement for the turn's call signaling to other nodes
                    rows = self._q(
                        "INSERT INTO transit (recipient, body, created_ms) SELECT * FROM"
                        " unnest(?::text[], ?::text[], ?::bigint[]) RETURNING seq, recipient",
                        ([t[0] for t in transit], [t[1] for t in transit],
                         [t[2] for t in transit])).fetchall()
                    events += [self._transit_event(int(seq), recipient)
                               for seq, recipient in rows]
                if events:
                    self._q("SELECT pg_notify(?, x) FROM unnest(?::text[]) AS x",
                            (EVENTS_CHANNEL, [self.seal(p) for p in _payloads(events)]))
            except self.Error:
                if self.backend.in_transaction:
                    self.backend.rollback()
                raise
            return True
        return False

    def abandon_group(self) -> None:
        """Roll the open group back (a statement of it failed): none of its writes or
        notifications happened."""
        self.settle()
        self._events, self._transit = [], []
        if self.backend.in_transaction:
            self.backend.rollback()

    # -- several nodes on one database (PostgreSQL; see server.cluster) -------------------

    def notify(self, event: str) -> None:
        """Tell every node serving this database (this one too) of `event` (one line, see
        core.relay.peers) once the open group commits."""
        self._join_group()
        self._events.append(event)

    def node_key(self) -> bytes:
        """The key every node serving this database seals its notifications with: made
        by the first to ask."""
        with self.transaction():
            self._q("INSERT INTO node_key VALUES (1, ?) ON CONFLICT DO NOTHING",
                    (secrets.token_hex(KEY_BYTES),))
            row = self._q("SELECT key FROM node_key").fetchone()
        return bytes.fromhex(row[0])

    def anyone_connects(self) -> bool:
        """May every role connect to this (PostgreSQL) database?"""
        return self.backend.name == "postgresql" and bool(self._q(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
        ).fetchone()[0])

    def lock_mailboxes(self, recipients: Iterable[str]) -> None:
        """Hold, until the open group ends, the lock of each recipient's mailbox (one of
        `MAILBOX_LOCKS`, by `mailbox_lock`).

        With several nodes, an envelope acknowledged on one may be sent again (a sender
        that failed over) to another, which must see the ack committed or not at all:
        what it stores after this lock reads after the other's commit. One device's
        acks on two nodes take turns too, instead of locking rows in two orders.

        A group takes the locks it lacks without waiting. When another node holds one,
        this group is committed first and the locks are waited for holding none, all in
        one statement in one order (every node the same): no two nodes can each wait
        for the other. A wait gives up after `LOCK_WAIT_S` (another node stuck in the
        middle of a turn), failing the group. (Either failure is also kept in `lost`:
        this may be called in the middle of a turn, by callers that cannot fail it.)"""
        if self.backend.name != "postgresql":
            return  # one writer at a time
        self._join_group()
        needed = {mailbox_lock(r) for r in recipients}
        wanted = sorted(needed - self._locked)
        if not wanted:
            return
        got = {int(r[0]) for r in self._q(
            "SELECT b FROM unnest(?::int[]) AS b WHERE pg_try_advisory_xact_lock(?, b)",
            (wanted, _MAILBOX_NS))}
        self._locked |= got
        if got == set(wanted):
            return
        try:
            self.commit_group()  # (what it holds, let go: then it waits)
            self._join_group()
            self._q(f"SET LOCAL lock_timeout = '{LOCK_WAIT_S}s'")
            self._q("SELECT pg_advisory_xact_lock(?, b) FROM unnest(?::int[]) AS b"
                    " ORDER BY b", (_MAILBOX_NS, sorted(needed)))
            self._q("SET LOCAL lock_timeout = DEFAULT")
        except self.Error as exc:
            self.lost = exc
            raise
        self._locked = needed

    def take_lost(self) -> BaseException | None:
        """A group lost since last asked (see `lost`), once."""
        lost, self.lost = self.lost, None
        return lost

    def add_node_session(self, node: int, sid: str, device: str, receive: bool) -> int:
        """A session logged in on `node` (in the open group): its place in the order of
        logins, which every node agrees on."""
        self._join_group()
        return int(self._q("INSERT INTO node_sessions (node, sid, device, receive) VALUES"
                           " (?,?,?,?) ON CONFLICT (sid) DO UPDATE SET node = excluded.node"
                           " RETURNING seq", (node, sid, device, int(receive))).fetchone()[0])

    def drop_node_session(self, sid: str) -> None:
        self._join_group()
        self._q("DELETE FROM node_sessions WHERE sid=?", (sid,))

    def node_sessions(self) -> list[tuple[int, int, str, str, bool]]:
        """Every session logged in on a node: (seq, node, sid, device, receive)."""
        rows = self._q("SELECT seq, node, sid, device, receive FROM node_sessions ORDER BY seq")
        return [(int(r[0]), int(r[1]), r[2], r[3], bool(r[4])) for r in rows]

    def forget_nodes(self, live: set[int]) -> int:
        """Forget the sessions of nodes that are gone (in the open group); how many."""
        self._join_group()
        gone = [n for (n,) in self._q("SELECT DISTINCT node FROM node_sessions")
                if int(n) not in live]
        return sum(int(self._q("DELETE FROM node_sessions WHERE node=?", (n,)).rowcount)
                   for n in gone)

    def put_transit(self, recipient: str, body: str, now_ms: int,
                    event: Callable[[int, str], str]) -> None:
        """Call signaling on its way to another node: written, with the turn's others, in
        one statement when the open group commits, and told with `event(seq, recipient)`."""
        self._join_group()
        self._transit.append((recipient, body, now_ms))
        self._transit_event = event

    def transits(self, seqs: list[int]) -> dict[int, tuple[str, str]]:
        """Call signaling in transit, by id: (recipient, body)."""
        rows = self._q("SELECT seq, recipient, body FROM transit WHERE seq = ANY(?)", (seqs,))
        return {int(r[0]): (r[1], r[2]) for r in rows}

    def forget_transit(self, created_before_ms: int) -> int:
        self._join_group()
        return int(self._q("DELETE FROM transit WHERE created_ms<?",
                           (created_before_ms,)).rowcount)

    def store_envelope(self, envelope_id: str, sender: str, recipient: str, body: str,
                       now_ms: int) -> int | None:
        """Store once (in the open group): its mailbox position; None if it waits already
        or was acknowledged (`was_delivered`) -- one statement, one round trip."""
        _storable_id(envelope_id)
        self._join_group()
        row = self._q(
            "INSERT INTO mailbox (id, recipient, sender, body, stored_ms) SELECT ?,?,?,?,?"
            " WHERE NOT EXISTS (SELECT 1 FROM acked WHERE recipient=? AND id=?)"
            " ON CONFLICT DO NOTHING RETURNING seq",
            (envelope_id, recipient, sender, body, now_ms, recipient, envelope_id)).fetchone()
        return int(row[0]) if row else None

    def store_envelopes(self, rows: list[tuple[str, str, str, str, int]]
                        ) -> dict[tuple[str, str], int]:
        """Store a turn's envelopes (id, sender, recipient, body, stored_ms), each once, in
        the open group: the mailbox position of each stored, by (recipient, id); one
        statement on PostgreSQL, where each is a round trip."""
        for row in rows:
            _storable_id(row[0])
        if self.backend.name != "postgresql":
            out = {}
            for ident, sender, recipient, body, stored in rows:
                seq = self.store_envelope(ident, sender, recipient, body, stored)
                if seq is not None:
                    out[(recipient, ident)] = seq
            return out
        if not rows:
            return {}
        self._join_group()
        columns = [list(column) for column in zip(*rows, strict=True)]
        found = self._q(
            "INSERT INTO mailbox (id, recipient, sender, body, stored_ms) SELECT v.id,"
            " v.recipient, v.sender, v.body, v.stored_ms FROM unnest(?::text[], ?::text[],"
            " ?::text[], ?::text[], ?::bigint[]) AS v(id, sender, recipient, body, stored_ms)"
            " WHERE NOT EXISTS (SELECT 1 FROM acked a WHERE a.recipient = v.recipient AND"
            " a.id = v.id) ON CONFLICT DO NOTHING RETURNING recipient, id, seq",
            columns).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in found}

    def delivered_many(self, acks: list[tuple[str, str]]) -> list[tuple[str, str, str, int]]:
        """Delete a turn's acknowledged envelopes (recipient, id) in the open group: the
        (recipient, id, sender, size) of each that was waiting; one statement on
        PostgreSQL."""
        for _recipient, ident in acks:
            _storable_id(ident)
        if self.backend.name != "postgresql":
            out = []
            for recipient, ident in acks:
                gone = self.delivered(recipient, ident)
                if gone is not None:
                    out.append((recipient, ident, gone[0], gone[1]))
            return out
        self._join_group()
        rows = self._q(
            "WITH gone AS (DELETE FROM mailbox m USING unnest(?::text[], ?::text[]) AS"
            " v(recipient, id) WHERE m.recipient = v.recipient AND m.id = v.id RETURNING"
            " m.recipient, m.id, m.sender, length(m.body) AS size, m.stored_ms), kept AS"
            " (INSERT INTO acked SELECT recipient, id, stored_ms FROM gone ON CONFLICT DO"
            " NOTHING) SELECT recipient, id, sender, size FROM gone",
            ([a[0] for a in acks], [a[1] for a in acks])).fetchall()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def pending(self, recipient: str, after_seq: int, limit: int
                ) -> list[tuple[int, str, str]]:
        """The oldest `limit` stored envelopes for `recipient` after `after_seq`."""
        rows = self._q(
            "SELECT seq, id, body FROM mailbox WHERE recipient=? AND seq>? ORDER BY seq LIMIT ?",
            (recipient, after_seq, limit))
        return [(r[0], r[1], r[2]) for r in rows]

    def delivered(self, recipient: str, envelope_id: str) -> tuple[str, int] | None:
        """Delete an acknowledged envelope (in the open group): its sender and size.

        Its id is kept (`acked`): a sender that never heard "sent" sends it again, and
        it must not be stored -- and delivered -- a second time.
        """
        _storable_id(envelope_id)
        self._join_group()
        if self.backend.name == "postgresql":  # both in one round trip
            row = self._q(
                "WITH gone AS (DELETE FROM mailbox WHERE recipient=? AND id=? RETURNING"
                " recipient, id, sender, length(body) AS size, stored_ms), kept AS (INSERT"
                " INTO acked SELECT recipient, id, stored_ms FROM gone ON CONFLICT DO"
                " NOTHING) SELECT sender, size FROM gone", (recipient, envelope_id)).fetchone()
            return (row[0], int(row[1])) if row else None
        row = self._q("DELETE FROM mailbox WHERE recipient=? AND id=?"
                      " RETURNING sender, length(body), stored_ms",
                      (recipient, envelope_id)).fetchone()
        if row is None:
            return None
        self._q("INSERT INTO acked VALUES (?,?,?) ON CONFLICT DO NOTHING",
                (recipient, envelope_id, row[2]))
        return row[0], int(row[1])

    def was_delivered(self, recipient: str, envelope_id: str) -> bool:
        """Was this envelope stored for `recipient`, and acknowledged (recently)?"""
        _storable_id(envelope_id)
        return self._q("SELECT 1 FROM acked WHERE recipient=? AND id=?",
                       (recipient, envelope_id)).fetchone() is not None

    def forget_acked(self, stored_before_ms: int) -> int:
        """Forget acknowledged ids stored before then (in the open group); how many."""
        self._join_group()
        return int(self._q("DELETE FROM acked WHERE stored_ms<?",
                           (stored_before_ms,)).rowcount)

    def waiting(self, recipient: str, envelope_id: str) -> bool:
        _storable_id(envelope_id)
        return self._q("SELECT 1 FROM mailbox WHERE recipient=? AND id=?",
                       (recipient, envelope_id)).fetchone() is not None

    def mailbox_usage(self) -> list[tuple[str, str, int, int]]:
        rows = self._q("SELECT recipient, sender, COUNT(*), SUM(length(body)) FROM"
                       " mailbox GROUP BY recipient, sender")
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    # -- line tests (core.relay.lines) -------------------------------------------------

    def add_linetest(self, record: dict[str, Any], filed_ms: int, status: str,
                     reasons: list[str]) -> bool:
        return bool(self._q(
            "INSERT INTO linetests VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            (record["test_id"], record["line"], record["caller"], record["callee"],
             record["ended_ms"], filed_ms, status, json.dumps(reasons),
             json.dumps(record))).rowcount)

    def last_linetest(self, line: str) -> tuple[dict[str, Any], str, list[str]] | None:
        row = self._q("SELECT record, status, reasons FROM linetests WHERE line=?"
                      " ORDER BY ended_ms DESC LIMIT 1", (line,)).fetchone()
        return (json.loads(row[0]), row[1], json.loads(row[2])) if row else None

    def linetest_history(self, line: str, since_ms: int, limit: int = 5_000
                         ) -> list[tuple[dict[str, Any], str, list[str]]]:
        """A line's results since then, oldest first."""
        rows = self._q(
            "SELECT record, status, reasons FROM (SELECT record, status, reasons, ended_ms FROM"
            " linetests WHERE line=? AND ended_ms>=? ORDER BY ended_ms DESC LIMIT ?) AS recent"
            " ORDER BY ended_ms", (line, since_ms, limit))
        return [(json.loads(r[0]), r[1], json.loads(r[2])) for r in rows]

    def line_states(self) -> dict[str, tuple[str, list[str], int]]:
        return {r[0]: (r[1], json.loads(r[2]), r[3]) for r in
                self._q("SELECT line, status, reasons, since_ms FROM line_state")}

    def set_line_state(self, line: str, status: str, reasons: list[str], since_ms: int) -> None:
        self._q("INSERT INTO line_state VALUES (?,?,?,?) ON CONFLICT(line) DO UPDATE"
                " SET status=excluded.status, reasons=excluded.reasons,"
                " since_ms=excluded.since_ms", (line, status, json.dumps(reasons),
                                                        since_ms))

    def forget_linetests(self, ended_before_ms: int) -> int:
        return int(self._q("DELETE FROM linetests WHERE ended_ms<?",
                           (ended_before_ms,)).rowcount)

    # -- alerts to deliver (server.alerts) ----------------------------------------------

    def queue_alert(self, url: str, body: bytes, now_ms: int) -> None:
        self._q("INSERT INTO alerts (url, body, created_ms, next_ms) VALUES (?,?,?,?)",
                (url, body, now_ms, now_ms))

    def pending_alerts(self, limit: int = 200) -> list[tuple[int, str, bytes, int, int, int]]:
        """(id, url, body, attempts, created_ms, next_ms) of alerts to deliver, oldest first."""
        return list(self._q(
            "SELECT id, url, body, attempts, created_ms, next_ms FROM alerts ORDER BY id"
            " LIMIT ?", (limit,)))

    def next_alert_ms(self) -> int | None:
        row = self._q("SELECT MIN(next_ms) FROM alerts").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def alert_done(self, ident: int) -> None:
        self._q("DELETE FROM alerts WHERE id=?", (ident,))

    def alert_failed(self, ident: int, next_ms: int, error: str) -> None:
        self._q("UPDATE alerts SET attempts=attempts+1, next_ms=?, last_error=?"
                " WHERE id=?", (next_ms, error[:300], ident))

    def alerts_waiting(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM alerts").fetchone()[0])


# Every table, parents before children; `directory` is the target's own (its counter moves).
_TABLES = ["principals", "lines", "enroll_codes", "devices", "device_log", "mailbox", "acked",
           "linetests", "line_state", "alerts"]
_IDENTITY = {"mailbox": "seq", "device_log": "seq", "alerts": "id"}
_BATCH = 1_000


def copy_store(source: ServerStore, target: ServerStore,
               progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every row of `source` into `target`, an empty store of the same schema, in
    one transaction of the target's (all of it or none) from one snapshot of the
    source's; the rows copied per table. `progress(table, rows)` after each table."""
    if source.where == target.where:
        raise LocalError("the source and the target are the same database",
                         code=ErrorCode.BAD_CONFIG)
    held = [t for t in ("principals", "devices", "mailbox")
            if target._q(f"SELECT count(*) FROM {t}").fetchone()[0]]
    if held:
        raise LocalError(f"{target.where} is not empty (it has {', '.join(held)})",
                         code=ErrorCode.BAD_CONFIG,
                         hint="copy into a new, empty database (createdb ...)")
    counts: dict[str, int] = {}
    source.commit_group()
    source.backend.begin_snapshot()
    try:
        with target.transaction():
            for table in _TABLES:
                cur = source._q(f"SELECT * FROM {table}")
                columns = [d[0] for d in cur.description]
                insert = (f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
                          f" ({', '.join('?' * len(columns))})")
                counts[table] = 0
                while rows := cur.fetchmany(_BATCH):
                    target.backend.executemany(insert, rows)
                    counts[table] += len(rows)
                if table in _IDENTITY:
                    target.backend.identity_follows(table, _IDENTITY[table])
                if progress is not None:
                    progress(table, counts[table])
            target._directory_changed()
    finally:
        source.backend.rollback()
    return counts
