"""The server's store, the same tests on both backends: SQLite and a real PostgreSQL.

Everything the relay, the line board, the alerter and the administration
commands ask of it: parties and lines, one-time codes and the devices they
enroll (never overwritten, replaced or revoked by the operator only, every
change logged), the directory counter every node watches, the mailbox and its
group commit, what was acknowledged, line tests, line states and alerts.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.keys import DeviceKeys
from parley.server.store import ServerStore, mailbox_lock, open_store, redact

T0 = 1_700_000_000_000


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The --database URL of a new, empty store of each kind."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def store(backend: str | None, tmp_path: Path) -> Iterator[ServerStore]:
    opened = open_store(backend, tmp_path / "server")
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def other(store: ServerStore, backend: str | None, tmp_path: Path) -> Iterator[ServerStore]:
    second = open_store(backend, tmp_path / "server")
    try:
        yield second
    finally:
        second.close()


def _line(store: ServerStore) -> None:
    store.add_principal("washington", "The White House", "America/New_York", T0)
    store.add_principal("moscow", "The Kremlin", "Europe/Moscow", T0)
    store.add_line("washington", "moscow", T0)


def _keys() -> dict[str, object]:
    public = DeviceKeys.generate().public("x/x").to_json()
    return {k: public[k] for k in ("sign", "kem", "kem_sig")}


def _enrolled(store: ServerStore, party: str, name: str) -> str:
    code = store.create_enroll_code(party, 60_000, T0)
    return store.enroll(code, name, _keys(), T0 + 1).device_id


# -- parties and lines ---------------------------------------------------------------

def test_parties_and_lines(store: ServerStore) -> None:
    _line(store)
    assert [p.name for p in store.principals()] == ["moscow", "washington"]
    assert store.principal("moscow").display == "The Kremlin"  # type: ignore[union-attr]
    assert store.principal("london") is None
    with pytest.raises(LocalError, match="already exists"):
        store.add_principal("moscow", "", "UTC", T0)
    with pytest.raises(LocalError) as no_party:
        store.add_line("washington", "london", T0)
    assert no_party.value.code is ErrorCode.UNKNOWN_PARTY
    store.add_line("moscow", "washington", T0)  # the same line, either way round: no-op
    assert store.lines() == [("moscow", "washington")]
    assert store.may_talk("moscow", "washington") and store.may_talk("washington", "moscow")
    store.add_principal("london", "", "Europe/London", T0)
    assert not store.may_talk("london", "moscow")
    assert store.line_peers("moscow") == ["washington"]
    assert store.line_media("washington", "moscow") == "any"
    store.set_line_media("moscow", "washington", "relay")
    assert store.line_media("washington", "moscow") == "relay"
    with pytest.raises(LocalError) as no_line:
        store.set_line_media("london", "moscow", "relay")
    assert no_line.value.code is ErrorCode.NO_LINE
    with pytest.raises(LocalError, match="unknown media policy"):
        store.set_line_media("moscow", "washington", "carrier-pigeon")


def test_a_line_between_names_that_sort_apart_by_locale(store: ServerStore) -> None:
    """A line's parties are kept in code-point order (CHECK a < b), whatever the
    database's locale would say ('a-x' comes after 'a_x' in en-US)."""
    store.add_principal("ab-x", "", "UTC", T0)
    store.add_principal("ab_x", "", "UTC", T0)
    store.add_line("ab_x", "ab-x", T0)
    assert store.lines() == [("ab-x", "ab_x")]
    assert store.may_talk("ab_x", "ab-x") and store.line_peers("ab_x") == ["ab-x"]
    assert [p.name for p in store.principals()] == ["ab-x", "ab_x"]


