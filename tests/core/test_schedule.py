"""The scheduling exchange and its times, in the pure core: no sockets, `now` passed in."""

from __future__ import annotations

import random
from typing import Any

import pytest

from parley.core import schedule
from parley.core.errors import LocalError
from parley.core.schedule import TalkBook

W, M = "washington", "moscow"
T0 = 1_638_889_200_000  # 2021-12-07 15:00 UTC
HOUR = 3_600_000


def pair() -> tuple[TalkBook, TalkBook]:
    return TalkBook(W), TalkBook(M)


def deliver(to: TalkBook, sender: str, message: tuple[str, dict[str, Any]], now: int
            ) -> schedule.Outcome:
    return to.apply(sender, message[0], message[1], now)


def test_request_counter_decline_rerequest_accept_and_cancel_agree_on_both_sides() -> None:
    w, m = pair()
    now = T0 - 48 * HOUR
    request = w.request(M, title="Arms talks", start_ms=T0, duration_s=7200, media="video",
                        agenda="1. Inspections", now_ms=now)
    talk_id = request[1]["talk_id"]
    assert deliver(m, W, request, now + 1).result == "applied"
    assert m.talks[talk_id].state == w.talks[talk_id].state == schedule.PROPOSED

    counter = m.counter(talk_id, start_ms=T0 + 3 * HOUR, now_ms=now + 10, note="Thursday?")
    assert deliver(w, M, counter, now + 11).result == "applied"
    assert w.talks[talk_id].state == m.talks[talk_id].state == schedule.COUNTERED
    assert w.talks[talk_id].counter.start_ms == T0 + 3 * HOUR  # type: ignore[union-attr]

    declined = w.decline_counter(talk_id, now_ms=now + 20, note="We keep Tuesday")
    assert deliver(m, W, declined, now + 21).result == "applied"
    assert w.talks[talk_id].state == m.talks[talk_id].state == schedule.PROPOSED
    assert w.talks[talk_id].counter is None and m.talks[talk_id].counter is None

    counter2 = m.counter(talk_id, start_ms=T0 + 2 * HOUR, now_ms=now + 30)
    assert deliver(w, M, counter2, now + 31).result == "applied"
    again = w.rerequest(talk_id, take_counter=True, now_ms=now + 40)
    assert again[1]["sequence"] == 1 and again[1]["start_ms"] == T0 + 2 * HOUR
    assert deliver(m, W, again, now + 41).result == "applied"
    accept = m.reply(talk_id, "accepted", now_ms=now + 50)
    assert deliver(w, M, accept, now + 51).result == "applied"
    for book in (w, m):
        talk = book.talks[talk_id]
        assert (talk.state, talk.sequence, talk.start_ms) == (schedule.CONFIRMED, 1,
                                                              T0 + 2 * HOUR)
    assert w.talks[talk_id] == m.talks[talk_id]

    cancel = w.cancel(talk_id, now_ms=now + 60, note="Postponed")
    assert deliver(m, W, cancel, now + 61).result == "applied"
    assert w.talks[talk_id] == m.talks[talk_id]
    assert m.talks[talk_id].state == schedule.CANCELLED
    with pytest.raises(LocalError, match="cancelled"):
        m.reply(talk_id, "accepted", now_ms=now + 70)


def test_replayed_out_of_order_and_misdirected_messages_are_recognised() -> None:
    w, m = pair()
    now = T0 - HOUR
    first = w.request(M, title="t", start_ms=T0, duration_s=3600, media="audio", now_ms=now)
    talk_id = first[1]["talk_id"]
    deliver(m, W, first, now)
    accepted_v0 = m.reply(talk_id, "accepted", now_ms=now + 1)
    second = w.rerequest(talk_id, start_ms=T0 + HOUR, now_ms=now + 2)
    # The reply to sequence 0 arrives after washington moved to sequence 1: stale.
    assert deliver(w, M, accepted_v0, now + 3).result == "stale"
    assert w.talks[talk_id].state == schedule.PROPOSED
    # The same request twice (a replay) changes nothing; the older one after it is stale.
    assert deliver(m, W, second, now + 4).result == "applied"
    assert deliver(m, W, second, now + 5).result == "duplicate"
    assert deliver(m, W, first, now + 6).result == "stale"
    assert m.talks[talk_id].sequence == 1 and m.talks[talk_id].start_ms == T0 + HOUR
    # A reply to a sequence not seen yet, and an answer from the organizer itself.
    future = ("sched.reply", {"talk_id": talk_id, "sequence": 7, "dtstamp_ms": now + 7,
                              "partstat": "accepted"})
    assert deliver(w, M, future, now + 7).result == "early"  # kept until sequence 7 comes
    own = ("sched.reply", {"talk_id": talk_id, "sequence": 1, "dtstamp_ms": now + 8,
                           "partstat": "accepted"})
    assert deliver(m, W, own, now + 8).result == "refused"
    # A cancel from the attendee, and a request that claims another organizer.
    assert deliver(w, M, ("sched.cancel", {"talk_id": talk_id, "sequence": 1,
                                           "dtstamp_ms": now + 9}), now + 9).result == "refused"
    forged = ("sched.request", {**second[1], "organizer": M, "attendee": W, "sequence": 9})
    assert deliver(w, W, forged, now + 10).result == "refused"
    accepted = m.reply(talk_id, "accepted", now_ms=now + 11)
    assert deliver(w, M, accepted, now + 12).result == "applied"
    assert deliver(w, M, accepted, now + 13).result == "duplicate"
    assert w.talks[talk_id] == m.talks[talk_id]


