"""A terminal's local state: its key file, identity, pins, alarms and call log.

Layout of a terminal's data directory (mode 0700)::

    device.key     the private keys, mode 0600, written once at `init`
    terminal.db    SQLite (0600): identity, pinned peer keys, alarms, devices seen, call log
    control.json   while running: the local UI's URL and per-start token (0600)
    lock           while running: held by the one terminal process on this directory

Pins are the heart of verification: a pin records the exact public keys of a
peer device that this terminal's operator verified by comparing the safety
number out of band. They are never sent to the server. Whoever could write
this directory could swap a pin, so a terminal refuses to open one that other
users may read or write (`parley.files.check_private`).

Alarms are kept here until an operator acknowledges them: a flood of newer
ones cannot push an old one out of sight. The same alarm again (the same
code about the same call, device or sender) is counted on the open entry
instead of listed again; past `MAX_OPEN_ALARMS` distinct open alarms, new
ones of a code fold into one entry per code, so that nothing is evicted and
the table stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.core.errors import ErrorCode, LocalError
from parley.core.keys import DeviceKeys, DevicePublicKeys, check_name
from parley.core.messages import MAX_AGE_MS
from parley.files import (
    check_private,
    create_private_file,
    private_dir,
    replace_private_file,
    write_private_file,
)

KEY_FILE = "device.key"
DB_FILE = "terminal.db"
CONTROL_FILE = "control.json"
SEEN_SWEEP_MS = 60_000  # how often expired envelope ids are dropped from the replay table
MAX_OPEN_ALARMS = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (
    device_id TEXT PRIMARY KEY, sign BLOB NOT NULL, kem BLOB NOT NULL, kem_sig BLOB NOT NULL,
    safety_number TEXT NOT NULL, verified_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_envelopes (id TEXT PRIMARY KEY, until_ms INTEGER,
                                           confirmed INTEGER);
CREATE TABLE IF NOT EXISTS call_log (
    call_id TEXT PRIMARY KEY, info TEXT NOT NULL, ended_ms INTEGER
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, code TEXT NOT NULL,
    title TEXT NOT NULL, message TEXT NOT NULL, hint TEXT NOT NULL, call_id TEXT,
    subject TEXT, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, count INTEGER NOT NULL,
    acked_ms INTEGER, ack_note TEXT
);
CREATE INDEX IF NOT EXISTS alarms_open ON alarms (key) WHERE acked_ms IS NULL;
CREATE TABLE IF NOT EXISTS seen_devices (
    device_id TEXT PRIMARY KEY, party TEXT NOT NULL, first_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS linetests (
    test_id TEXT PRIMARY KEY, line TEXT NOT NULL, ended_ms INTEGER NOT NULL,
    status TEXT NOT NULL, reasons TEXT NOT NULL, record TEXT, source TEXT NOT NULL,
    filed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS linetests_line ON linetests (line, ended_ms);
CREATE TABLE IF NOT EXISTS talks (talk_id TEXT PRIMARY KEY, talk TEXT NOT NULL,
                                  updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS talk_pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, party TEXT NOT NULL, kind TEXT NOT NULL,
    payload TEXT NOT NULL, received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS talk_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device TEXT NOT NULL, kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS record_entries (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS talk_reminders (
    talk_id TEXT NOT NULL, lead_ms INTEGER NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (talk_id, lead_ms, sequence)
);
"""


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One transaction: everything in it is committed together, or nothing is (nested:
    part of the one already open)."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@dataclass(frozen=True)
class AlarmRecord:
    id: int
    code: str
    title: str
    message: str
    hint: str
    call_id: str | None
    subject: str | None
    first_ms: int
    last_ms: int
    count: int
    acked_ms: int | None
    ack_note: str | None

    def to_json(self) -> dict[str, Any]:
        # time_ms: when it last happened (what the UI and the CLI show first).
        return {**self.__dict__, "time_ms": self.last_ms}


_ALARM_COLUMNS = ("id, code, title, message, hint, call_id, subject, first_ms, last_ms, count,"
                  " acked_ms, ack_note")


class TerminalStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        if not (data_dir / KEY_FILE).exists():
            raise LocalError(
                f"no terminal in {data_dir}", code=ErrorCode.NOT_ENROLLED,
                hint=f"create one with 'parley terminal init --data {data_dir} --name NAME'",
            )
        create_private_file(data_dir / DB_FILE)
        check_private([data_dir, data_dir / KEY_FILE, data_dir / DB_FILE,
                       data_dir / (DB_FILE + "-wal")], what="this terminal's data", secret=True)
        self.db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(seen_envelopes)")}
        if "confirmed" not in columns:  # a terminal from before acks were confirmed
            self.db.execute("ALTER TABLE seen_envelopes ADD COLUMN confirmed INTEGER")
        self._next_seen_sweep_ms = 0

    @classmethod
    def init(cls, data_dir: Path, device_name: str) -> TerminalStore:
        """Generate this device's keys. Refuses to overwrite an existing terminal."""
        check_name(device_name, what="device name")
        private_dir(data_dir)
        if not any(data_dir.iterdir()):
            data_dir.chmod(0o700)  # an empty directory made for it: for its owner alone
        else:
            check_private([data_dir], what="this terminal's data", secret=True)
        key_path = data_dir / KEY_FILE
        if key_path.exists():
            raise LocalError(
                f"{data_dir} already holds a terminal", code=ErrorCode.BAD_CONFIG,
                hint="use another --data directory, or delete it to start over (its keys are"
                     " lost)",
            )
        write_private_file(key_path, DeviceKeys.generate().to_private_bytes())
        store = cls(data_dir)
        store.set("device_name", device_name)
        return store

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def load_keys(self) -> DeviceKeys:
        path = self.data_dir / KEY_FILE
        check_private([path], what="this device's private keys", secret=True)
        return DeviceKeys.from_private_bytes(path.read_bytes())

    # -- settings ------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO settings VALUES (?,?) ON CONFLICT(key) DO UPDATE SET"
                        " value=excluded.value", (key, value))

    @property
    def device_name(self) -> str:
        return self.get("device_name") or "device"

    @property
    def device_id(self) -> str:
        value = self.get("device_id")
        if value is None:
            raise LocalError(
                f"the terminal in {self.data_dir} is not enrolled", code=ErrorCode.NOT_ENROLLED,
                hint="enroll it with 'parley terminal enroll --server URL --code CODE'",
            )
        return value

    @property
    def server_url(self) -> str | None:
        return self.get("server_url")

    # -- pins ----------------------------------------------------------------------

    def pin(self, device_id: str) -> DevicePublicKeys | None:
        row = self.db.execute("SELECT device_id, sign, kem, kem_sig FROM pins WHERE device_id=?",
                              (device_id,)).fetchone()
        return DevicePublicKeys(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3])) \
            if row else None

    def pins(self) -> list[tuple[DevicePublicKeys, str, int]]:
        rows = self.db.execute("SELECT device_id, sign, kem, kem_sig, safety_number, verified_ms"
                               " FROM pins ORDER BY device_id")
        return [(DevicePublicKeys(r[0], bytes(r[1]), bytes(r[2]), bytes(r[3])), r[4], r[5])
                for r in rows]

    def set_pin(self, keys: DevicePublicKeys, safety_number: str, now_ms: int) -> None:
        self.db.execute(
            "INSERT INTO pins VALUES (?,?,?,?,?,?) ON CONFLICT(device_id) DO UPDATE SET"
            " sign=excluded.sign, kem=excluded.kem, kem_sig=excluded.kem_sig,"
            " safety_number=excluded.safety_number, verified_ms=excluded.verified_ms",
            (keys.device_id, keys.sign, keys.kem, keys.kem_sig, safety_number, now_ms))

    def remove_pin(self, device_id: str) -> bool:
        return self.db.execute("DELETE FROM pins WHERE device_id=?", (device_id,)).rowcount == 1

    # -- replay protection across restarts -------------------------------------------

    def seen_envelopes(self, now_ms: int) -> dict[str, int | None]:
        # Message ids were once kept for good: they are kept as long as a message is now.
        self.db.execute("UPDATE seen_envelopes SET until_ms=? WHERE until_ms IS NULL",
                        (now_ms + MAX_AGE_MS,))
        self._forget_seen(now_ms)
        return dict(self.db.execute("SELECT id, until_ms FROM seen_envelopes"))

    def remember_envelope(self, envelope_id: str, until_ms: int | None, now_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO seen_envelopes (id, until_ms) VALUES (?,?)",
                        (envelope_id, until_ms))
        if now_ms >= self._next_seen_sweep_ms:  # a line runs for years: drop what expired
            self._forget_seen(now_ms)

    def confirm_acks(self, ids: list[str]) -> None:
        """The server committed these acks: delivered again, they would be replays."""
        self.db.executemany("UPDATE seen_envelopes SET confirmed=1 WHERE id=?",
                            [(i,) for i in ids])

    def ack_confirmed(self, envelope_id: str) -> bool:
        row = self.db.execute("SELECT confirmed FROM seen_envelopes WHERE id=?",
                              (envelope_id,)).fetchone()
        return bool(row and row[0])

    def _forget_seen(self, now_ms: int) -> None:
        self.db.execute("DELETE FROM seen_envelopes WHERE until_ms IS NOT NULL AND until_ms < ?",
                        (now_ms,))
        self._next_seen_sweep_ms = now_ms + SEEN_SWEEP_MS

    # -- alarms ----------------------------------------------------------------------

    def raise_alarm(self, *, code: str, title: str, message: str, hint: str,
                    call_id: str | None, subject: str | None, now_ms: int) -> AlarmRecord:
        """Record an alarm, or count it on the same open one; the entry as it stands."""
        key = f"{code}|{call_id or ''}|{subject or ''}"
        row = self.db.execute("SELECT id FROM alarms WHERE key=? AND acked_ms IS NULL",
                              (key,)).fetchone()
        if row is None and self.db.execute(
                "SELECT COUNT(*) FROM alarms WHERE acked_ms IS NULL").fetchone()[0] \
                >= MAX_OPEN_ALARMS:
            key = f"{code}|*"  # so many open: fold the rest of this code into one
            message = f"many more alarms of this kind (the first: {message})"
            row = self.db.execute("SELECT id FROM alarms WHERE key=? AND acked_ms IS NULL",
                                  (key,)).fetchone()
        if row is not None:
            # Counted, and its first words kept: what came later cannot rewrite them.
            self.db.execute("UPDATE alarms SET count=count+1, last_ms=? WHERE id=?",
                            (now_ms, row[0]))
            ident = int(row[0])
        else:
            cur = self.db.execute(
                "INSERT INTO alarms (key, code, title, message, hint, call_id, subject,"
                " first_ms, last_ms, count) VALUES (?,?,?,?,?,?,?,?,?,1)",
                (key, code, title, message, hint, call_id, subject, now_ms, now_ms))
            ident = int(cur.lastrowid or 0)
        alarm = self.alarm(ident)
        assert alarm is not None
        return alarm

    def alarm(self, ident: int) -> AlarmRecord | None:
        row = self.db.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE id=?",
                              (ident,)).fetchone()
        return AlarmRecord(*row) if row else None

    def alarms(self, *, include_acknowledged: bool = False, limit: int = 200
               ) -> list[AlarmRecord]:
        """Open alarms (all of them), oldest first; with acknowledged ones, the latest."""
        if include_acknowledged:
            rows = self.db.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms ORDER BY id DESC"
                                   " LIMIT ?", (limit,)).fetchall()[::-1]
        else:
            rows = self.db.execute(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE acked_ms IS NULL"
                                   " ORDER BY id").fetchall()
        return [AlarmRecord(*row) for row in rows]

    def acknowledge_alarms(self, ids: list[int] | None, now_ms: int, note: str = ""
                           ) -> list[int]:
        """Acknowledge these open alarms (None: all open ones); the ids acknowledged."""
        if ids is None:
            rows = self.db.execute("SELECT id FROM alarms WHERE acked_ms IS NULL").fetchall()
            ids = [int(r[0]) for r in rows]
        done = []
        for ident in ids:
            cur = self.db.execute("UPDATE alarms SET acked_ms=?, ack_note=? WHERE id=? AND"
                                  " acked_ms IS NULL", (now_ms, note or None, ident))
            if cur.rowcount:
                done.append(ident)
        return done

    # -- devices seen in the directory -------------------------------------------------

    def seen_devices(self, party: str) -> frozenset[str]:
        return frozenset(r[0] for r in self.db.execute(
            "SELECT device_id FROM seen_devices WHERE party=?", (party,)))

    def saw_device(self, device_id: str, party: str, now_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO seen_devices VALUES (?,?,?)",
                        (device_id, party, now_ms))

    # -- call log ------------------------------------------------------------------

    def log_call(self, info: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO call_log VALUES (?,?,?) ON CONFLICT(call_id) DO UPDATE SET"
            " info=excluded.info, ended_ms=excluded.ended_ms",
            (info["call_id"], json.dumps(info), info.get("ended_ms")))

    def recent_calls(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT info FROM call_log ORDER BY rowid DESC LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in rows]

    # -- line tests (terminal.linetest) -------------------------------------------------

    def add_linetest(self, test_id: str, line: str, ended_ms: int, status: str,
                     reasons: list[str], record: dict[str, Any] | None, source: str,
                     filed: bool = False) -> bool:
        """Keep a result (record None: a test that failed before both ends signed)."""
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO linetests VALUES (?,?,?,?,?,?,?,?)",
            (test_id, line, ended_ms, status, json.dumps(reasons),
             json.dumps(record) if record is not None else None, source, int(filed)))
        return cursor.rowcount == 1

    def linetests(self, line: str, since_ms: int = 0, limit: int = 5000
                  ) -> list[dict[str, Any]]:
        """A line's results since then, oldest first."""
        rows = self.db.execute(
            "SELECT test_id, ended_ms, status, reasons, record, source, filed FROM (SELECT *"
            " FROM linetests WHERE line=? AND ended_ms>=? ORDER BY ended_ms DESC LIMIT ?)"
            " ORDER BY ended_ms", (line, since_ms, limit))
        return [{"test_id": r[0], "ended_ms": r[1], "status": r[2], "reasons": json.loads(r[3]),
                 "record": json.loads(r[4]) if r[4] else None, "source": r[5],
                 "filed": bool(r[6])} for r in rows]

    def unfiled_linetests(self) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT record FROM linetests WHERE filed=0 AND record IS NOT"
                               " NULL AND source='caller' ORDER BY ended_ms")
        return [json.loads(r[0]) for r in rows]

    def linetest_filed(self, test_id: str) -> None:
        self.db.execute("UPDATE linetests SET filed=1 WHERE test_id=?", (test_id,))

    # -- scheduled talks (terminal.talks) -----------------------------------------------

    def talk_rows(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT talk FROM talks")]

    def keep_talk(self, talk_id: str, talk: str, now_ms: int) -> None:
        self.db.execute("INSERT INTO talks VALUES (?,?,?) ON CONFLICT(talk_id) DO UPDATE SET"
                        " talk=excluded.talk, updated_ms=excluded.updated_ms",
                        (talk_id, talk, now_ms))

    def keep_pending_talk_message(self, party: str, kind: str, payload: str, now_ms: int,
                                  limit: int = 1000) -> None:
        self.db.execute("INSERT INTO talk_pending (party, kind, payload, received_ms)"
                        " VALUES (?,?,?,?)", (party, kind, payload, now_ms))
        self.db.execute("DELETE FROM talk_pending WHERE id NOT IN (SELECT id FROM"
                        " talk_pending ORDER BY id DESC LIMIT ?)", (limit,))

    def pending_talk_messages(self) -> list[tuple[int, str, str, str, int]]:
        return list(self.db.execute("SELECT id, party, kind, payload, received_ms FROM"
                                    " talk_pending ORDER BY id"))

    def drop_pending_talk_message(self, ident: int) -> None:
        self.db.execute("DELETE FROM talk_pending WHERE id=?", (ident,))

    def queue_sealed(self, device: str, kind: str, payload: str) -> None:
        self.db.execute("INSERT INTO talk_outbox (device, kind, payload) VALUES (?,?,?)",
                        (device, kind, payload))

    def queued_sealed(self) -> list[tuple[int, str, str, str]]:
        return list(self.db.execute("SELECT id, device, kind, payload FROM talk_outbox"
                                    " ORDER BY id"))

    def sent_sealed(self, ident: int) -> None:
        self.db.execute("DELETE FROM talk_outbox WHERE id=?", (ident,))

    # -- the record's log (terminal.record) ----------------------------------------------

    def append_record(self, entry: bytes) -> None:
        """Add an entry to this terminal's log (its canonical bytes: core.record)."""
        self.db.execute("INSERT INTO record_entries (entry) VALUES (?)", (entry,))

    def record_rows(self, after_seq: int = 0) -> list[tuple[int, bytes]]:
        return list(self.db.execute("SELECT seq, entry FROM record_entries WHERE seq > ?"
                                    " ORDER BY seq", (after_seq,)))

    def remind_once(self, talk_id: str, lead_ms: int, sequence: int) -> bool:
        """True the first time this reminder (of this version of the talk) is given."""
        return self.db.execute("INSERT OR IGNORE INTO talk_reminders VALUES (?,?,?)",
                               (talk_id, lead_ms, sequence)).rowcount == 1

    # -- control file ----------------------------------------------------------------

    def write_control(self, info: dict[str, Any]) -> None:
        replace_private_file(self.data_dir / CONTROL_FILE, json.dumps(info).encode())

    def remove_control(self) -> None:
        (self.data_dir / CONTROL_FILE).unlink(missing_ok=True)

    def read_control(self) -> dict[str, Any] | None:
        path = self.data_dir / CONTROL_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None
