"""Calendar files for scheduled talks: iCalendar (RFC 5545) out, and a request back in.

A talk becomes a VEVENT as iTIP describes it: UID (the talk id), SEQUENCE,
DTSTAMP, DTSTART in the organizer's zone, DURATION, SUMMARY, DESCRIPTION,
STATUS (CONFIRMED, TENTATIVE or CANCELLED), ORGANIZER and ATTENDEE (with its
PARTSTAT) as ``urn:parley:party:NAME`` addresses with the principals' names,
and a VTIMEZONE for each zone used (both parties'). Written and read with the
``icalendar`` package. `import_request` reads such a file (or one from another
calendar) back into the fields of a Parley request.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import icalendar

from parley.core import schedule
from parley.core.errors import ErrorCode, LocalError
from parley.core.schedule import Talk

PRODID = "-//Parley//scheduled talks//EN"
URN = "urn:parley:party:"
_STATUS = {schedule.CONFIRMED: "CONFIRMED", schedule.CANCELLED: "CANCELLED"}
_PARTSTAT = {schedule.CONFIRMED: "ACCEPTED", schedule.DECLINED: "DECLINED",
             schedule.TENTATIVE: "TENTATIVE"}


def export_ics(talks: Iterable[Talk], zones: dict[str, str], names: dict[str, str]) -> bytes:
    """One calendar with each talk; `zones` and `names`: each party's zone and name."""
    cal = icalendar.Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("method", "PUBLISH")
    used: set[str] = set()
    for talk in talks:
        event = icalendar.Event()
        event.add("uid", f"{talk.talk_id}@parley")
        event.add("sequence", talk.sequence)
        event.add("dtstamp", datetime.fromtimestamp(talk.request_stamp_ms / 1000, UTC))
        organizer_zone = zones.get(talk.organizer, "UTC")
        if talk.start_ms is not None:
            event.add("dtstart", schedule.local(talk.start_ms, organizer_zone))
        else:
            event.add("x-parley-asap", "TRUE")  # as soon as possible: no start yet
        event.add("duration", timedelta(seconds=talk.duration_s))
        event.add("summary", talk.title)
        if talk.agenda:
            event.add("description", talk.agenda)
        event.add("status", _STATUS.get(talk.state, "TENTATIVE"))
        organizer = icalendar.vCalAddress(URN + talk.organizer)
        organizer.params["cn"] = icalendar.vText(names.get(talk.organizer, talk.organizer))
        event.add("organizer", organizer)
        attendee = icalendar.vCalAddress(URN + talk.attendee)
        attendee.params["cn"] = icalendar.vText(names.get(talk.attendee, talk.attendee))
        attendee.params["partstat"] = icalendar.vText(_PARTSTAT.get(talk.state, "NEEDS-ACTION"))
        attendee.params["role"] = icalendar.vText("REQ-PARTICIPANT")
        event.add("attendee", attendee)
        event.add("x-parley-media", talk.media)
        for party in (talk.organizer, talk.attendee):
            if zones.get(party):
                used.add(zones[party])
        cal.add_component(event)
    for name in sorted(used):  # both parties' zones, not only the one DTSTART names
        if name != "UTC":
            cal.add_component(icalendar.Timezone.from_tzinfo(schedule.zone(name), name))
    return bytes(cal.to_ical())


def import_request(data: bytes) -> list[dict[str, Any]]:
    """The VEVENTs of a calendar file as the fields of Parley requests (one per event).

    A file from elsewhere may hold anything: whatever in it cannot be read as a talk
    is refused with a LocalError naming it, never with another exception.
    """
    try:
        return _import(data)
    except LocalError:
        raise
    except Exception as exc:  # icalendar's and the event's own oddities alike
        raise LocalError(f"cannot read this calendar file as talks: {exc}"[:300],
                         code=ErrorCode.INVALID_INPUT) from None


def _import(data: bytes) -> list[dict[str, Any]]:
    cal = icalendar.Calendar.from_ical(data)
    out = []
    for event in cal.walk("VEVENT"):
        uid = str(event.get("uid", ""))
        if not uid:
            raise LocalError("a calendar event without a UID", code=ErrorCode.INVALID_INPUT)
        organizer = _party(event.get("organizer"))
        attendees = event.get("attendee")
        attendee = _party(attendees[0] if isinstance(attendees, list) else attendees)
        start = event.get("dtstart")
        duration = event.get("duration")
        if duration is not None:
            seconds = int(duration.dt.total_seconds())
        elif start is not None and event.get("dtend") is not None:
            seconds = int((event.get("dtend").dt - start.dt).total_seconds())
        else:
            seconds = 3600
        if not 60 <= seconds <= schedule.MAX_DURATION_S:
            raise LocalError(f"the event {uid} lasts {seconds} s: a talk lasts from a minute"
                             f" to {schedule.MAX_DURATION_S // 3600} h",
                             code=ErrorCode.INVALID_INPUT)
        request: dict[str, Any] = {
            "talk_id": uid.split("@", 1)[0][:32],
            "sequence": int(event.get("sequence", 0)),
            "title": _text(event.get("summary")) or "(untitled)",
            "agenda": _text(event.get("description")),
            "duration_s": seconds,
            "media": str(event.get("x-parley-media", "video")),
            "organizer": organizer, "attendee": attendee,
            "status": str(event.get("status", "TENTATIVE")),
        }
        if start is not None:
            moment = start.dt
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise LocalError(f"the event {uid} has no time zone for its start",
                                 code=ErrorCode.INVALID_INPUT,
                                 hint="give DTSTART with a TZID, or in UTC")
            request["start_ms"] = int(moment.timestamp() * 1000)
        out.append(request)
    if not out:
        raise LocalError("the calendar file holds no event", code=ErrorCode.INVALID_INPUT)
    return out


def _text(value: Any) -> str:
    """A text property; given twice (a file from elsewhere may), the first."""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value or "")


def _party(address: Any) -> str:
    text = str(address or "")
    if text.lower().startswith(URN):
        return text[len(URN):]
    if text.lower().startswith("mailto:"):  # another calendar's: the name before the @
        return text[7:].split("@", 1)[0].lower()
    raise LocalError(f"{text!r} is not a party of this line", code=ErrorCode.INVALID_INPUT)
