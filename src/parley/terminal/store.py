"""A terminal's local state: its key file, identity, pins and call log.

Layout of a terminal's data directory (mode 0700)::

    device.key     the private keys, mode 0600, written once at `init`
    terminal.db    SQLite: identity, pinned peer keys, call log
    control.json   while running: the local UI's URL and per-start token (0600)

Pins are the heart of verification: a pin records the exact public keys of a
peer device that this terminal's operator verified by comparing the safety
number out of band. They are never sent to the server.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from parley.core.errors import ErrorCode, LocalError
from parley.core.keys import DeviceKeys, DevicePublicKeys, check_name

KEY_FILE = "device.key"
DB_FILE = "terminal.db"
CONTROL_FILE = "control.json"
SEEN_SWEEP_MS = 60_000  # how often expired envelope ids are dropped from the replay table

SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pins (
    device_id TEXT PRIMARY KEY, sign BLOB NOT NULL, kem BLOB NOT NULL, kem_sig BLOB NOT NULL,
    safety_number TEXT NOT NULL, verified_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen_envelopes (id TEXT PRIMARY KEY, until_ms INTEGER);
CREATE TABLE IF NOT EXISTS call_log (
    call_id TEXT PRIMARY KEY, info TEXT NOT NULL, ended_ms INTEGER
);
"""


def write_private_file(path: Path, data: bytes) -> None:
    """Create `path` with mode 0600 (never briefly wider), flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, data)
    os.replace(tmp, path)


class TerminalStore:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        if not (data_dir / KEY_FILE).exists():
            raise LocalError(
                f"no terminal in {data_dir}", code=ErrorCode.NOT_ENROLLED,
                hint=f"create one with 'parley terminal init --data {data_dir} --name NAME'",
            )
        self.db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None, timeout=10.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._next_seen_sweep_ms = 0

    @classmethod
    def init(cls, data_dir: Path, device_name: str) -> TerminalStore:
        """Generate this device's keys. Refuses to overwrite an existing terminal."""
        check_name(device_name, what="device name")
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data_dir, 0o700)
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

    def close(self) -> None:
        self.db.close()

    def load_keys(self) -> DeviceKeys:
        path = self.data_dir / KEY_FILE
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise LocalError(
                f"{path} is readable by others (mode {mode:o})", code=ErrorCode.BAD_CONFIG,
                hint=f"run 'chmod 600 {path}' and check who may have copied it",
            )
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
        self._forget_seen(now_ms)
        return dict(self.db.execute("SELECT id, until_ms FROM seen_envelopes"))

    def remember_envelope(self, envelope_id: str, until_ms: int | None, now_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO seen_envelopes VALUES (?,?)",
                        (envelope_id, until_ms))
        if now_ms >= self._next_seen_sweep_ms:  # a line runs for years: drop what expired
            self._forget_seen(now_ms)

    def _forget_seen(self, now_ms: int) -> None:
        self.db.execute("DELETE FROM seen_envelopes WHERE until_ms IS NOT NULL AND until_ms < ?",
                        (now_ms,))
        self._next_seen_sweep_ms = now_ms + SEEN_SWEEP_MS

    # -- call log ------------------------------------------------------------------

    def log_call(self, info: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO call_log VALUES (?,?,?) ON CONFLICT(call_id) DO UPDATE SET"
            " info=excluded.info, ended_ms=excluded.ended_ms",
            (info["call_id"], json.dumps(info), info.get("ended_ms")))

    def recent_calls(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT info FROM call_log ORDER BY rowid DESC LIMIT ?", (limit,))
        return [json.loads(r[0]) for r in rows]

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
