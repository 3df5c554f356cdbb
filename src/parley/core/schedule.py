"""Scheduled talks: iCalendar's scheduling exchange (RFC 5546, iTIP) between two parties.

One party (the *organizer*) requests a talk of the other (the *attendee*):
title, agenda, start (or "as soon as possible"), duration, voice or video.
The attendee replies (accepted, declined, tentative) or counters with another
time and a note; the organizer declines the counter, or requests again with
the countered time (or any other) under a higher sequence number, or cancels.
These are iTIP's REQUEST, REPLY, COUNTER, DECLINECOUNTER and CANCEL, carried
in sealed, signed envelopes (``sched.*``) instead of e-mail: the server never
learns what is scheduled.

Each talk has one id and the organizer's sequence number; each message names
the sequence it is about and its own stamp (``dtstamp_ms``). `TalkBook`
applies a message to its talk and says what it did: changed it, or recognised
it as a duplicate (the same message again, a replay) or stale (about an older
sequence, or older than what was already applied), or refused it (from the
wrong party, for a talk that was cancelled). A sender applies its own
messages to its own book the same way, so both sides reach the same state
from the same messages, in whatever order they came.

Times are kept in UTC (ms since the epoch) beside each party's IANA zone;
`parse_time` reads what an operator writes ("2021-12-07 15:00 UTC",
"2021-12-07 10:00 America/New_York") and refuses a local time that does not
exist (the hour skipped when clocks go forward) or is ambiguous (the hour
repeated when they go back) unless its offset is given; `show_time` writes
one instant in both parties' zones.

Pure: no clock, no sockets (``now_ms`` is passed in).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from . import schema
from .encoding import random_id
from .errors import ErrorCode, LocalError, RemoteError
from .keys import NAME_MAX, check_name

MAX_TITLE = 200
MAX_AGENDA = 8000
MAX_NOTE = 2000
MAX_DURATION_S = 12 * 3600
PARTSTATS = frozenset({"accepted", "declined", "tentative"})
MEDIA = frozenset({"video", "audio"})

# The state of a talk, as both sides see it.
PROPOSED = "proposed"  # requested, no answer to this sequence yet
COUNTERED = "countered"  # the attendee proposed another time; the organizer's turn
CONFIRMED = "confirmed"  # accepted
TENTATIVE = "tentative"
DECLINED = "declined"
CANCELLED = "cancelled"


# -- the messages --------------------------------------------------------------------------

def _talk_id(value: Any) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,32}", value):
        raise RemoteError("a talk id is 8-32 letters, digits, - and _",
                          code=ErrorCode.BAD_MESSAGE)


def _party(value: Any) -> None:
    try:
        check_name(value, what="party")
    except LocalError as exc:
        raise RemoteError(exc.message, code=ErrorCode.BAD_MESSAGE) from None


_ID = schema.Field(str, max_len=32, check=_talk_id)
_PARTY = schema.Field(str, max_len=NAME_MAX, check=_party)
_SEQ = schema.integer(0, 1_000_000)
_LAST_MS = 253_402_300_799_999  # 9999-12-31 23:59:59.999 UTC: what a calendar can show
_MS = schema.integer(0, _LAST_MS)
_START = schema.integer(0, _LAST_MS, required=False)  # absent: as soon as possible

PAYLOADS: dict[str, dict[str, schema.Field]] = {
    "sched.request": {
        "talk_id": _ID, "sequence": _SEQ, "dtstamp_ms": _MS,
        "organizer": _PARTY, "attendee": _PARTY,
        "title": schema.text(MAX_TITLE), "agenda": schema.text(MAX_AGENDA, required=False),
        "start_ms": _START, "duration_s": schema.integer(60, MAX_DURATION_S),
        "media": schema.text(8, choices=MEDIA),
        "note": schema.text(MAX_NOTE, required=False),
    },
    "sched.reply": {"talk_id": _ID, "sequence": _SEQ, "dtstamp_ms": _MS,
                    "partstat": schema.text(16, choices=PARTSTATS),
                    "note": schema.text(MAX_NOTE, required=False)},
    "sched.counter": {"talk_id": _ID, "sequence": _SEQ, "dtstamp_ms": _MS,
                      "start_ms": _START, "duration_s": schema.integer(60, MAX_DURATION_S),
                      "note": schema.text(MAX_NOTE, required=False)},
    # It names the counter it declines (by that counter's stamp): one that came since is
    # not declined by it, whichever clock is ahead.
    "sched.declinecounter": {"talk_id": _ID, "sequence": _SEQ, "dtstamp_ms": _MS,
                             "counter_ms": _MS,
                             "note": schema.text(MAX_NOTE, required=False)},
    "sched.cancel": {"talk_id": _ID, "sequence": _SEQ, "dtstamp_ms": _MS,
                     "note": schema.text(MAX_NOTE, required=False)},
}
ORGANIZER_SENDS = frozenset({"sched.request", "sched.declinecounter", "sched.cancel"})
ATTENDEE_SENDS = frozenset({"sched.reply", "sched.counter"})


@dataclass(frozen=True)
class Counter:
    start_ms: int | None
    duration_s: int
    note: str
    dtstamp_ms: int


@dataclass(frozen=True)
class Talk:
    talk_id: str
    organizer: str
    attendee: str
    sequence: int
    title: str
    agenda: str
    start_ms: int | None  # None: as soon as possible
    duration_s: int
    media: str
    state: str
    request_stamp_ms: int  # the dtstamp of the request in force
    reply_stamp_ms: int = 0  # of the latest reply or counter applied for this sequence
    counter: Counter | None = None
    note: str = ""  # the latest note, from whichever side

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "counter"}
        out["counter"] = None if self.counter is None else dict(self.counter.__dict__)
        return out


@dataclass(frozen=True)
class Outcome:
    """What applying one message did: ``applied``, ``duplicate``, ``stale``, ``refused``, or
    ``early`` (about what has not come yet: kept, and applied once it has)."""

    result: str
    talk: Talk | None
    why: str = ""


@dataclass
class TalkBook:
    """Every talk of one party. Pure: give it messages and `now`, read what it says."""

    party: str
    talks: dict[str, Talk] = field(default_factory=dict)

    # -- what this party does (each returns the message to send, already applied here) --

    def request(self, attendee: str, *, title: str, start_ms: int | None, duration_s: int,
                media: str, now_ms: int, agenda: str = "", note: str = "",
                talk_id: str | None = None) -> tuple[str, dict[str, Any]]:
        if attendee == self.party:
            raise LocalError("a talk is with the other party of a line",
                             code=ErrorCode.INVALID_INPUT)
        # A fresh id begins with a letter: one beginning with "-" would read as an option.
        payload = {"talk_id": talk_id or "t" + random_id(), "sequence": 0,
                   "dtstamp_ms": now_ms,
                   "organizer": self.party, "attendee": attendee, "title": title,
                   "agenda": agenda, "duration_s": duration_s, "media": media,
                   "note": note}
        if start_ms is not None:
            payload["start_ms"] = start_ms
        return self._own("sched.request", payload, now_ms)

    def rerequest(self, talk_id: str, *, now_ms: int, start_ms: int | None = None,
                  duration_s: int | None = None, take_counter: bool = False,
                  note: str = "") -> tuple[str, dict[str, Any]]:
        """A new request for the talk, under a higher sequence: another time (or the one the
        attendee countered with)."""
        talk = self._mine(talk_id, organizer=True)
        if take_counter:
            if talk.counter is None:
                raise LocalError("there is no counter-proposal to take",
                                 code=ErrorCode.INVALID_STATE)
            start_ms, duration_s = talk.counter.start_ms, talk.counter.duration_s
        payload = {"talk_id": talk_id, "sequence": talk.sequence + 1, "dtstamp_ms": now_ms,
                   "organizer": talk.organizer, "attendee": talk.attendee,
                   "title": talk.title, "agenda": talk.agenda,
                   "duration_s": duration_s or talk.duration_s, "media": talk.media,
                   "note": note}
        start = start_ms if (start_ms is not None or take_counter) else talk.start_ms
        if start is not None:
            payload["start_ms"] = start
        return self._own("sched.request", payload, now_ms)

    def reply(self, talk_id: str, partstat: str, *, now_ms: int, note: str = ""
              ) -> tuple[str, dict[str, Any]]:
        talk = self._mine(talk_id, organizer=False)
        return self._own("sched.reply", {"talk_id": talk_id, "sequence": talk.sequence,
                                         "dtstamp_ms": now_ms, "partstat": partstat,
                                         "note": note}, now_ms)

    def counter(self, talk_id: str, *, start_ms: int | None, duration_s: int | None = None,
                now_ms: int, note: str = "") -> tuple[str, dict[str, Any]]:
        talk = self._mine(talk_id, organizer=False)
        payload = {"talk_id": talk_id, "sequence": talk.sequence, "dtstamp_ms": now_ms,
                   "duration_s": duration_s or talk.duration_s, "note": note}
        if start_ms is not None:
            payload["start_ms"] = start_ms
        return self._own("sched.counter", payload, now_ms)

    def decline_counter(self, talk_id: str, *, now_ms: int, note: str = ""
                        ) -> tuple[str, dict[str, Any]]:
        talk = self._mine(talk_id, organizer=True)
        if talk.counter is None:
            raise LocalError("there is no counter-proposal to decline",
                             code=ErrorCode.INVALID_STATE)
        return self._own("sched.declinecounter", {"talk_id": talk_id,
                                                  "sequence": talk.sequence,
                                                  "dtstamp_ms": now_ms,
                                                  "counter_ms": talk.counter.dtstamp_ms,
                                                  "note": note}, now_ms)

    def cancel(self, talk_id: str, *, now_ms: int, note: str = "") -> tuple[str, dict[str, Any]]:
        talk = self._mine(talk_id, organizer=True)
        return self._own("sched.cancel", {"talk_id": talk_id, "sequence": talk.sequence,
                                          "dtstamp_ms": now_ms, "note": note}, now_ms)

    def _mine(self, talk_id: str, *, organizer: bool) -> Talk:
        talk = self.talks.get(talk_id)
        if talk is None:
            raise LocalError(f"no talk {talk_id!r}", code=ErrorCode.INVALID_INPUT,
                             hint="'parley schedule list' shows the talks")
        if talk.state == CANCELLED:
            raise LocalError(f"the talk {talk.title!r} was cancelled",
                             code=ErrorCode.INVALID_STATE)
        if organizer and talk.organizer != self.party:
            raise LocalError(f"{talk.organizer} requested this talk: only it may change or"
                             " cancel it; you may accept, decline or propose another time",
                             code=ErrorCode.INVALID_STATE)
        if not organizer and talk.attendee != self.party:
            raise LocalError("you requested this talk: change it with a new time, or cancel"
                             " it", code=ErrorCode.INVALID_STATE)
        return talk

    def _own(self, kind: str, payload: dict[str, Any], now_ms: int
             ) -> tuple[str, dict[str, Any]]:
        payload = {k: v for k, v in payload.items() if v != "" or k == "title"}
        outcome = self.apply(self.party, kind, payload, now_ms)
        if outcome.result != "applied":
            raise LocalError(outcome.why, code=ErrorCode.INVALID_STATE)
        return kind, payload

    # -- what comes from either side ---------------------------------------------------

    def apply(self, sender: str, kind: str, payload: Mapping[str, Any], now_ms: int
              ) -> Outcome:
        """Apply one message from party `sender` (this party, for its own)."""
        fields = PAYLOADS.get(kind)
        if fields is None:
            raise RemoteError(f"unknown scheduling message {kind!r}",
                              code=ErrorCode.UNKNOWN_TYPE)
        schema.validate(dict(payload), fields, what=kind)
        talk = self.talks.get(payload["talk_id"])
        seq, stamp = payload["sequence"], payload["dtstamp_ms"]
        if kind == "sched.request":
            return self._request(sender, payload, talk)
        if talk is None:
            return Outcome("early", None, "a message about a talk this party has not seen"
                                          " (its request may still be on its way)")
        role_ok = (sender == talk.organizer) if kind in ORGANIZER_SENDS else \
            (sender == talk.attendee)
        if not role_ok:
            return Outcome("refused", talk, f"{sender} may not send {kind} for this talk")
        if talk.state == CANCELLED:
            return Outcome("stale", talk, "the talk was cancelled")
        if seq < talk.sequence:
            return Outcome("stale", talk, f"about sequence {seq}; the talk is at"
                                          f" {talk.sequence} now")
        if seq > talk.sequence:
            return Outcome("early", talk, f"about sequence {seq}, which this party has not"
                                          " seen yet (its request may still be on its way)")
        if kind == "sched.cancel":
            return self._set(replace(talk, state=CANCELLED, counter=None,
                                     note=payload.get("note", "")))
        if kind in ("sched.reply", "sched.counter"):
            if stamp < talk.reply_stamp_ms:
                return Outcome("stale", talk, "an older answer than the one applied")
            if stamp == talk.reply_stamp_ms:
                return Outcome("duplicate", talk, "applied already")
            if kind == "sched.reply":
                state = {"accepted": CONFIRMED, "declined": DECLINED,
                         "tentative": TENTATIVE}[payload["partstat"]]
                return self._set(replace(talk, state=state, counter=None, reply_stamp_ms=stamp,
                                         note=payload.get("note", "")))
            countered = Counter(payload.get("start_ms"), payload["duration_s"],
                                payload.get("note", ""), stamp)
            return self._set(replace(talk, state=COUNTERED, counter=countered,
                                     reply_stamp_ms=stamp, note=countered.note))
        # sched.declinecounter: of the counter it names, and no other
        if talk.counter is None or talk.counter.dtstamp_ms != payload["counter_ms"]:
            if payload["counter_ms"] > talk.reply_stamp_ms:
                return Outcome("early", talk, "it declines a counter-proposal not seen yet")
            return Outcome("stale", talk, "the counter-proposal it declines was answered"
                                          " already")
        return self._set(replace(talk, state=PROPOSED, counter=None,
                                 note=payload.get("note", "")))

    def _request(self, sender: str, payload: Mapping[str, Any], talk: Talk | None) -> Outcome:
        if sender != payload["organizer"] or self.party not in (payload["organizer"],
                                                                payload["attendee"]) \
                or payload["organizer"] == payload["attendee"]:
            return Outcome("refused", talk, f"{sender} may not request a talk between"
                                            f" {payload['organizer']} and"
                                            f" {payload['attendee']}")
        if talk is not None:
            if talk.organizer != payload["organizer"] or talk.attendee != payload["attendee"]:
                return Outcome("refused", talk, "a request that changes who the talk is"
                                                " between")
            if talk.state == CANCELLED:
                return Outcome("stale", talk, "the talk was cancelled")
            if payload["sequence"] < talk.sequence or (
                    payload["sequence"] == talk.sequence
                    and payload["dtstamp_ms"] < talk.request_stamp_ms):
                return Outcome("stale", talk, f"an older request (sequence"
                                              f" {payload['sequence']}) than the one in force"
                                              f" ({talk.sequence})")
            if payload["sequence"] == talk.sequence:
                if payload["dtstamp_ms"] == talk.request_stamp_ms:
                    return Outcome("duplicate", talk, "applied already")
                # Two requests under one sequence (two devices of the organizer at once):
                # the later stamp wins everywhere, the answers to that sequence stand.
                return self._set(replace(
                    talk, title=payload["title"], agenda=payload.get("agenda", ""),
                    start_ms=payload.get("start_ms"), duration_s=payload["duration_s"],
                    media=payload["media"], request_stamp_ms=payload["dtstamp_ms"]))
        return self._set(Talk(
            talk_id=payload["talk_id"], organizer=payload["organizer"],
            attendee=payload["attendee"], sequence=payload["sequence"],
            title=payload["title"], agenda=payload.get("agenda", ""),
            start_ms=payload.get("start_ms"), duration_s=payload["duration_s"],
            media=payload["media"], state=PROPOSED, request_stamp_ms=payload["dtstamp_ms"],
            note=payload.get("note", "")))

    def _set(self, talk: Talk) -> Outcome:
        self.talks[talk.talk_id] = talk
        return Outcome("applied", talk)


# -- time ----------------------------------------------------------------------------------

def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise LocalError(f"{name!r} is not a time zone this machine knows",
                         code=ErrorCode.INVALID_INPUT,
                         hint="an IANA name such as Europe/Moscow, America/New_York or UTC"
                         ) from None


_TIME = re.compile(r"\s*(\d{4}-\d{2}-\d{2})[ T](\d{1,2}:\d{2})(?::(\d{2}))?\s*"
                   r"(?:(Z|UTC|GMT|[+-]\d{2}:?\d{2})|([A-Za-z_][A-Za-z0-9_+-]*"
                   r"(?:/[A-Za-z0-9_+-]+)*))?\s*")


def parse_time(text: str, default_zone: str) -> int:
    """See `_parse_time`; and a time before 1970 or past what calendars show is refused."""
    try:
        ms = _parse_time(text, default_zone)
    except (OverflowError, ValueError):
        raise LocalError(f"{text!r} is out of the range of dates", code=ErrorCode.INVALID_INPUT
                         ) from None
    if not 0 <= ms <= _LAST_MS:
        raise LocalError(f"{text!r} is before 1970 or past the year 9999",
                         code=ErrorCode.INVALID_INPUT)
    return ms


def _parse_time(text: str, default_zone: str) -> int:
    """What an operator writes -> ms since the epoch (UTC).

    "2021-12-07 15:00 UTC", "2021-12-07 10:00 America/New_York", "2021-12-07 18:00+03:00",
    or without a zone, in `default_zone`. A local time that does not exist in its zone
    (skipped when clocks go forward) is refused; one that exists twice (when they go
    back) is refused unless its offset is given, naming both.
    """
    m = _TIME.fullmatch(text)
    if not m:
        raise LocalError(f"{text!r} is not a time like '2021-12-07 15:00 UTC'",
                         code=ErrorCode.INVALID_INPUT,
                         hint="a date, a time, and a zone: UTC, an offset (+03:00) or an"
                              " IANA name (Europe/Moscow)")
    day, hm, seconds, offset, name = m.groups()
    try:
        naive = datetime.fromisoformat(f"{day} {hm.zfill(5)}:{seconds or '00'}")
    except ValueError:
        raise LocalError(f"{text!r}: no such date or time", code=ErrorCode.INVALID_INPUT
                         ) from None
    if offset is not None:
        if offset in ("Z", "UTC", "GMT"):
            return int(naive.replace(tzinfo=UTC).timestamp() * 1000)
        sign = 1 if offset[0] == "+" else -1
        digits = offset[1:].replace(":", "")
        if int(digits[:2]) > 14 or int(digits[2:]) > 59:
            raise LocalError(f"{offset} is not an offset from UTC (at most +14:00, -14:00)",
                             code=ErrorCode.INVALID_INPUT)
        delta = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        return int((naive - sign * delta).replace(tzinfo=UTC).timestamp() * 1000)
    where = name or default_zone
    tz = zone(where)
    first, second = naive.replace(tzinfo=tz, fold=0), naive.replace(tzinfo=tz, fold=1)
    back = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if back != naive:
        raise LocalError(f"{naive:%Y-%m-%d %H:%M} does not exist in {where}: the clocks go"
                         f" forward that night (it reads {back:%H:%M} there)",
                         code=ErrorCode.INVALID_INPUT,
                         hint="choose another time, or give it in UTC")
    if first.utcoffset() != second.utcoffset():
        raise LocalError(f"{naive:%Y-%m-%d %H:%M} happens twice in {where} (the clocks go"
                         f" back): give its offset, {_offset(first)} or {_offset(second)}",
                         code=ErrorCode.INVALID_INPUT,
                         hint=f"e.g. '{naive:%Y-%m-%d %H:%M}{_offset(first)}'")
    return int(first.timestamp() * 1000)


def _offset(moment: datetime) -> str:
    delta = moment.utcoffset() or timedelta(0)
    total = int(delta.total_seconds() // 60)
    sign = "+" if total >= 0 else "-"
    return f"{sign}{abs(total) // 60:02d}:{abs(total) % 60:02d}"


def local(ms: int, zone_name: str) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone(zone_name))


def show_time(ms: int, zones: list[str]) -> str:
    """'2021-12-07 15:00 UTC -- 10:00 Tue in America/New_York, 18:00 Tue in Europe/Moscow'."""
    if not 0 <= ms <= _LAST_MS - 2 * 86_400_000:  # kept out by the schema; and past it
        return "(a time out of the range of dates)"
    utc = datetime.fromtimestamp(ms / 1000, UTC)
    parts = [f"{local(ms, z):%H:%M %a} in {z} ({_offset(local(ms, z))})" for z in zones]
    return f"{utc:%Y-%m-%d %H:%M} UTC -- " + ", ".join(parts)


def until_text(ms: int, now_ms: int) -> str:
    """'in 3 h 20 min', '12 min ago', 'now'."""
    delta = (ms - now_ms) // 60_000
    if delta == 0:
        return "now"
    span = abs(delta)
    text = (f"{span // 1440} d {span % 1440 // 60} h" if span >= 1440 else
            f"{span // 60} h {span % 60} min" if span >= 60 else f"{span} min")
    return f"in {text}" if delta > 0 else f"{text} ago"
