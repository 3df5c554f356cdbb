"""Message order, gaps and loss, decided without a store or a socket."""

from __future__ import annotations

import random

import pytest

from parley.core.errors import RemoteError
from parley.core.messages import (
    GAP_WAIT_MS,
    LOST_AFTER_MS,
    LOST_KEPT,
    MAX_TEXT,
    PAYLOADS,
    Stream,
    check_conversation,
    check_file,
    check_text,
    chunk_count,
    conversation_id,
    gap_due,
    handle_gap,
    place,
)
from parley.core.schema import validate

NOW = 1_800_000_000_000


def test_messages_are_shown_in_order_exactly_once_whatever_order_they_come_in() -> None:
    rng = random.Random(7)
    for _ in range(50):
        stream, shown = Stream(), []
        arrivals = list(range(1, 41))
        rng.shuffle(arrivals)
        arrivals += rng.sample(range(1, 41), 15)  # and some come twice
        for n, seq in enumerate(arrivals):
            placement = place(stream, seq, 1, NOW + n)
            assert not (placement.duplicate and placement.show)
            shown += placement.show
        assert shown == list(range(1, 41)) and not stream.held
        assert stream.gap_since_ms is None


def test_a_device_enrolled_later_starts_where_its_copies_start() -> None:
    stream = Stream()
    assert place(stream, 57, 57, NOW).show == (57,)
    assert place(stream, 59, 57, NOW).hold
    assert place(stream, 58, 57, NOW).show == (58, 59)
    # One that came before the start of a gap it should have had is held, not shown.
    fresh = Stream()
    assert place(fresh, 12, 10, NOW).hold
    assert place(fresh, 10, 10, NOW).show == (10,)


def test_an_open_gap_is_asked_about_then_declared_lost_and_what_waited_is_shown() -> None:
    stream = Stream()
    place(stream, 1, 1, NOW)
    for seq in (5, 6):
        assert place(stream, seq, 1, NOW + 100).hold
    assert gap_due(stream, NOW) == NOW + 100 + GAP_WAIT_MS
    assert handle_gap(stream, NOW + 100 + GAP_WAIT_MS - 1).ask is None  # not yet
    # However long it has been open (a terminal away for an hour), it is asked first.
    asked_at = NOW + 3_600_000
    asked = handle_gap(stream, asked_at)
    assert asked.ask == (2, 4) and asked.lost is None
    assert place(stream, 3, 1, asked_at + 500).hold  # part of it came
    assert handle_gap(stream, asked_at + LOST_AFTER_MS - 1).lost is None  # asked again only
    lost = handle_gap(stream, asked_at + LOST_AFTER_MS)
    assert lost.lost == (2, 2) and lost.show == (3,)
    # What remains of the gap (4) is a new gap, asked about and declared lost in turn.
    later = asked_at + LOST_AFTER_MS
    assert handle_gap(stream, later + GAP_WAIT_MS).ask == (4, 4)
    final = handle_gap(stream, later + GAP_WAIT_MS + LOST_AFTER_MS)
    assert final.lost == (4, 4) and final.show == (5, 6)
    assert stream.next_seq == 7 and gap_due(stream, later) is None
    # One declared lost that comes after all is shown then, marked late, and only once.
    late = place(stream, 2, 1, later)
    assert late.show == (2,) and late.late
    assert place(stream, 2, 1, later).duplicate


def test_a_gap_as_wide_as_the_numbering_is_remembered_in_bounded_memory() -> None:
    stream = Stream()
    place(stream, 1, 1, NOW)
    assert place(stream, 2**53, 1, NOW).hold  # a sender that jumps to the end of its numbers
    asked = handle_gap(stream, NOW + GAP_WAIT_MS)
    assert asked.ask is not None and asked.ask[1] - asked.ask[0] < 500
    lost = handle_gap(stream, NOW + GAP_WAIT_MS + LOST_AFTER_MS)
    assert lost.lost == (2, 2**53 - 1) and lost.show == (2**53,)
    assert len(stream.lost) == LOST_KEPT  # the newest numbers, not 2**53 of them
    assert place(stream, 2**53 - 1, 1, NOW).late
    assert place(stream, 2, 1, NOW).duplicate  # too old to be remembered: dropped


def test_conversations_belong_to_their_line() -> None:
    conv = conversation_id("washington", "moscow")
    assert conv == "moscow|washington" == conversation_id("moscow", "washington")
    check_conversation(conv, "moscow", "washington")
    check_conversation(conv, "washington", "washington")  # a copy from our own device
    for bad, me, sender in ((conv, "london", "washington"),
                            ("london|washington", "moscow", "washington"),
                            ("washington|moscow", "moscow", "washington")):
        with pytest.raises(RemoteError):
            check_conversation(bad, me, sender)


def test_payload_limits_and_file_checks() -> None:
    text = {"conv": "moscow|washington", "seq": 1, "first": 1,
            "msg_id": "AbCdEfGhIjKlMnOpQrStUv", "text": "x" * MAX_TEXT}
    validate(text, PAYLOADS["msg.text"], what="msg.text")
    with pytest.raises(RemoteError):
        validate({**text, "text": "x" * (MAX_TEXT + 1)}, PAYLOADS["msg.text"], what="msg.text")
    with pytest.raises(RemoteError):
        validate({**text, "conv": "not a conversation"}, PAYLOADS["msg.text"], what="msg.text")
    # A message id is never a path (it names files), nor anything but random_id's alphabet.
    for bad in ("../../terminal.db", "/root/.ssh/x", "short", "a" * 33, "AbCdEfGhIjKlMnOp.."):
        with pytest.raises(RemoteError):
            validate({**text, "msg_id": bad}, PAYLOADS["msg.text"], what="msg.text")
    with pytest.raises(RemoteError) as err:
        check_text("x" * (MAX_TEXT + 1))
    assert "--file" in err.value.hint
    with pytest.raises(RemoteError):
        check_text("   ")
    assert chunk_count(0) == 0 and chunk_count(1) == 1 and chunk_count(128 * 1024 + 1) == 2
    check_file(20_000_000, chunk_count(20_000_000), "a" * 64)
    with pytest.raises(RemoteError):
        check_file(20_000_000, 3, "a" * 64)
    with pytest.raises(RemoteError):
        check_file(10, 1, "A" * 64)