def test_an_envelope_id_with_a_nul_is_refused_by_either_store(store: ServerStore) -> None:
    with pytest.raises(RemoteError) as refused:
        store.store_envelope("e\x00", "washington/desk", "moscow/desk", "{}", T0)
    assert refused.value.code is ErrorCode.BAD_MESSAGE
    store.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
    with pytest.raises(RemoteError):
        store.delivered("moscow/desk", "e1\x00")
    store.commit_group()  # the group was not harmed
    assert [r[1] for r in store.pending("moscow/desk", 0, 10)] == ["e1"]


def test_every_change_of_the_directory_moves_its_counter_for_every_connection(
        store: ServerStore, other: ServerStore) -> None:
    seen = [other.directory_version()]

    def moved() -> bool:
        now = other.directory_version()
        changed = now != seen[-1]
        seen.append(now)
        return changed

    store.add_principal("washington", "", "UTC", T0)
    assert moved()
    store.add_principal("moscow", "", "UTC", T0)
    store.add_line("washington", "moscow", T0)
    assert moved()
    store.add_line("moscow", "washington", T0)  # already open: nothing changed
    assert not moved()
    store.set_line_media("moscow", "washington", "relay")
    assert moved()
    device = _enrolled(store, "moscow", "desk")
    assert moved()
    code = store.replace_device(device, 60_000, T0 + 2, "lost")
    assert moved()
    store.enroll(code, "desk", _keys(), T0 + 3)
    assert moved()
    store.revoke_device(device, T0 + 4, "gone")
    assert moved()
    store.create_enroll_code("moscow", 60_000, T0)  # a code is not the directory
    assert not moved()


# -- enrollment ------------------------------------------------------------------------

def test_a_code_enrolls_one_new_device_once(store: ServerStore, other: ServerStore) -> None:
    _line(store)
    code = store.create_enroll_code("moscow", 60_000, T0)
    public = store.enroll(code, "desk", _keys(), T0 + 1, source="127.0.0.1")
    assert public.device_id == "moscow/desk"
    assert other.device("moscow/desk") == public  # committed: another connection sees it
    assert [d.device_id for d in other.devices("moscow")] == ["moscow/desk"]
    assert other.device_keys() == {"moscow/desk": public.sign}
    with pytest.raises(RemoteError) as used:
        store.enroll(code, "laptop", _keys(), T0 + 2)
    assert used.value.code is ErrorCode.ENROLL_CODE_USED
    with pytest.raises(RemoteError) as invalid:
        store.enroll("AAAA-BBBB-CCCC", "laptop", _keys(), T0 + 2)
    assert invalid.value.code is ErrorCode.ENROLL_CODE_INVALID
    late = store.create_enroll_code("moscow", 1_000, T0)
    with pytest.raises(RemoteError) as expired:
        store.enroll(late, "laptop", _keys(), T0 + 1_001)
    assert expired.value.code is ErrorCode.ENROLL_CODE_EXPIRED
    # Spelled as a person types it: lower case, without dashes.
    typed = store.create_enroll_code("moscow", 60_000, T0)
    assert store.enroll(typed.lower().replace("-", " "), "laptop", _keys(),
                        T0 + 5).device_id == "moscow/laptop"
    assert [e.action for e in store.device_log()] == ["enrolled", "enrolled"]


def test_an_enrollment_never_takes_over_a_device_and_the_attempt_is_logged(
        store: ServerStore) -> None:
    _line(store)
    first = _enrolled(store, "moscow", "desk")
    keys_before = store.device(first)
    code = store.create_enroll_code("moscow", 60_000, T0)
    with pytest.raises(RemoteError) as taken:
        store.enroll(code, "desk", _keys(), T0 + 2, source="192.0.2.7")
    assert taken.value.code is ErrorCode.DEVICE_EXISTS
    assert store.device(first) == keys_before
    refused = store.device_log()[-1]
    assert (refused.action, refused.device) == ("refused", "moscow/desk")
    assert "192.0.2.7" in refused.detail
    # The code was not spent by the refused attempt.
    assert store.enroll(code, "laptop", _keys(), T0 + 3).device_id == "moscow/laptop"


