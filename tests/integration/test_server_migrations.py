"""The server's schema brought up to date at open, from every version it ever had."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from parley.core.errors import LocalError
from parley.server.store import MIGRATIONS, SCHEMA_VERSION, ServerStore


def _old_database(path: Path, version: int) -> None:
    """A database as the server of schema `version` left it, with a line in it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:version]:
        db.executescript(migration)
    db.execute("INSERT INTO principals VALUES ('moscow', 'The Kremlin', 'Europe/Moscow', 1)")
    db.execute("INSERT INTO principals VALUES ('washington', 'The White House', 'UTC', 1)")
    db.execute("INSERT INTO lines (a, b, created_ms) VALUES ('moscow', 'washington', 2)")
    db.execute(f"PRAGMA user_version={version}")
    db.commit()
    db.close()
    path.chmod(0o600)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_database_of_any_earlier_version_is_upgraded_and_keeps_its_lines(
        tmp_path: Path, version: int) -> None:
    path = tmp_path / "server" / "server.db"
    _old_database(path, version)
    store = ServerStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.lines() == [("moscow", "washington")]
        assert store.may_talk("washington", "moscow")
        assert store.line_media("moscow", "washington") == "any"  # version 5's default
        store.set_line_media("washington", "moscow", "relay")
        assert store.line_media("moscow", "washington") == "relay"
        assert store.principal("moscow") is not None
    finally:
        store.close()
    again = ServerStore(path)  # and opening it again changes nothing
    try:
        assert again.line_media("washington", "moscow") == "relay"
    finally:
        again.close()


def test_a_database_from_a_newer_parley_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "server" / "server.db"
    _old_database(path, SCHEMA_VERSION)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(LocalError) as refused:
        ServerStore(path)
    assert "newer Parley" in refused.value.hint