def test_any_order_of_arrival_reaches_the_same_state() -> None:
    w, m = pair()
    now = T0 - 10 * HOUR
    messages: list[tuple[str, tuple[str, dict[str, Any]]]] = []
    first = w.request(M, title="t", start_ms=T0, duration_s=3600, media="video", now_ms=now)
    talk_id = first[1]["talk_id"]
    messages.append((W, first))
    deliver(m, W, first, now)
    messages.append((M, m.counter(talk_id, start_ms=T0 + HOUR, now_ms=now + 1)))
    deliver(w, *messages[-1], now + 1)
    messages.append((W, w.rerequest(talk_id, take_counter=True, now_ms=now + 2)))
    deliver(m, *messages[-1], now + 2)
    messages.append((M, m.reply(talk_id, "accepted", now_ms=now + 3)))
    deliver(w, *messages[-1], now + 3)
    final = w.talks[talk_id]
    assert m.talks[talk_id] == final and final.state == schedule.CONFIRMED
    # A third party's copy, fed everything in a shuffled order (and some twice), until
    # nothing more applies, ends where both sides are.
    rng = random.Random(7)
    for _ in range(20):
        other = TalkBook(M)
        pending = messages * 2
        rng.shuffle(pending)
        for _round in range(len(pending)):
            for sender, message in pending:
                other.apply(sender, message[0], message[1], now + 10)
        assert other.talks[talk_id] == final


def test_times_read_and_shown_in_both_zones() -> None:
    at = schedule.parse_time("2021-12-07 15:00 UTC", "UTC")
    assert at == T0
    assert schedule.parse_time("2021-12-07 10:00 America/New_York", "UTC") == T0
    assert schedule.parse_time("2021-12-07 18:00", "Europe/Moscow") == T0
    assert schedule.parse_time("2021-12-07 18:00+03:00", "UTC") == T0
    shown = schedule.show_time(T0, ["America/New_York", "Europe/Moscow"])
    assert shown == ("2021-12-07 15:00 UTC -- 10:00 Tue in America/New_York (-05:00),"
                     " 18:00 Tue in Europe/Moscow (+03:00)")
    assert schedule.until_text(T0, T0 - (3 * HOUR + 20 * 60_000)) == "in 3 h 20 min"
    assert schedule.until_text(T0, T0 + 12 * 60_000) == "12 min ago"


@pytest.mark.parametrize(("utc", "new_york", "berlin"), [
    # The US moves its clocks two to three weeks before the EU, in spring and in autumn.
    ("2021-03-10 15:00", "10:00", "16:00"),  # both on winter time
    ("2021-03-17 15:00", "11:00", "16:00"),  # New York on summer time (14 March), Berlin not
    ("2021-03-31 15:00", "11:00", "17:00"),  # both on summer time (EU: 28 March)
    ("2021-11-03 15:00", "11:00", "16:00"),  # Berlin back on winter time (31 Oct), NY not
    ("2021-11-10 15:00", "10:00", "16:00"),  # both on winter time (US: 7 November)
])
def test_talks_across_the_daylight_saving_changes_show_the_right_local_times(
        utc: str, new_york: str, berlin: str) -> None:
    at = schedule.parse_time(f"{utc} UTC", "UTC")
    assert f"{schedule.local(at, 'America/New_York'):%H:%M}" == new_york
    assert f"{schedule.local(at, 'Europe/Berlin'):%H:%M}" == berlin
    # ...and read back from either local time, the same instant.
    day = utc.split()[0]
    assert schedule.parse_time(f"{day} {new_york} America/New_York", "UTC") == at
    assert schedule.parse_time(f"{day} {berlin} Europe/Berlin", "UTC") == at


