"""The line server's SQLite store: principals, lines, enrollment codes, devices, mail.

One file in the data directory, in WAL mode. An envelope the server said it
stored survives a crash of the server process: it is committed before the
server says so. Mailbox writes (envelopes stored, envelopes acknowledged) join
one open *group* transaction instead of committing one by one, which was one
WAL write per envelope and per ack; the server calls `commit_group` once per
event-loop turn, before any frame of that turn leaves it (see
`LineServer._make_durable`). Everything else commits as it happens.
Enrollment codes are kept only as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.keys import DevicePublicKeys, check_name, device_id

SCHEMA = """
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
"""

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def _hash_code(code: str) -> str:
    normalized = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(b"parley-enroll-code-v1\x00" + normalized.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    display: str
    timezone: str


class ServerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: durable across process crash
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        self._routes: set[tuple[str, str]] = set()  # (party, device) pairs may_deliver allowed

    def close(self) -> None:
        self.commit_group()
        self.db.close()

    # -- principals and lines ---------------------------------------------------

    def add_principal(self, name: str, display: str, timezone: str, now_ms: int) -> Principal:
        check_name(name, what="party name")
        try:
            self.db.execute("INSERT INTO principals VALUES (?,?,?,?)",
                            (name, display or name, timezone, now_ms))
        except sqlite3.IntegrityError:
            raise LocalError(f"party {name!r} already exists", code=ErrorCode.BAD_CONFIG) from None
        return Principal(name, display or name, timezone)

    def principals(self) -> list[Principal]:
        rows = self.db.execute("SELECT name, display, timezone FROM principals ORDER BY name")
        return [Principal(*row) for row in rows]

    def principal(self, name: str) -> Principal | None:
        row = self.db.execute("SELECT name, display, timezone FROM principals WHERE name=?",
                              (name,)).fetchone()
        return Principal(*row) if row else None

    def _need_principal(self, name: str) -> None:
        if self.principal(name) is None:
            raise LocalError(f"no party named {name!r}", code=ErrorCode.UNKNOWN_PARTY,
                             hint="create it with 'parley server principal add NAME'")

    def add_line(self, a: str, b: str, now_ms: int) -> None:
        if a == b:
            raise LocalError("a line joins two different parties", code=ErrorCode.BAD_CONFIG)
        self._need_principal(a)
        self._need_principal(b)
        self.db.execute("INSERT OR IGNORE INTO lines VALUES (?,?,?)", (*sorted((a, b)), now_ms))

    def lines(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT a, b FROM lines ORDER BY a, b"))

    def line_peers(self, party: str) -> list[str]:
        rows = self.db.execute(
            "SELECT b FROM lines WHERE a=? UNION SELECT a FROM lines WHERE b=? ORDER BY 1",
            (party, party))
        return [r[0] for r in rows]

    def may_talk(self, a: str, b: str) -> bool:
        if a == b:
            return True  # a party's own devices
        lo, hi = sorted((a, b))
        return self.db.execute("SELECT 1 FROM lines WHERE a=? AND b=?", (lo, hi)).fetchone() \
            is not None

    def may_deliver(self, party: str, recipient: str) -> bool:
        """Is `recipient` an enrolled device of `party` or of a party on a line with it?

        Asked for every envelope relayed, so a yes is remembered for good: parties,
        lines and devices are only ever added (here or by the admin CLI in another
        process), and an addition cannot turn a yes into a no. Removing any of them
        must clear `_routes`, in every server process.
        """
        if (party, recipient) in self._routes:
            return True
        row = self.db.execute("SELECT party FROM devices WHERE id=?", (recipient,)).fetchone()
        if row is None or not self.may_talk(party, row[0]):
            return False
        self._routes.add((party, recipient))
        return True

    # -- enrollment ---------------------------------------------------------------

    def create_enroll_code(self, party: str, ttl_ms: int, now_ms: int) -> str:
        self._need_principal(party)
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(12))
        code = f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"
        self.db.execute("INSERT INTO enroll_codes VALUES (?,?,?,?,NULL,NULL)",
                        (_hash_code(code), party, now_ms, now_ms + ttl_ms))
        return code

    def enroll(self, code: str, device: str, keys: dict[str, object], now_ms: int
               ) -> DevicePublicKeys:
        """Spend a one-time code: register the device's public keys under its party."""
        check_name(device, what="device name")
        digest = _hash_code(code)
        with self.transaction():
            row = self.db.execute(
                "SELECT party, expires_ms, used_ms FROM enroll_codes WHERE code_hash=?",
                (digest,)).fetchone()
            if row is None:
                raise RemoteError("this enrollment code is not valid",
                                  code=ErrorCode.ENROLL_CODE_INVALID,
                                  hint="check it for typos or ask the server operator for a new"
                                       " one")
            party, expires_ms, used_ms = row
            if used_ms is not None:
                raise RemoteError("this enrollment code has already been used",
                                  code=ErrorCode.ENROLL_CODE_USED,
                                  hint="codes work once; ask the server operator for a new one")
            if now_ms > expires_ms:
                raise RemoteError("this enrollment code has expired",
                                  code=ErrorCode.ENROLL_CODE_EXPIRED,
                                  hint="ask the server operator for a new one")
            public = DevicePublicKeys.from_json({**keys, "id": device_id(party, device)})
            self.db.execute("UPDATE enroll_codes SET used_ms=?, used_by=? WHERE code_hash=?",
                            (now_ms, public.device_id, digest))
            self.db.execute(
                "INSERT INTO devices VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
                " sign=excluded.sign, kem=excluded.kem, kem_sig=excluded.kem_sig,"
                " enrolled_ms=excluded.enrolled_ms",
                (public.device_id, party, device, public.sign, public.kem, public.kem_sig,
                 now_ms))
        return public

    @contextmanager
    def transaction(self) -> Iterator[None]:
        # The server commits its open mailbox group first, on the one path that handles
        # a failed commit (LineServer._make_durable): a group committed here could fail
        # while frames that report it still wait to leave.
        if self.db.in_transaction:
            raise RuntimeError("mailbox writes are still open: commit the group first")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- directory ----------------------------------------------------------------

    def device(self, ident: str) -> DevicePublicKeys | None:
        row = self.db.execute("SELECT id, sign, kem, kem_sig FROM devices WHERE id=?",
                              (ident,)).fetchone()
        return DevicePublicKeys(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3])) \
            if row else None

    def devices(self, party: str | None = None) -> list[DevicePublicKeys]:
        query = "SELECT id, sign, kem, kem_sig FROM devices"
        rows = self.db.execute(query + " WHERE party=? ORDER BY id", (party,)) if party else \
            self.db.execute(query + " ORDER BY id")
        return [DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]

    # -- mailbox: envelopes stored until delivered ---------------------------------

    def _join_group(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN")

    @property
    def group_open(self) -> bool:
        """Are there mailbox writes not yet committed?"""
        return self.db.in_transaction

    def commit_group(self) -> None:
        """Commit the mailbox writes made since the last commit; on failure, forget them."""
        if self.db.in_transaction:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def store_envelope(self, envelope_id: str, sender: str, recipient: str, body: str,
                       now_ms: int) -> bool:
        """Store once (in the open group); False if this id was already waiting."""
        self._join_group()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO mailbox (id, recipient, sender, body, stored_ms)"
            " VALUES (?,?,?,?,?)", (envelope_id, recipient, sender, body, now_ms))
        return cur.rowcount == 1

    def pending(self, recipient: str, limit: int) -> list[tuple[str, str]]:
        """The oldest `limit` stored envelopes for `recipient`: (id, deliver frame)."""
        rows = self.db.execute(
            "SELECT id, body FROM mailbox WHERE recipient=? ORDER BY seq LIMIT ?",
            (recipient, limit))
        return [(r[0], r[1]) for r in rows]

    def delivered(self, recipient: str, envelope_id: str) -> None:
        self._join_group()
        self.db.execute("DELETE FROM mailbox WHERE recipient=? AND id=?", (recipient, envelope_id))

    def mailbox_size(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM mailbox").fetchone()[0])
