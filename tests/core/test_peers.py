"""What nodes tell each other (core.relay.peers), and the relay acting on it.

Events are read from the database, which any role with access can NOTIFY into:
each field is checked, and what does not parse is an error, never a crash. The
doorbell is tested against the real SQLite store with envelopes committed out
of the order of their mailbox positions, as two nodes commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.core.errors import RemoteError
from parley.core.relay import peers
from tests.core.test_relay import Line, M, W


@given(st.text(max_size=32), st.integers(0, 2**63 - 1), st.integers(1, 2**31))
def test_an_acked_event_carries_any_envelope_id_through(ident: str, size: int, node: int
                                                        ) -> None:
    line = peers.encode_event(peers.ACKED, node, "moscow/desk", "washington/desk", size,
                              peers.encode_ident(ident))
    assert "\n" not in line
    event = peers.parse_event(line)
    assert (event.kind, event.node, event.size, event.ident) == (peers.ACKED, node, size, ident)


@given(st.text(max_size=300))
def test_whatever_arrives_parses_or_is_refused(text: str) -> None:
    try:
        event = peers.parse_event(text)
    except RemoteError:
        return
    assert event.kind in peers._FIELDS


@pytest.mark.parametrize("junk, why", [
    ("", "unknown event kind"),
    ("q 1 2", "unknown event kind"),
    ("m 1 2 moscow/desk washington/desk", "has 3 fields, not 4"),
    ("m -1 2 moscow/desk washington/desk 3", "node"),
    ("m 1 2 moscow/desk washington/desk 99999999999999999999", "size"),
    ("s 1 2 sid moscow/desk 2", "receive is 0 or 1"),
    ("x 1 sid mos\tcow", "bad device"),
    ("a 1 moscow/desk washington/desk 3 %%%", "bad envelope id"),
    ("l 1 " + "a" * 1100, "at most 1024"),
])
def test_a_bad_event_says_what_is_wrong(junk: str, why: str) -> None:
    with pytest.raises(RemoteError, match=why):
        peers.parse_event(junk)


def test_an_envelope_committed_after_a_later_one_still_rings_through(tmp_path: Path) -> None:
    """Two nodes commit in their own order: the doorbell for position 5 may come after
    the recipient was sent position 10. It is sent, once, and 10 is not sent again."""
    line = Line(tmp_path)
    session, port = line.login(M)
    port.take()
    db = line.store.db

    def stored(seq: int) -> dict[str, object]:
        frame = {"t": "deliver", "env": line.envelope(W, M, n=seq)}
        db.execute("INSERT INTO mailbox (seq, id, recipient, sender, body, stored_ms)"
                   " VALUES (?,?,?,?,?,?)", (seq, frame["env"]["id"], M, W,  # type: ignore[index]
                                              json.dumps(frame), line.now))
        db.commit()
        return frame

    later = stored(10)
    line.relay.ring(M, 10)
    assert port.take() == [later]
    assert session.cursor == 10
    earlier = stored(5)
    line.relay.ring(M, 5)
    assert port.take() == [earlier]  # and not `later` again
    line.relay.ring(M, 10)  # a doorbell heard twice sends nothing twice
    assert port.take() == []


def test_an_envelope_id_the_store_cannot_keep_is_refused_and_the_turn_goes_on(
        tmp_path: Path) -> None:
    """A lone surrogate (JSON spells it \\ud800) or a NUL in an id is refused at once: it
    never reaches the turn's one statement, where it would fail everyone's envelopes."""
    line = Line(tmp_path)
    session, port = line.login(W)
    good = line.envelope(W, M, n=1)
    bad = {**line.envelope(W, M, n=2), "id": "x\ud800"}
    raw = "\n".join([json.dumps({"t": "send", "env": bad, "ref": "bad"}),
                     json.dumps({"t": "ack", "id": "y\ud800"}),
                     json.dumps({"t": "send", "env": good, "ref": "good"})])
    line.relay.receive(session, raw, line.now)
    line.commit()
    frames = port.take()
    replies = {f.get("ref"): f for f in frames}
    assert replies["bad"]["code"] == "bad_message"
    assert [f["message"] for f in frames if f.get("t") == "error"] == [
        "an envelope id must be valid Unicode text"] * 2
    assert replies["good"]["t"] == "sent" and replies["good"]["status"] == "stored"


KEY = bytes(range(32))
NOW = 1_700_000_000_000


def test_a_sealed_notification_opens_once_with_the_line_s_key_only() -> None:
    node1, node2 = peers.Seal(KEY), peers.Seal(KEY)
    body = "m 7 1 moscow/desk washington/desk 10\nx 7 sid washington/desk"
    sealed = node1.seal(7, body, NOW)
    assert node2.open(sealed, NOW + 1000) == (7, body)
    with pytest.raises(RemoteError, match="heard already"):  # replayed
        node2.open(sealed, NOW + 2000)
    later = node1.seal(7, "l 7 moscow~washington", NOW + 3000)
    assert node2.open(later, NOW + 3000)[1] == "l 7 moscow~washington"
    # A node that never heard it refuses it too once it is old: a replay.
    with pytest.raises(RemoteError, match="replayed, or the nodes' clocks"):
        peers.Seal(KEY).open(sealed, NOW + peers.SEAL_WINDOW_MS + 1)
    # Forged: another key, or one byte of the events or of the first line changed.
    with pytest.raises(RemoteError, match="wrong seal"):
        node2.open(peers.Seal(bytes(32)).seal(7, body, NOW), NOW)
    head, _, rest = node1.seal(7, body, NOW).partition("\n")
    with pytest.raises(RemoteError, match="wrong seal"):
        node2.open(f"{head}\n{rest.replace('10', '11')}", NOW)
    with pytest.raises(RemoteError, match="wrong seal"):
        node2.open(head.replace(" 7 ", " 8 ", 1) + "\n" + rest, NOW)
    for junk in [body, "", "#1", "#1 7 1 2", "#1 7 x 2 mac\nm", "#2 7 1 2 mac\nm",
                 "#1 " + "9" * 80 + " 1 2 mac\nm"]:
        with pytest.raises(RemoteError, match=r"not sealed|not a count"):
            node2.open(junk, NOW)
    with pytest.raises(ValueError, match="too short"):
        peers.Seal(b"short")


@given(st.text(max_size=200))
def test_whatever_is_notified_opens_or_is_refused(text: str) -> None:
    try:
        node, _ = peers.Seal(KEY).open(text, NOW)
    except RemoteError:
        return
    raise AssertionError(f"opened a notification nobody sealed (node {node})")


def test_a_node_that_just_listened_refuses_what_was_sealed_before_and_a_bad_seal_costs_nothing(
        ) -> None:
    sender, fresh = peers.Seal(KEY), peers.Seal(KEY)
    old = sender.seal(7, "l 7 moscow~washington", NOW)
    fresh.listening(NOW + peers.SEAL_SKEW_MS + 1000)  # started after it was sealed
    with pytest.raises(RemoteError, match="before this node listened"):
        fresh.open(old, NOW + peers.SEAL_SKEW_MS + 1000)
    new = sender.seal(7, "l 7 moscow~washington", NOW + peers.SEAL_SKEW_MS + 2000)
    assert fresh.open(new, NOW + peers.SEAL_SKEW_MS + 2000)[0] == 7
    # A seal from the future is no better than one from the past.
    with pytest.raises(RemoteError, match="clocks disagree"):
        peers.Seal(KEY).open(sender.seal(7, "x", NOW + peers.SEAL_WINDOW_MS + 1), NOW)
    # A wrong seal does not move the counter on: the genuine one is still heard.
    receiver = peers.Seal(KEY)
    genuine = sender.seal(7, "x 7 sid washington/desk", NOW)
    head, _, body = genuine.partition("\n")
    forged_head = head.rsplit(" ", 1)[0]  # the same node, time and counter; another MAC
    for mac in ("A" * 22, "é" * 22, "\udcff", ""):
        with pytest.raises(RemoteError):
            receiver.open(f"{forged_head} {mac}\n{body}", NOW)
    assert receiver.open(genuine, NOW) == (7, body)


@given(st.integers(0, 2**64), st.integers(0, 2**64), st.integers(0, 2**64),
       st.text(max_size=30), st.text(max_size=100))
def test_a_well_formed_first_line_with_any_seal_is_refused(node: int, stamp: int, counter: int,
                                                           mac: str, body: str) -> None:
    with pytest.raises(RemoteError):
        peers.Seal(KEY).open(f"#1 {node} {stamp} {counter} {mac}\n{body}", NOW)