def test_a_local_time_that_does_not_exist_or_happens_twice_is_refused_with_why() -> None:
    with pytest.raises(LocalError, match="does not exist in America/New_York: the clocks go"
                                         " forward"):
        schedule.parse_time("2021-03-14 02:30 America/New_York", "UTC")
    with pytest.raises(LocalError, match="does not exist in Europe/Berlin"):
        schedule.parse_time("2021-03-28 02:30", "Europe/Berlin")
    with pytest.raises(LocalError, match=r"happens twice in America/New_York .* -04:00 or"
                                         r" -05:00"):
        schedule.parse_time("2021-11-07 01:30 America/New_York", "UTC")
    # With its offset it is one instant.
    assert schedule.parse_time("2021-11-07 01:30-04:00", "UTC") + HOUR == \
        schedule.parse_time("2021-11-07 01:30-05:00", "UTC")
    for bad in ("tomorrow at three", "2021-02-30 10:00 UTC", "2021-12-07 10:00 Mars/Base"):
        with pytest.raises(LocalError):
            schedule.parse_time(bad, "UTC")


def test_messages_a_server_delivers_out_of_order_are_early_not_lost() -> None:
    """What a party has not seen yet (a cancel before the re-request it follows, a decline of
    a counter before the counter) is "early": kept by the terminal and applied once the
    message it follows has come (terminal.talks); the core says so instead of dropping it."""
    w, m = pair()
    now = T0 - HOUR
    first = w.request(M, title="t", start_ms=T0, duration_s=3600, media="video", now_ms=now)
    talk_id = first[1]["talk_id"]
    deliver(m, W, first, now)
    again = w.rerequest(talk_id, start_ms=T0 + HOUR, now_ms=now + 1)
    cancel = w.cancel(talk_id, now_ms=now + 2)
    assert deliver(m, W, cancel, now + 3).result == "early"
    assert deliver(m, W, again, now + 4).result == "applied"
    assert deliver(m, W, cancel, now + 5).result == "applied"
    assert m.talks[talk_id] == w.talks[talk_id]

    # A decline names the counter it declines: a later counter is not declined by it.
    w2, m2 = pair()
    req = w2.request(M, title="t", start_ms=T0, duration_s=3600, media="video", now_ms=now)
    tid = req[1]["talk_id"]
    deliver(m2, W, req, now)
    c1 = m2.counter(tid, start_ms=T0 + HOUR, now_ms=now + 2)
    deliver(w2, M, c1, now + 2)
    decline = w2.decline_counter(tid, now_ms=now + 1)  # the organizer's clock is behind
    assert decline[1]["counter_ms"] == c1[1]["dtstamp_ms"]
    c2 = m2.counter(tid, start_ms=T0 + 2 * HOUR, now_ms=now + 3)  # before the decline came
    assert deliver(m2, W, decline, now + 4).result == "stale"  # it declined c1, not c2
    assert deliver(w2, M, c2, now + 5).result == "applied"
    assert w2.talks[tid].state == m2.talks[tid].state == schedule.COUNTERED
    assert w2.talks[tid].counter == m2.talks[tid].counter

    # Two devices of the organizer re-request under one sequence: the later stamp wins at all.
    third = TalkBook(W)
    deliver(third, W, req, now)
    one = ("sched.request", {**req[1], "sequence": 1, "dtstamp_ms": now + 10,
                             "start_ms": T0 + 100})
    two = ("sched.request", {**req[1], "sequence": 1, "dtstamp_ms": now + 20,
                             "start_ms": T0 + 200})
    for order in ((one, two), (two, one)):
        book = TalkBook(M)
        deliver(book, W, req, now)
        for message in order:
            book.apply(W, message[0], message[1], now + 30)
        assert book.talks[tid].start_ms == T0 + 200


def test_times_out_of_range_and_offsets_that_are_none_are_refused() -> None:
    for bad in ("2021-12-07 10:00+99:99", "0001-01-01 00:00+05:00", "1969-12-31 10:00 UTC",
                "9999-12-31 23:59-05:00"):
        with pytest.raises(LocalError):
            schedule.parse_time(bad, "UTC")
    assert schedule.parse_time("2021-12-07 10:00 EST5EDT", "UTC") == T0
    _, m = pair()
    far = ("sched.request", {"talk_id": "farfuture0001", "sequence": 0, "dtstamp_ms": T0,
                             "organizer": W, "attendee": M, "title": "t", "start_ms": 2**53,
                             "duration_s": 3600, "media": "video"})
    from parley.core.errors import RemoteError

    with pytest.raises(RemoteError):
        m.apply(W, far[0], far[1], T0)