def test_replace_and_revoke(store: ServerStore) -> None:
    _line(store)
    device = _enrolled(store, "moscow", "desk")
    old = store.device(device)
    store.store_envelope("e1", "washington/desk", device, "{}", T0)
    store.commit_group()
    first = store.replace_device(device, 60_000, T0 + 2, "laptop lost")
    assert store.device(device) is None and store.revoked(device)
    assert store.pending(device, 0, 10) == []  # sealed to the revoked keys: dropped
    second = store.replace_device(device, 60_000, T0 + 3, "")  # only the latest code works
    with pytest.raises(RemoteError):
        store.enroll(first, "desk", _keys(), T0 + 4)
    with pytest.raises(RemoteError, match="replaces moscow/desk"):
        store.enroll(second, "other", _keys(), T0 + 4)
    new = store.enroll(second, "desk", _keys(), T0 + 5)
    assert new.device_id == device and not new.same_keys(old)  # type: ignore[arg-type]
    assert not store.revoked(device)
    records = {r.device_id: r for r in store.device_records()}
    assert records[device].revoked_ms is None and records[device].fingerprint == new.fingerprint
    store.revoke_device(device, T0 + 6, "retired")
    assert store.device(device) is None
    assert store.devices("moscow") == []
    with pytest.raises(LocalError, match="revoked already"):
        store.revoke_device(device, T0 + 7, "")
    with pytest.raises(LocalError) as unknown:
        store.revoke_device("moscow/nothing", T0, "")
    assert unknown.value.code is ErrorCode.UNKNOWN_DEVICE
    assert [e.action for e in store.device_log()] == [
        "enrolled", "replace", "replace", "replaced", "revoked"]


def test_unspent_codes_and_cancelling_one(store: ServerStore) -> None:
    _line(store)
    code = store.create_enroll_code("moscow", 60_000, T0)
    store.create_enroll_code("washington", 1_000, T0)
    assert [c[0] for c in store.unspent_codes(T0 + 10)] == ["moscow", "washington"]
    assert [c[0] for c in store.unspent_codes(T0 + 5_000)] == ["moscow"]  # one expired
    assert store.cancel_code(code, T0 + 1) == "moscow"
    assert store.unspent_codes(T0 + 10) == [("washington", None, T0, T0 + 1_000)]
    with pytest.raises(LocalError, match="no unspent code"):
        store.cancel_code(code, T0 + 2)
    with pytest.raises(RemoteError):
        store.enroll(code, "desk", _keys(), T0 + 3)
    with pytest.raises(LocalError) as no_party:
        store.create_enroll_code("london", 60_000, T0)
    assert no_party.value.code is ErrorCode.UNKNOWN_PARTY


# -- the mailbox ---------------------------------------------------------------------------

def test_the_mailbox_stores_once_delivers_in_order_and_remembers_what_was_acked(
        store: ServerStore) -> None:
    to = "moscow/desk"
    seqs = [store.store_envelope(f"e{i}", "washington/desk", to, f'{{"n":{i}}}', T0 + i)
            for i in range(5)]
    assert all(s is not None for s in seqs) and seqs == sorted(seqs)
    assert store.store_envelope("e1", "washington/desk", to, "{}", T0) is None  # once
    store.commit_group()
    rows = store.pending(to, 0, 3)
    assert [r[1] for r in rows] == ["e0", "e1", "e2"] and rows[1][2] == '{"n":1}'
    assert [r[1] for r in store.pending(to, rows[-1][0], 10)] == ["e3", "e4"]
    assert store.pending("washington/desk", 0, 10) == []
    assert store.mailbox_usage() == [(to, "washington/desk", 5, 5 * len('{"n":0}'))]
    assert store.waiting(to, "e1") and not store.was_delivered(to, "e1")
    assert store.delivered(to, "e1") == ("washington/desk", len('{"n":1}'))
    assert store.delivered(to, "e1") is None  # once
    assert store.delivered(to, "unknown") is None
    store.commit_group()
    assert not store.waiting(to, "e1") and store.was_delivered(to, "e1")
    # Sent again by a sender that never heard "sent": not stored a second time.
    assert store.store_envelope("e1", "washington/desk", to, "{}", T0 + 9) is None
    assert [r[1] for r in store.pending(to, 0, 10)] == ["e0", "e2", "e3", "e4"]
    assert not store.was_delivered("london/desk", "e1")  # per recipient
    assert store.forget_acked(T0 + 1) == 0  # e1 was stored at T0+1: kept
    assert store.forget_acked(T0 + 2) == 1
    store.commit_group()
    assert not store.was_delivered(to, "e1")


