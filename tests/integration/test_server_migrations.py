"""The server's schema brought up to date at open, from every version it ever had, on
SQLite and on PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from parley.core.errors import LocalError
from parley.server.store import MIGRATIONS, SCHEMA_VERSION, ServerStore, _postgres_ddl

ROWS = ["INSERT INTO principals VALUES ('moscow', 'The Kremlin', 'Europe/Moscow', 1)",
        "INSERT INTO principals VALUES ('washington', 'The White House', 'UTC', 1)",
        "INSERT INTO lines (a, b, created_ms) VALUES ('moscow', 'washington', 2)"]


def _old_sqlite(path: Path, version: int) -> ServerStore:
    """A database as the server of schema `version` left it, with a line in it; opened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    for migration in MIGRATIONS[:version]:
        db.executescript(migration)
    for row in ROWS:
        db.execute(row)
    db.execute(f"PRAGMA user_version={version}")
    db.commit()
    db.close()
    path.chmod(0o600)
    return ServerStore(path)


def _old_postgres(url: str, version: int) -> ServerStore:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE parley_schema (one INTEGER PRIMARY KEY CHECK (one = 1),"
                   " version INTEGER NOT NULL)")
        for migration in MIGRATIONS[:version]:
            for statement in _postgres_ddl(migration):
                db.execute(statement)
        for row in ROWS:
            db.execute(row)
        db.execute("INSERT INTO parley_schema VALUES (1, %s)", (version,))
    return ServerStore(url=url)


def _schema_version(store: ServerStore) -> int:
    if store.backend.name == "sqlite":
        return int(store.db.execute("PRAGMA user_version").fetchone()[0])
    return int(store.db.execute("SELECT version FROM parley_schema").fetchone()[0])


@pytest.fixture(params=["sqlite", "postgresql"])
def old(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Makes a database of an earlier schema version, of each kind, and opens it."""
    if request.param == "sqlite":
        return lambda version: _old_sqlite(tmp_path / "server" / "server.db", version)
    url = request.getfixturevalue("pg_url")
    return lambda version: _old_postgres(url, version)


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_database_of_any_earlier_version_is_upgraded_and_keeps_its_lines(
        old, version: int) -> None:  # type: ignore[no-untyped-def]
    store = old(version)
    try:
        assert _schema_version(store) == SCHEMA_VERSION
        assert store.lines() == [("moscow", "washington")]
        assert store.may_talk("washington", "moscow")
        assert store.line_media("moscow", "washington") == "any"  # version 5's default
        before = store.directory_version()  # version 6's counter, from zero
        store.set_line_media("washington", "moscow", "relay")
        assert store.line_media("moscow", "washington") == "relay"
        assert store.directory_version() == before + 1
        assert store.principal("moscow") is not None
        where = store.where
    finally:
        store.close()
    # ... and opening it again changes nothing.
    again = ServerStore(url=where) if where.startswith("postgresql") else ServerStore(
        Path(where))
    try:
        assert again.line_media("washington", "moscow") == "relay"
        assert _schema_version(again) == SCHEMA_VERSION
    finally:
        again.close()


def test_a_database_from_a_newer_parley_is_refused_with_what_to_do(old) -> None:  # type: ignore[no-untyped-def]
    store = old(SCHEMA_VERSION)
    where = store.where
    if store.backend.name == "sqlite":
        store.db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    else:
        store.db.execute("UPDATE parley_schema SET version = %s", (SCHEMA_VERSION + 1,))
    store.close()
    with pytest.raises(LocalError) as refused:
        ServerStore(url=where) if where.startswith("postgresql") else ServerStore(Path(where))
    assert "newer Parley" in (refused.value.hint or "")


def test_nodes_starting_together_on_a_new_postgresql_bring_its_schema_up_once(
        pg_url: str) -> None:
    stores: list[ServerStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(ServerStore(url=pg_url))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == [] and len(stores) == 4
        assert all(_schema_version(s) == SCHEMA_VERSION for s in stores)
        assert stores[0].directory_version() == 0  # migration 6's one row, once
        assert stores[0].db.execute("SELECT count(*) FROM directory").fetchone()[0] == 1
    finally:
        for s in stores:
            s.close()
