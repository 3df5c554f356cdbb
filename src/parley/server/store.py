"""The line server's SQLite store: principals, lines, enrollment codes, devices, mail.

One file in the data directory (0600, in a 0700 directory), in WAL mode. An
envelope the server said it stored survives a crash of the server process: it
is committed before the server says so. Mailbox writes (envelopes stored,
envelopes acknowledged) join one open *group* transaction instead of
committing one by one, which was one WAL write per envelope and per ack; the
server calls `commit_group` once per event-loop turn, before any frame of
that turn leaves it (see `LineServer._make_durable`). Everything else commits
as it happens. Enrollment codes are kept only as SHA-256 hashes.

Devices are never overwritten by an enrollment: a code spent with the name of
a device that exists is refused. Only the operator replaces a device
(`replace_device`: the old keys stop working at once and a one-time code
bound to that device enrolls its new keys) or revokes one (`revoke_device`);
both, and every enrollment and refused takeover, are written to the device
log (`device_log`), and the running server notices them through
`directory_version` (SQLite's ``data_version``, which moves when another
connection commits).

The schema carries its version (``PRAGMA user_version``) and is brought up to
date at open, one step at a time (`MIGRATIONS`).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.keys import DevicePublicKeys, check_name, device_id, split_device_id
from parley.files import check_private, create_private_file, private_dir

DB_FILE = "server.db"

# Each step takes the schema from the version before it to its own.
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
]
SCHEMA_VERSION = len(MIGRATIONS)

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


class ServerStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        create_private_file(path)
        check_private([path.parent, path], what="the server's data", secret=False)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL+NORMAL: durable across process crash
        self.db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LocalError(
                f"{self.path} has schema version {version}; this Parley knows up to"
                f" {SCHEMA_VERSION}", code=ErrorCode.BAD_CONFIG,
                hint="run the newer Parley that wrote it, or restore a backup")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                for statement in MIGRATIONS[target - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={target}")

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
        self.db.execute("INSERT OR IGNORE INTO lines (a, b, created_ms) VALUES (?,?,?)",
                        (*sorted((a, b)), now_ms))

    def lines(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT a, b FROM lines ORDER BY a, b"))

    def set_line_media(self, a: str, b: str, policy: str) -> None:
        """Whether the line's calls may go directly ("any") or through TURN only ("relay")."""
        if policy not in ("any", "relay"):
            raise LocalError(f"unknown media policy {policy!r}", code=ErrorCode.BAD_CONFIG,
                             hint="use any (direct allowed) or relay (TURN only)")
        lo, hi = sorted((a, b))
        if self.db.execute("UPDATE lines SET media=? WHERE a=? AND b=?",
                           (policy, lo, hi)).rowcount == 0:
            raise LocalError(f"there is no line between {a} and {b}", code=ErrorCode.NO_LINE,
                             hint="open it with 'parley server line add A B'")

    def line_media(self, a: str, b: str) -> str:
        lo, hi = sorted((a, b))
        row = self.db.execute("SELECT media FROM lines WHERE a=? AND b=?", (lo, hi)).fetchone()
        if row is None:
            return "any"
        return "any" if row[0] == "any" else "relay"  # anything else: the safer of the two

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

    def directory_version(self) -> int:
        """Moves whenever another connection (the admin CLI) has committed a change."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    # -- enrollment ---------------------------------------------------------------

    def _new_code(self, party: str, ttl_ms: int, now_ms: int, device: str | None) -> str:
        raw = "".join(secrets.choice(CODE_ALPHABET) for _ in range(12))
        code = f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"
        self.db.execute("INSERT INTO enroll_codes (code_hash, party, created_ms, expires_ms,"
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
                row = self.db.execute(
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
                exists = self.db.execute("SELECT 1 FROM devices WHERE id=?",
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
                self.db.execute("UPDATE enroll_codes SET used_ms=?, used_by=? WHERE code_hash=?",
                                (now_ms, ident, digest))
                if exists:
                    self.db.execute("UPDATE devices SET sign=?, kem=?, kem_sig=?, enrolled_ms=?,"
                                    " revoked_ms=NULL WHERE id=?",
                                    (public.sign, public.kem, public.kem_sig, now_ms, ident))
                    self._cancel_codes(ident, now_ms)  # any other code for it is spent now
                else:
                    self.db.execute(
                        "INSERT INTO devices (id, party, name, sign, kem, kem_sig, enrolled_ms)"
                        " VALUES (?,?,?,?,?,?,?)",
                        (ident, party, device, public.sign, public.kem, public.kem_sig, now_ms))
                self._log(now_ms, "replaced" if exists else "enrolled", ident,
                          public.fingerprint, "with a replacement code" if exists else "")
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
        self.db.execute("UPDATE devices SET revoked_ms=coalesce(revoked_ms, ?) WHERE id=?",
                        (now_ms, ident))
        self.db.execute("DELETE FROM mailbox WHERE recipient=?", (ident,))

    def _cancel_codes(self, ident: str, now_ms: int) -> int:
        """Spend every unspent replacement code bound to `ident`; how many there were."""
        return self.db.execute("UPDATE enroll_codes SET used_ms=?, used_by='cancelled' WHERE"
                               " device=? AND used_ms IS NULL", (now_ms, ident)).rowcount

    def cancel_code(self, code: str, now_ms: int) -> str:
        """Spend an unspent code unused (a code given out by mistake); the party it was for."""
        with self.transaction():
            row = self.db.execute("SELECT party, device FROM enroll_codes WHERE code_hash=? AND"
                                  " used_ms IS NULL", (_hash_code(code),)).fetchone()
            if row is None:
                raise LocalError("no unspent code like that", code=ErrorCode.ENROLL_CODE_INVALID,
                                 hint="'parley server codes' lists the unspent ones")
            self.db.execute("UPDATE enroll_codes SET used_ms=?, used_by='cancelled' WHERE"
                            " code_hash=?", (now_ms, _hash_code(code)))
            self._log(now_ms, "cancelled", row[1] or f"{row[0]}/(new device)", None,
                      "an enrollment code was cancelled")
        return str(row[0])

    def unspent_codes(self, now_ms: int) -> list[tuple[str, str | None, int, int]]:
        """(party, device it replaces, created, expires) of every code still good."""
        rows = self.db.execute("SELECT party, device, created_ms, expires_ms FROM enroll_codes"
                               " WHERE used_ms IS NULL AND expires_ms>=? ORDER BY created_ms",
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
        self.db.execute("INSERT INTO device_log (time_ms, action, device, fingerprint, detail)"
                        " VALUES (?,?,?,?,?)", (now_ms, action, device, fingerprint, detail))

    def device_log(self, limit: int = 100) -> list[DeviceEvent]:
        rows = self.db.execute("SELECT time_ms, action, device, fingerprint, detail FROM"
                               " device_log ORDER BY seq DESC LIMIT ?", (limit,))
        return [DeviceEvent(*row) for row in rows][::-1]

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

    _ACTIVE = "SELECT id, sign, kem, kem_sig FROM devices WHERE revoked_ms IS NULL"

    def device(self, ident: str) -> DevicePublicKeys | None:
        """An enrolled device's keys, unless it was revoked."""
        row = self.db.execute(self._ACTIVE + " AND id=?", (ident,)).fetchone()
        return DevicePublicKeys(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3])) \
            if row else None

    def revoked(self, ident: str) -> bool:
        return self.db.execute("SELECT 1 FROM devices WHERE id=? AND revoked_ms IS NOT NULL",
                               (ident,)).fetchone() is not None

    def devices(self, party: str | None = None) -> list[DevicePublicKeys]:
        rows = self.db.execute(self._ACTIVE + " AND party=? ORDER BY id", (party,)) if party \
            else self.db.execute(self._ACTIVE + " ORDER BY id")
        return [DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows]

    def device_keys(self) -> dict[str, bytes]:
        return {r[0]: bytes(r[1]) for r in self.db.execute(
            "SELECT id, sign FROM devices WHERE revoked_ms IS NULL")}

    def device_records(self) -> list[DeviceRecord]:
        rows = self.db.execute("SELECT id, sign, kem, kem_sig, enrolled_ms, revoked_ms FROM"
                               " devices ORDER BY id")
        return [DeviceRecord(r[0], DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]),
                                                    bytes(r[3])).fingerprint, r[4], r[5])
                for r in rows]

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
                       now_ms: int) -> int | None:
        """Store once (in the open group): its mailbox position; None if already waiting."""
        self._join_group()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO mailbox (id, recipient, sender, body, stored_ms)"
            " VALUES (?,?,?,?,?)", (envelope_id, recipient, sender, body, now_ms))
        return cur.lastrowid if cur.rowcount == 1 else None

    def pending(self, recipient: str, after_seq: int, limit: int
                ) -> list[tuple[int, str, str]]:
        """The oldest `limit` stored envelopes for `recipient` after `after_seq`."""
        rows = self.db.execute(
            "SELECT seq, id, body FROM mailbox WHERE recipient=? AND seq>? ORDER BY seq LIMIT ?",
            (recipient, after_seq, limit))
        return [(r[0], r[1], r[2]) for r in rows]

    def delivered(self, recipient: str, envelope_id: str) -> tuple[str, int] | None:
        """Delete an acknowledged envelope (in the open group): its sender and size.

        Its id is kept (`acked`): a sender that never heard "sent" sends it again, and
        it must not be stored -- and delivered -- a second time.
        """
        self._join_group()
        row = self.db.execute("DELETE FROM mailbox WHERE recipient=? AND id=?"
                              " RETURNING sender, length(body), stored_ms",
                              (recipient, envelope_id)).fetchone()
        if row is None:
            return None
        self.db.execute("INSERT OR IGNORE INTO acked VALUES (?,?,?)",
                        (recipient, envelope_id, row[2]))
        return row[0], int(row[1])

    def was_delivered(self, recipient: str, envelope_id: str) -> bool:
        """Was this envelope stored for `recipient`, and acknowledged (recently)?"""
        return self.db.execute("SELECT 1 FROM acked WHERE recipient=? AND id=?",
                               (recipient, envelope_id)).fetchone() is not None

    def forget_acked(self, stored_before_ms: int) -> int:
        """Forget acknowledged ids stored before then (in the open group); how many."""
        self._join_group()
        return self.db.execute("DELETE FROM acked WHERE stored_ms<?",
                               (stored_before_ms,)).rowcount

    def waiting(self, recipient: str, envelope_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM mailbox WHERE recipient=? AND id=?",
                               (recipient, envelope_id)).fetchone() is not None

    def mailbox_usage(self) -> list[tuple[str, str, int, int]]:
        rows = self.db.execute("SELECT recipient, sender, COUNT(*), SUM(length(body)) FROM"
                               " mailbox GROUP BY recipient, sender")
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    # -- line tests (core.relay.lines) -------------------------------------------------

    def add_linetest(self, record: dict[str, Any], filed_ms: int, status: str,
                     reasons: list[str]) -> bool:
        try:
            self.db.execute(
                "INSERT INTO linetests VALUES (?,?,?,?,?,?,?,?,?)",
                (record["test_id"], record["line"], record["caller"], record["callee"],
                 record["ended_ms"], filed_ms, status, json.dumps(reasons), json.dumps(record)))
        except sqlite3.IntegrityError:
            return False
        return True

    def last_linetest(self, line: str) -> tuple[dict[str, Any], str, list[str]] | None:
        row = self.db.execute("SELECT record, status, reasons FROM linetests WHERE line=?"
                              " ORDER BY ended_ms DESC LIMIT 1", (line,)).fetchone()
        return (json.loads(row[0]), row[1], json.loads(row[2])) if row else None

    def linetest_history(self, line: str, since_ms: int, limit: int = 5_000
                         ) -> list[tuple[dict[str, Any], str, list[str]]]:
        """A line's results since then, oldest first."""
        rows = self.db.execute(
            "SELECT record, status, reasons FROM (SELECT record, status, reasons, ended_ms FROM"
            " linetests WHERE line=? AND ended_ms>=? ORDER BY ended_ms DESC LIMIT ?)"
            " ORDER BY ended_ms", (line, since_ms, limit))
        return [(json.loads(r[0]), r[1], json.loads(r[2])) for r in rows]

    def line_states(self) -> dict[str, tuple[str, list[str], int]]:
        return {r[0]: (r[1], json.loads(r[2]), r[3]) for r in
                self.db.execute("SELECT line, status, reasons, since_ms FROM line_state")}

    def set_line_state(self, line: str, status: str, reasons: list[str], since_ms: int) -> None:
        self.db.execute("INSERT INTO line_state VALUES (?,?,?,?) ON CONFLICT(line) DO UPDATE"
                        " SET status=excluded.status, reasons=excluded.reasons,"
                        " since_ms=excluded.since_ms", (line, status, json.dumps(reasons),
                                                        since_ms))

    def forget_linetests(self, ended_before_ms: int) -> int:
        return self.db.execute("DELETE FROM linetests WHERE ended_ms<?",
                               (ended_before_ms,)).rowcount

    # -- alerts to deliver (server.alerts) ----------------------------------------------

    def queue_alert(self, url: str, body: bytes, now_ms: int) -> None:
        self.db.execute("INSERT INTO alerts (url, body, created_ms, next_ms) VALUES (?,?,?,?)",
                        (url, body, now_ms, now_ms))

    def pending_alerts(self, limit: int = 200) -> list[tuple[int, str, bytes, int, int, int]]:
        """(id, url, body, attempts, created_ms, next_ms) of alerts to deliver, oldest first."""
        return list(self.db.execute(
            "SELECT id, url, body, attempts, created_ms, next_ms FROM alerts ORDER BY id"
            " LIMIT ?", (limit,)))

    def next_alert_ms(self) -> int | None:
        row = self.db.execute("SELECT MIN(next_ms) FROM alerts").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def alert_done(self, ident: int) -> None:
        self.db.execute("DELETE FROM alerts WHERE id=?", (ident,))

    def alert_failed(self, ident: int, next_ms: int, error: str) -> None:
        self.db.execute("UPDATE alerts SET attempts=attempts+1, next_ms=?, last_error=?"
                        " WHERE id=?", (next_ms, error[:300], ident))

    def alerts_waiting(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0])
