from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from parley.lab_postgres import PostgresCluster
from parley.media.ice import use_host_addresses
from tests.harness import LocalLine, close_websockets


@pytest.fixture(autouse=True, scope="session")
def loopback_ice() -> None:
    # aioice offers no 127.0.0.1 candidate by default; tests talk over loopback only.
    use_host_addresses(["127.0.0.1"])


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[LocalLine]:
    local = LocalLine(tmp_path)
    await local.start()
    try:
        yield local
    finally:
        await local.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        try:
            yield session
        finally:
            await close_websockets(session)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, for the whole run (parley.lab_postgres)."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres: PostgresCluster) -> str:
    """A new, empty PostgreSQL database of this test's own."""
    return postgres.new_database()