def test_the_mailbox_group_is_seen_by_others_only_once_committed(
        store: ServerStore, other: ServerStore) -> None:
    store.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
    assert store.group_open
    assert other.pending("moscow/desk", 0, 10) == []
    with pytest.raises(RuntimeError, match="commit the group first"), store.transaction():
        pass
    store.commit_group()
    assert not store.group_open
    assert [r[1] for r in other.pending("moscow/desk", 0, 10)] == ["e1"]
    # Stored by another connection meanwhile: once, whichever stored it first.
    assert other.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0) is None
    other.commit_group()


def test_a_postgresql_group_that_failed_is_an_error_never_a_silent_success(
        pg_url: str) -> None:
    """PostgreSQL turns COMMIT after a failed statement into a ROLLBACK without an error:
    the store must not report that as stored (SQLite keeps such a transaction going)."""
    store, other = ServerStore(url=pg_url), ServerStore(url=pg_url)
    try:
        store.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
        with pytest.raises(store.Error):  # any statement of the group that fails
            store._q("SELECT 1 / 0")
        with pytest.raises(store.Error, match="rolled back"):
            store.commit_group()
        assert not store.group_open
        assert other.pending("moscow/desk", 0, 10) == []  # nothing of the group was kept
        assert store.pending("moscow/desk", 0, 10) == []  # and the store goes on
    finally:
        store.close()
        other.close()


def test_an_envelope_acknowledged_on_one_node_is_not_stored_again_by_another(
        pg_url: str) -> None:
    """Two nodes: one deletes an acknowledged envelope in its open group while the sender,
    failing over, sends it again to the other. Without the mailbox lock the other's
    check of `acked` reads a snapshot from before the first commits, and stores -- and
    delivers -- it a second time; with it, the second waits and sees the ack."""
    node1, node2 = ServerStore(url=pg_url), ServerStore(url=pg_url)
    row = ("e1", "washington/desk", "moscow/desk", "{}", T0)
    try:
        assert node1.store_envelopes([row])
        node1.commit_group()
        node1.lock_mailboxes(["moscow/desk"])
        assert [r[1] for r in node1.delivered_many([("moscow/desk", "e1")])] == ["e1"]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            def again() -> tuple[dict[tuple[str, str], int], list[tuple[str, str, str, int]]]:
                node2.lock_mailboxes(["moscow/desk", "washington/desk"])
                return (node2.store_envelopes([row]),
                        node2.delivered_many([("moscow/desk", "e1")]))
            second = pool.submit(again)
            time.sleep(0.5)
            assert not second.done()  # waits for node 1's group
            node1.commit_group()
            assert second.result(timeout=10) == ({}, [])  # acknowledged: neither again
        node2.commit_group()
        assert node2.pending("moscow/desk", 0, 10) == []
        assert node2.was_delivered("moscow/desk", "e1")
    finally:
        node1.close()
        node2.close()


