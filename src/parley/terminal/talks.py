"""Scheduled talks at a terminal: the book kept on disk, the exchange sealed, reminders.

The exchange itself is `core.schedule` (iTIP's request, reply, counter,
decline-counter, cancel). Here each message this party makes is applied to
its own book, kept, and sent -- sealed and signed like a message, stored by
the server while the other side is away -- to every verified device of the
other party (never its test set) and to this party's own other devices. A
message that comes is applied with its sender's *party*; what it did
(applied, duplicate, stale, refused) is logged, and the page told.

Times are shown in both parties' zones: each party's as its principal was
registered (the server's directory), this one's overridable (`--timezone`).
Reminders (24 h, 1 h and 10 min before a confirmed talk, and at its start) go
to the page and the log, once each, across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from parley.clock import now_ms
from parley.core import schedule
from parley.core.envelope import Envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.keys import DeviceKeys, DevicePublicKeys, split_device_id
from parley.core.schedule import Talk, TalkBook
from parley.core.trust import Trust
from parley.ics import export_ics, import_request
from parley.terminal.link import ServerLink
from parley.terminal.peers import PeerBook
from parley.terminal.record import Record
from parley.terminal.sealed import SealedOutbox
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.schedule")
REMINDERS_MS = (24 * 3_600_000, 3_600_000, 10 * 60_000, 0)
REMINDER_LATE_MS = 15 * 60_000  # a reminder this late is not given any more
REMINDER_TICK_S = 5.0
PENDING_KEPT_MS = 30 * 86_400_000  # a message about what never came is dropped after this


def _plain(talk_id: str) -> bool:
    return 8 <= len(talk_id) <= 32 and all(c.isascii() and (c.isalnum() or c in "-_")
                                           for c in talk_id)


def _talk_from_json(data: dict[str, Any]) -> Talk:
    counter = data.pop("counter", None)
    return Talk(**data, counter=schedule.Counter(**counter) if counter else None)


class Talks:
    def __init__(self, *, keys: DeviceKeys, me: DevicePublicKeys, store: TerminalStore,
                 link: ServerLink, peers: PeerBook, outbox: SealedOutbox,
                 publish: Callable[[dict[str, Any]], None], zone_override: str | None = None,
                 line_state: Callable[[str], dict[str, Any] | None] = lambda _p: None,
                 record: Record | None = None) -> None:
        self._record = record
        self.keys = keys
        self.me = me
        self.party = me.party
        self.store = store
        self.link = link
        self.peers = peers
        self.outbox = outbox
        self._publish = publish
        self._zone_override = zone_override
        self._line_state = line_state
        if zone_override:
            schedule.zone(zone_override)  # refused at start if unknown
        self.book = TalkBook(self.party, {
            t.talk_id: t for t in (_talk_from_json(json.loads(row))
                                   for row in store.talk_rows())})
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._reminders())

    async def learn_zones(self) -> None:
        """Each party's name and zone, from the directory (once per party)."""
        await self._know(self.party, *self.link.peers)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- zones -------------------------------------------------------------------------

    def zone_of(self, party: str) -> str:
        if party == self.party and self._zone_override:
            return self._zone_override
        name = self.link.principals.get(party, (party, ""))[1]
        try:
            schedule.zone(name)
        except LocalError:
            return "UTC"
        return name

    def name_of(self, party: str) -> str:
        return self.link.principals.get(party, (party, ""))[0] or party

    async def _know(self, *parties: str) -> None:
        for party in parties:
            if party not in self.link.principals:
                with contextlib.suppress(ParleyError):
                    await self.peers.listing(party)

    # -- what this party does ---------------------------------------------------------

    async def request(self, party: str, *, title: str, at: str | None, duration_s: int,
                      media: str = "video", agenda: str = "", note: str = "",
                      talk_id: str | None = None) -> dict[str, Any]:
        if party not in self.link.peers:
            raise LocalError(f"there is no line between {self.party} and {party}",
                             code=ErrorCode.NO_LINE)
        await self._know(self.party, party)
        start = None if at is None else schedule.parse_time(at, self.zone_of(self.party))
        recipients = await self._recipients(party)  # before anything changes here
        message = self._checked(self.book.request, party, title=title, start_ms=start,
                                duration_s=duration_s, media=media, agenda=agenda, note=note,
                                now_ms=now_ms(), talk_id=talk_id)
        return await self._sent(message, recipients)

    async def act(self, op: str, talk_id: str, *, at: str | None = None,
                  duration_s: int | None = None, note: str = "") -> dict[str, Any]:
        now = now_ms()
        talk = self.book.talks.get(talk_id)
        if talk is None:
            raise LocalError(f"no talk {talk_id!r}", code=ErrorCode.INVALID_INPUT,
                             hint="'parley schedule list' shows the talks and their ids")
        await self._know(talk.organizer, talk.attendee)
        start = None if at is None else schedule.parse_time(at, self.zone_of(self.party))
        other = talk.attendee if talk.organizer == self.party else talk.organizer
        recipients = await self._recipients(other)  # before anything changes here
        book = self.book
        if op in ("accept", "decline", "tentative"):
            message = self._checked(book.reply, talk_id, {
                "accept": "accepted", "decline": "declined", "tentative": "tentative"}[op],
                now_ms=now, note=note)
        elif op == "counter":
            if at is None:
                raise LocalError("propose another time with --at", code=ErrorCode.INVALID_INPUT)
            message = self._checked(book.counter, talk_id, start_ms=start,
                                    duration_s=duration_s, now_ms=now, note=note)
        elif op == "take-counter":
            message = self._checked(book.rerequest, talk_id, take_counter=True, now_ms=now,
                                    note=note)
        elif op == "decline-counter":
            message = self._checked(book.decline_counter, talk_id, now_ms=now, note=note)
        elif op == "change":
            message = self._checked(book.rerequest, talk_id, start_ms=start,
                                    duration_s=duration_s, now_ms=now, note=note)
        elif op == "cancel":
            message = self._checked(book.cancel, talk_id, now_ms=now, note=note)
        else:
            raise LocalError(f"unknown action {op!r}", code=ErrorCode.INVALID_INPUT)
        return await self._sent(message, recipients)

    async def _sent(self, message: tuple[str, dict[str, Any]],
                    recipients: list[DevicePublicKeys]) -> dict[str, Any]:
        """Keep the talk as it now is, and send the message to each device; what cannot go
        now waits in the outbox and goes when the server is back (`flush`)."""
        kind, payload = message
        talk = self.book.talks[payload["talk_id"]]
        self._keep(talk, kind, self.party)
        for to in recipients:
            self.outbox.queue(to.device_id, kind, payload)
        await self.flush()
        log.info("%s %s (%s): %s", kind, talk.talk_id, talk.title, talk.state)
        view = self.view(talk)
        self._publish({"t": "schedule", "talk": view})
        return view

    async def flush(self) -> None:
        await self.outbox.flush()

    async def _recipients(self, other: str) -> list[DevicePublicKeys]:
        out = await self.peers.verified_devices([other, self.party], test_sets=False)
        if not any(k.party == other for k in out):
            raise LocalError(f"no device of {other} is verified here: nothing was sent",
                             code=ErrorCode.NOT_VERIFIED,
                             hint=f"verify {other}'s key first (its Safety number)")
        return out

    def _keep(self, talk: Talk, kind: str, by: str) -> None:
        """The talk as it now is, and the decision that made it so into the record."""
        with self.store.batch():
            self.store.keep_talk(talk.talk_id, json.dumps(talk.to_json()), now_ms())
            if self._record is not None:
                self._record.add("schedule", talk_id=talk.talk_id, action=kind[:32], by=by,
                                 state=talk.state[:16], title=talk.title[:200],
                                 start_ms=talk.start_ms, sequence=talk.sequence)

    # -- what comes -------------------------------------------------------------------

    def receive(self, envelope: Envelope, payload: dict[str, Any], trust: Trust) -> None:
        party = split_device_id(envelope.sender)[0]
        if trust is not Trust.VERIFIED:
            log.warning("ignored %s from %s: its key is not verified here", envelope.type,
                        envelope.sender)
            return
        self._apply(party, envelope.type, payload, envelope.sender)

    def _apply(self, party: str, kind: str, payload: dict[str, Any], sender: str) -> None:
        outcome = self.book.apply(party, kind, payload, now_ms())
        if outcome.result == "early":
            # About what has not come yet (the server may deliver out of order): kept, and
            # applied once it has.
            log.info("%s from %s kept for later: %s", kind, sender, outcome.why)
            self.store.keep_pending_talk_message(party, kind, json.dumps(payload), now_ms())
            return
        if outcome.result != "applied":
            log.info("%s from %s: %s (%s)", kind, sender, outcome.result, outcome.why)
            return
        assert outcome.talk is not None
        self._keep(outcome.talk, kind, party)
        log.info("%s from %s: talk %s (%s) is %s", kind, party, outcome.talk.talk_id,
                 outcome.talk.title, outcome.talk.state)
        self._publish({"t": "schedule", "talk": self.view(outcome.talk)})
        self._retry_pending()

    def _retry_pending(self) -> None:
        progress = True
        while progress:
            progress = False
            for ident, party, kind, body, received in self.store.pending_talk_messages():
                if now_ms() - received > PENDING_KEPT_MS:
                    self.store.drop_pending_talk_message(ident)
                    continue
                outcome = self.book.apply(party, kind, json.loads(body), now_ms())
                if outcome.result == "early":
                    continue
                self.store.drop_pending_talk_message(ident)
                if outcome.result == "applied" and outcome.talk is not None:
                    self._keep(outcome.talk, kind, party)
                    self._publish({"t": "schedule", "talk": self.view(outcome.talk)})
                    progress = True

    # -- what is shown ----------------------------------------------------------------

    def view(self, talk: Talk, now: int | None = None) -> dict[str, Any]:
        now = now_ms() if now is None else now
        other = talk.attendee if talk.organizer == self.party else talk.organizer
        zones = [self.zone_of(self.party), self.zone_of(other)]
        out = talk.to_json()
        out.update({
            "mine": talk.organizer == self.party, "with": other,
            "with_name": self.name_of(other), "zones": zones,
            "when": schedule.show_time(talk.start_ms, zones) if talk.start_ms is not None
            else "as soon as possible",
            "until": schedule.until_text(talk.start_ms, now) if talk.start_ms is not None
            else "",
            "line": self._line_state(other),
        })
        if talk.counter is not None:
            out["counter_when"] = schedule.show_time(talk.counter.start_ms, zones) \
                if talk.counter.start_ms is not None else "as soon as possible"
        return out

    def all(self) -> list[dict[str, Any]]:
        now = now_ms()
        talks = sorted(self.book.talks.values(),
                       key=lambda t: (t.start_ms is None, t.start_ms or 0, t.talk_id))
        return [self.view(t, now) for t in talks]

    def export(self, talk_id: str | None = None) -> bytes:
        if talk_id and talk_id not in self.book.talks:
            raise LocalError(f"no talk {talk_id!r}", code=ErrorCode.INVALID_INPUT)
        talks = [self.book.talks[talk_id]] if talk_id else list(self.book.talks.values())
        parties = {p for t in talks for p in (t.organizer, t.attendee)}
        return export_ics(talks, {p: self.zone_of(p) for p in parties},
                          {p: self.name_of(p) for p in parties})

    async def import_ics(self, data: bytes) -> list[dict[str, Any]]:
        """Each event of a calendar file becomes a request to the other party of it."""
        done = []
        events = import_request(data)
        for event in events:
            other = event["attendee"] if event["organizer"] == self.party else \
                event["organizer"]
            if other not in self.link.peers or self.party not in (event["organizer"],
                                                                  event["attendee"]):
                raise LocalError(f"the event {event['title']!r} is between"
                                 f" {event['organizer']} and {event['attendee']}: not a talk"
                                 f" of {self.party}'s lines", code=ErrorCode.INVALID_INPUT)
        for event in events:
            if event["talk_id"] in self.book.talks:
                done.append(self.view(self.book.talks[event["talk_id"]]))
                continue
            other = event["attendee"] if event["organizer"] == self.party else \
                event["organizer"]
            start = event.get("start_ms")
            await self._know(self.party, other)
            # Its id is kept only for a talk this party organizes: the other side may hold
            # that id under its own organizer already.
            keep_id = event["organizer"] == self.party and _plain(event["talk_id"])
            fields: dict[str, Any] = {
                "title": event["title"][:schedule.MAX_TITLE], "start_ms": start,
                "duration_s": event["duration_s"],
                "media": event["media"] if event["media"] in schedule.MEDIA else "video",
                "agenda": event["agenda"][:schedule.MAX_AGENDA],
                "talk_id": event["talk_id"] if keep_id else None}
            recipients = await self._recipients(other)
            message = self._checked(self.book.request, other, now_ms=now_ms(), **fields)
            done.append(await self._sent(message, recipients))
        return done

    def _checked(self, make: Callable[..., tuple[str, dict[str, Any]]], *args: Any,
                 **kwargs: Any) -> tuple[str, dict[str, Any]]:
        try:
            return make(*args, **kwargs)
        except RemoteError as exc:  # what this side asked for does not fit a message
            raise LocalError(exc.message, code=ErrorCode.INVALID_INPUT, hint=exc.hint
                             ) from None

    # -- reminders ----------------------------------------------------------------------

    async def _reminders(self) -> None:
        while True:
            await asyncio.sleep(REMINDER_TICK_S)
            if self.link.connected.is_set() and not set(self.link.peers) | {self.party} <= \
                    set(self.link.principals):
                with contextlib.suppress(ParleyError):
                    await self.learn_zones()
            try:
                self.remind(now_ms())
            except Exception:
                log.exception("reminders failed; tried again shortly")

    def remind(self, now: int) -> list[dict[str, Any]]:
        given = []
        for talk in self.book.talks.values():
            if talk.state != schedule.CONFIRMED or talk.start_ms is None:
                continue
            # Of the reminders due now, the nearest to the start only (a terminal that was
            # off at 10 min before does not say "in 10 min" at the start).
            due_now = [lead for lead in REMINDERS_MS
                       if talk.start_ms - lead <= now < talk.start_ms - lead + REMINDER_LATE_MS
                       and self.store.remind_once(talk.talk_id, lead, talk.sequence)]
            for lead in due_now[-1:]:
                view = self.view(talk, now)
                text = (f"the talk '{talk.title}' with {view['with_name']} starts now"
                        if lead == 0 else
                        f"the talk '{talk.title}' with {view['with_name']} starts"
                        f" {schedule.until_text(talk.start_ms, now)}: {view['when']}")
                log.warning("reminder: %s", text)
                reminder = {"talk": view, "lead_ms": lead, "text": text}
                self._publish({"t": "schedule", "reminder": reminder})
                given.append(reminder)
        return given
