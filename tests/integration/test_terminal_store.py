"""The terminal's own SQLite store: what it keeps, and what it lets go of."""

from __future__ import annotations

from parley.core.messages import MAX_AGE_MS
from parley.terminal.store import SEEN_SWEEP_MS, TerminalStore
from tests.harness import LocalLine


async def test_expired_envelope_ids_leave_the_replay_table_while_the_terminal_runs(
        line: LocalLine) -> None:
    await line.provision()
    store = TerminalStore(line.root / "washington")
    try:
        t0 = 1_800_000_000_000
        # (An id once kept for good, as message ids were: kept a message's lifetime now.)
        store.remember_envelope("kept-for-good", None, t0)
        store.remember_envelope("call-1", t0 + 1_000, t0)
        store.remember_envelope("call-2", t0 + 1_000, t0 + 2_000)  # expired, but no sweep yet
        assert set(store.seen_envelopes(t0)) == {"kept-for-good", "call-1", "call-2"}
        # seen_envelopes swept at t0; the next sweep is due SEEN_SWEEP_MS later.
        later = t0 + SEEN_SWEEP_MS
        store.remember_envelope("call-3", later + 1_000, later)
        rows = dict(store.db.execute("SELECT id, until_ms FROM seen_envelopes"))
        assert rows == {"kept-for-good": t0 + MAX_AGE_MS, "call-3": later + 1_000}
        assert set(store.seen_envelopes(t0 + MAX_AGE_MS + 1)) == set()
    finally:
        store.close()