def test_two_nodes_wanting_each_other_s_mailboxes_never_deadlock(pg_url: str) -> None:
    """Node 1 holds mailbox A and wants B; node 2 holds B and wants A (turns that write to
    both, in two orders). The one that cannot take a lock at once commits what it holds
    and then waits: both go through, neither is failed as a deadlock."""
    node1, node2 = ServerStore(url=pg_url), ServerStore(url=pg_url)
    a, b = "moscow/desk", "washington/desk"
    assert mailbox_lock(a) != mailbox_lock(b)
    try:
        node1.lock_mailboxes([a])
        assert node1.store_envelopes([("e1", b, a, "{}", T0)])
        node2.lock_mailboxes([b])
        assert node2.store_envelopes([("e2", a, b, "{}", T0)])
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            def wants_b() -> dict[tuple[str, str], int]:
                node1.lock_mailboxes([b])  # commits e1 first, then waits for node 2
                return node1.store_envelopes([("e3", a, b, "{}", T0)])
            first = pool.submit(wants_b)
            time.sleep(0.5)
            node2.lock_mailboxes([a])  # free now: taken at once
            assert node2.store_envelopes([("e4", b, a, "{}", T0)])
            node2.commit_group()
            assert first.result(timeout=10)
        node1.commit_group()
        assert [r[1] for r in node1.pending(a, 0, 10)] == ["e1", "e4"]
        assert [r[1] for r in node1.pending(b, 0, 10)] == ["e2", "e3"]
    finally:
        node1.close()
        node2.close()


def test_a_node_waits_on_another_s_mailbox_lock_a_few_seconds_at_most(pg_url: str) -> None:
    """A node holding a mailbox (stuck mid-turn) fails the other's turn after the lock
    timeout instead of holding its event loop; the other then carries on."""
    node1, node2 = ServerStore(url=pg_url), ServerStore(url=pg_url)
    try:
        node1.lock_mailboxes(["moscow/desk"])
        started = time.monotonic()
        assert node2.store_envelopes([("e0", "washington/desk", "london/desk", "{}", T0)])
        with pytest.raises(node2.Error, match="lock timeout"):
            node2.lock_mailboxes(["moscow/desk"])
        assert 4 < time.monotonic() - started < 15
        # Its group was committed before the wait (e0 is kept); the one that waited is
        # lost, and the store says so once, for whoever did not hear the error.
        assert [r[1] for r in node1.pending("london/desk", 0, 10)] == ["e0"]
        assert isinstance(node2.take_lost(), node2.Error) and node2.take_lost() is None
        node2.backend.rollback()  # what the server's failed commit does
        node1.commit_group()
        node2.lock_mailboxes(["moscow/desk"])
        assert node2.store_envelopes([("e1", "washington/desk", "moscow/desk", "{}", T0)])
        node2.commit_group()
    finally:
        node1.close()
        node2.close()


def test_a_postgresql_group_whose_connection_was_lost_fails_its_commit(pg_url: str) -> None:
    """A broken connection forgets its transaction: the store must not, or a group lost
    with it would be 'committed' (nothing to commit) and its "stored" replies sent."""
    store, other = ServerStore(url=pg_url), ServerStore(url=pg_url)
    try:
        store.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
        other.db.execute("SELECT pg_terminate_backend(%s)", (store.db.info.backend_pid,))
        with pytest.raises(store.Error):
            store.store_envelope("e2", "washington/desk", "moscow/desk", "{}", T0)
        assert store.group_open
        with pytest.raises(store.Error, match="lost with this transaction"):
            store.commit_group()
        assert not store.group_open
        assert other.pending("moscow/desk", 0, 10) == []
        # The next use connects again, and the sender's second try is stored.
        assert store.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
        store.commit_group()
        assert [r[1] for r in other.pending("moscow/desk", 0, 10)] == ["e1"]
    finally:
        store.close()
        other.close()


def test_what_was_committed_is_there_after_reopening(backend: str | None,
                                                      tmp_path: Path) -> None:
    first = open_store(backend, tmp_path / "server")
    _line(first)
    _enrolled(first, "moscow", "desk")
    first.store_envelope("e1", "washington/desk", "moscow/desk", "{}", T0)
    first.close()  # commits the open group
    again = open_store(backend, tmp_path / "server")
    try:
        assert again.lines() == [("moscow", "washington")]
        assert again.device("moscow/desk") is not None
        assert [r[1] for r in again.pending("moscow/desk", 0, 10)] == ["e1"]
        again.check()
    finally:
        again.close()


