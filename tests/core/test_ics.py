"""Calendar files: a talk exported, read back by the icalendar package, imported again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import icalendar

from parley.core import schedule
from parley.core.schedule import TalkBook
from parley.ics import export_ics, import_request

T0 = 1_638_889_200_000  # 2021-12-07 15:00 UTC
ZONES = {"washington": "America/New_York", "moscow": "Europe/Moscow"}
NAMES = {"washington": "The White House", "moscow": "The Kremlin"}


def confirmed_talk() -> schedule.Talk:
    w, m = TalkBook("washington"), TalkBook("moscow")
    request = w.request("moscow", title="Arms talks", agenda="1. Inspections\n2. Next steps",
                        start_ms=T0, duration_s=7200, media="video", now_ms=T0 - 86_400_000)
    talk_id = request[1]["talk_id"]
    m.apply("washington", *request, T0 - 86_400_000)
    again = w.rerequest(talk_id, start_ms=T0 + 3_600_000, now_ms=T0 - 80_000_000)
    m.apply("washington", *again, T0 - 80_000_000)
    w.apply("moscow", *m.reply(talk_id, "accepted", now_ms=T0 - 79_000_000), T0)
    return w.talks[talk_id]


def test_an_exported_talk_reads_back_with_its_times_zones_sequence_and_status() -> None:
    talk = confirmed_talk()
    data = export_ics([talk], ZONES, NAMES)
    cal = icalendar.Calendar.from_ical(data)
    zones = {str(tz["tzid"]) for tz in cal.walk("VTIMEZONE")}
    assert zones == {"America/New_York", "Europe/Moscow"}
    (event,) = cal.walk("VEVENT")
    start = event["dtstart"].dt
    assert start.tzinfo is not None and str(event["dtstart"].params["tzid"]) == \
        "America/New_York"
    assert (start.hour, start.minute) == (11, 0)  # 16:00 UTC is 11:00 in New York
    assert start.astimezone(UTC) == datetime(2021, 12, 7, 16, 0, tzinfo=UTC)
    assert event["duration"].dt == timedelta(hours=2)
    assert int(event["sequence"]) == 1 and str(event["status"]) == "CONFIRMED"
    assert str(event["summary"]) == "Arms talks"
    assert str(event["organizer"]) == "urn:parley:party:washington"
    assert str(event["organizer"].params["cn"]) == "The White House"
    assert str(event["attendee"].params["partstat"]) == "ACCEPTED"

    (back,) = import_request(data)
    assert back["talk_id"] == talk.talk_id and back["sequence"] == talk.sequence
    assert back["start_ms"] == talk.start_ms and back["duration_s"] == talk.duration_s
    assert (back["title"], back["agenda"], back["media"]) == (talk.title, talk.agenda,
                                                              talk.media)
    assert (back["organizer"], back["attendee"]) == ("washington", "moscow")
    # ...as the same request: applied to a book, and again, it is the one it already has.
    book = TalkBook("moscow")
    payload = {k: v for k, v in back.items() if k != "status"}
    payload["dtstamp_ms"] = talk.request_stamp_ms
    assert book.apply("washington", "sched.request", payload, T0).result == "applied"
    assert book.apply("washington", "sched.request", payload, T0).result == "duplicate"
    assert book.talks[talk.talk_id].start_ms == talk.start_ms


def test_a_calendar_file_from_elsewhere_that_is_not_a_talk_is_refused_with_why() -> None:
    import pytest

    from parley.core.errors import LocalError

    good = export_ics([confirmed_talk()], ZONES, NAMES)
    for junk, why in ((b"not a calendar", "cannot read"),
                      (good.replace(b"DURATION:PT2H", b"DURATION:P400D"), "lasts"),
                      (good.replace(b"urn:parley:party:washington", b"https://x"),
                       "not a party"),
                      (good.replace(b"BEGIN:VEVENT", b"BEGIN:VTODO").replace(
                          b"END:VEVENT", b"END:VTODO"), "no event")):
        with pytest.raises(LocalError, match=why):
            import_request(junk)