# -- line tests, line states, alerts ---------------------------------------------------

def _record(test_id: str, ended_ms: int) -> dict[str, object]:
    return {"test_id": test_id, "line": "moscow~washington", "caller": "moscow/test",
            "callee": "washington/test", "ended_ms": ended_ms, "figures": {"rtt_ms": 12.5}}


def test_line_tests_and_states(store: ServerStore) -> None:
    assert store.add_linetest(_record("t1", T0), T0 + 5, "green", [])
    assert not store.add_linetest(_record("t1", T0), T0 + 6, "green", [])  # filed once
    assert store.add_linetest(_record("t2", T0 + 100), T0 + 105, "amber", ["loss 3 %"])
    last = store.last_linetest("moscow~washington")
    assert last is not None and last[0]["test_id"] == "t2" and last[1:] == ("amber",
                                                                             ["loss 3 %"])
    assert last[0]["figures"] == {"rtt_ms": 12.5}
    assert [r[0]["test_id"] for r in store.linetest_history("moscow~washington", 0)] == [
        "t1", "t2"]
    assert [r[0]["test_id"] for r in store.linetest_history("moscow~washington", 0,
                                                            limit=1)] == ["t2"]
    assert store.last_linetest("london~moscow") is None
    store.set_line_state("moscow~washington", "amber", ["loss 3 %"], T0 + 105)
    store.set_line_state("moscow~washington", "green", [], T0 + 200)
    assert store.line_states() == {"moscow~washington": ("green", [], T0 + 200)}
    assert store.forget_linetests(T0 + 1) == 1
    assert [r[0]["test_id"] for r in store.linetest_history("moscow~washington", 0)] == ["t2"]


def test_alerts_wait_until_delivered(store: ServerStore) -> None:
    assert store.next_alert_ms() is None and store.alerts_waiting() == 0
    store.queue_alert("http://127.0.0.1:9/hook", b'{"status":"red"}', T0)
    store.queue_alert("http://127.0.0.1:9/hook", b'{"status":"green"}', T0 + 1)
    waiting = store.pending_alerts()
    assert [(w[1], bytes(w[2]), w[3]) for w in waiting] == [
        ("http://127.0.0.1:9/hook", b'{"status":"red"}', 0),
        ("http://127.0.0.1:9/hook", b'{"status":"green"}', 0)]
    store.alert_failed(waiting[0][0], T0 + 60_000, "connection refused " * 50)
    assert store.next_alert_ms() == T0 + 1
    store.alert_done(waiting[1][0])
    assert store.next_alert_ms() == T0 + 60_000
    (retry,) = store.pending_alerts()
    assert retry[3] == 1 and store.alerts_waiting() == 1


def test_an_unknown_database_url_is_refused_with_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(LocalError) as refused:
        open_store("mysql://root:hunter2@db/parley", tmp_path)
    assert "hunter2" not in refused.value.message
    assert "postgresql://" in (refused.value.hint or "")


def test_a_database_url_is_logged_without_any_password() -> None:
    assert redact("postgresql://parley:s3cret@db:5432/line") == "postgresql://parley:***@db:5432/line"
    shown = redact("postgresql://parley@db/line?sslmode=require&password=s3cret&sslpassword=k")
    assert "s3cret" not in shown and "=k" not in shown and "sslmode=require" in shown
    assert redact("postgresql://parley@db/line") == "postgresql://parley@db/line"


def test_an_unreachable_postgresql_is_a_clear_error_without_the_password() -> None:
    with pytest.raises(LocalError) as refused:
        ServerStore(url="postgresql://parley:s3cret@127.0.0.1:9/parley")
    assert "cannot reach the database" in refused.value.message
    assert "s3cret" not in refused.value.message and "***" in refused.value.message
    assert ".pgpass" in (refused.value.hint or "")
