"""The terminal's composition root: keys, pins, server link, calls and media.

`Terminal` is a thin asyncio adapter around the pure `CallBook`. Everything the
book decides comes back as actions, which one worker task carries out in order
(seal and send an envelope, open a peer connection, apply an answer, close).
Inputs reach the book from three places: envelopes delivered by the server
(opened here with the sender's *pinned* key, see `_open`), the media stack's
reports (DTLS up, with the handshake certificate; failure), and the local API
that the UI and the CLI use. A timer task wakes the book at its next deadline.

What an envelope's kind means -- stored or ephemeral, how old it may be, what
tampering with it ends -- comes from `core.kinds`. A stored envelope is
acknowledged to the server only once it has been handled or deliberately
dropped (forged, replayed, malformed, of a kind this version does not know):
one that could not be opened for a passing reason (the directory lookup it
needed timed out) is tried again, and otherwise left on the server for the
next login, never acknowledged unread.

Alarms are kept in the terminal's store until an operator acknowledges them
(`acknowledge_alarms`), counted rather than repeated (`TerminalStore.raise_alarm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCIceServer

from parley.clock import now_ms
from parley.core import notice
from parley.core.call import (
    RECONNECT_GIVE_UP_MS,
    REKEY_MS,
    Action,
    AddRemoteIce,
    Alarm,
    ApplyAnswer,
    CallBook,
    CallChanged,
    CallInfo,
    CallState,
    MediaKeys,
    MediaKind,
    SendEnvelope,
    SetLocalMedia,
    StartMedia,
    StopMedia,
)
from parley.core.encoding import random_id
from parley.core.envelope import Envelope, open_envelope, seal_envelope
from parley.core.errors import (
    ErrorCode,
    LocalError,
    ParleyError,
    RemoteError,
    SecurityAlarm,
    alarm_title,
)
from parley.core.keys import split_device_id
from parley.core.kinds import kind_of
from parley.core.linetest import PAYLOADS as LINETEST_PAYLOADS
from parley.core.messages import PAYLOADS as MESSAGE_PAYLOADS
from parley.core.record import PAYLOADS as RECORD_PAYLOADS
from parley.core.replay import ReplayGuard
from parley.core.schedule import PAYLOADS as SCHEDULE_PAYLOADS
from parley.core.statement import PAYLOADS as STATEMENT_PAYLOADS
from parley.core.trust import Trust, verify_hint
from parley.core.turn import Grant
from parley.media.engine import MediaEngine, MediaSession
from parley.media.ice import IceConfig
from parley.media.robot import RobotMedia, RobotOptions
from parley.terminal.linetest import LineTester, LineTestSettings
from parley.terminal.link import ServerLink
from parley.terminal.messages import Messenger
from parley.terminal.peers import PeerBook
from parley.terminal.record import EXCHANGE_EVERY_S, Record
from parley.terminal.sealed import SealedOutbox
from parley.terminal.statements import Statements
from parley.terminal.store import AlarmRecord, TerminalStore
from parley.terminal.talks import Talks

TURN_GRANT_KEPT_MS = 5 * 60_000  # a line's media policy holds within this of a change
TURN_REQUEST_TIMEOUT_S = 3.0  # a call's setup waits no longer for the server's answer
log = logging.getLogger("parley.terminal")
MAX_ENDED_CALLS = 50
END_KEPT_MS = 10 * 60_000  # a hang-up that could not be sent is sent again this long
END_RETRY_S = 5.0  # ...and, the server connected but not answering, again this soon
RETRY_DELAYS_S = (1.0, 3.0, 10.0)  # an envelope not opened for a passing reason: tried again
PEERS_REFRESH_S = 600.0  # the line peers' directory listings, looked at again for new devices


@dataclass
class TerminalConfig:
    data_dir: Path
    server_url: str | None = None  # default: the one recorded at enrollment
    # Other nodes of the same line host, tried in turn when the current one cannot be
    # reached (each with its own --public-url, on the same database).
    failover_servers: tuple[str, ...] = ()
    require_verified: bool = True
    auto_answer: bool = False
    ui_host: str = "127.0.0.1"
    ui_port: int = 0
    media: str = "robot"  # "robot" (aiortc here) or "browser" (the person's web UI)
    robot: RobotOptions = field(default_factory=RobotOptions)
    # False only for the messages benchmark's baseline (relayed, not stored, by the server).
    messages_stored: bool = True
    # A test set (`--test-set`) takes part in line tests only; see terminal.linetest.
    linetest: LineTestSettings = field(default_factory=LineTestSettings)
    timezone: str | None = None  # this site's zone for talks (default: its principal's)
    record_texts: bool = False  # the record keeps messages' texts, not only their hashes
    record_interval_s: float = EXCHANGE_EVERY_S  # checkpoints exchanged at least this often
    # A call whose media was lost reconnects; this long without media, it ends.
    reconnect_give_up_s: float = RECONNECT_GIVE_UP_MS / 1000
    # Each side renews the key of what it sends this often in an active call (0: never).
    media_rekey_s: float = REKEY_MS / 1000


Listener = Callable[[dict[str, Any]], None]


class Terminal:
    def __init__(self, config: TerminalConfig, engine: MediaEngine | None = None) -> None:
        self.config = config
        self.store = TerminalStore(config.data_dir)
        self.keys = self.store.load_keys()
        self.device_id = self.store.device_id
        server_url = config.server_url or self.store.server_url
        if not server_url:
            raise LocalError("no server URL", code=ErrorCode.BAD_CONFIG,
                             hint="pass --server or enroll first")
        self.me = self.keys.public(self.device_id)
        self.party = self.me.party
        if config.linetest.test_set and config.media != "robot":
            raise LocalError("a test set uses robot media", code=ErrorCode.BAD_CONFIG,
                             hint="drop --media browser: a test set never reaches a person")
        self.book = CallBook(self.keys, self.device_id, require_verified=config.require_verified,
                             test_set=config.linetest.test_set,
                             reconnect_give_up_ms=int(config.reconnect_give_up_s * 1000),
                             frame_layer=engine.frame_layer if engine is not None
                             else config.robot.frame_layer,
                             rekey_ms=int(config.media_rekey_s * 1000))
        self.replay = ReplayGuard(seen=self.store.seen_envelopes(now_ms()))
        self.link = ServerLink([server_url, *config.failover_servers], self.device_id,
                               self.keys, on_deliver=self._on_deliver,
                               on_presence=self._on_presence, on_state=self._on_link_state,
                               on_roster=self._on_roster, on_acked=self.store.confirm_acks)
        self.peers = PeerBook(self.store, self.me, self.link, on_alarm=self._publish_alarm,
                              test_set_name=config.linetest.peer_test_set)
        self.outbox = SealedOutbox(self.store, self.peers, self.link)
        self.record = Record(keys=self.keys, me=self.me, store=self.store, link=self.link,
                             peers=self.peers, outbox=self.outbox, publish=self._publish,
                             alarm=lambda alarm, subject: self._alarm(None, alarm,
                                                                      subject=subject),
                             test_set=config.linetest.test_set, log_texts=config.record_texts,
                             interval_s=config.record_interval_s)
        self.messages = Messenger(
            keys=self.keys, me=self.me, store=self.store, link=self.link, peers=self.peers,
            require_verified=lambda: self.book.require_verified, publish=self._publish,
            alarm=lambda call_id, alarm, subject: self._alarm(call_id, alarm, subject=subject),
            stored=config.messages_stored, listened=lambda: bool(self._listeners),
            record=self.record)
        self.linetests = LineTester(
            host=self, keys=self.keys, me=self.me, store=self.store, link=self.link,
            peers=self.peers, settings=config.linetest, publish=self._publish,
            alarm=lambda alarm, subject: self._alarm(None, alarm, subject=subject),
            spawn=self._spawn_lane_task, record=self.record)
        self.talks = Talks(keys=self.keys, me=self.me, store=self.store, link=self.link,
                           peers=self.peers, outbox=self.outbox, publish=self._publish,
                           zone_override=config.timezone, line_state=self._line_state,
                           record=self.record)
        self.statements = Statements(
            keys=self.keys, me=self.me, store=self.store, peers=self.peers,
            outbox=self.outbox, record=self.record, publish=self._publish,
            peer_parties=lambda: list(self.link.peers), zone_of=self.talks.zone_of,
            name_of=self.talks.name_of)
        self.engine: MediaEngine = engine or RobotMedia(config.robot)
        self.sessions: dict[str, MediaSession] = {}
        self._session_gen: dict[str, int] = {}  # which peer connection of its call each is
        # TURN credentials per peer party, and when they came (core.turn).
        self._turn_grants: dict[str, tuple[Grant, int]] = {}
        self.final_stats: dict[str, dict[str, Any]] = {}
        self._placed_at: dict[str, float] = {}
        # Actions wait in one lane per call (None: not about a call), each lane drained
        # in order by its own task, so one call's slow step (a person deciding whether to
        # allow the camera, a send awaiting the server) holds up no other call.
        self._lanes: dict[str | None, deque[Action]] = {}
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._listeners: set[Listener] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._opening: set[str] = set()  # ids of envelopes being handled now
        self._unsent_ends: list[tuple[SendEnvelope, int]] = []  # (call.end, keep until)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(coro) for coro in
                       (self.link.run(), self._timers(), self._watch_peers())]
        self.messages.start()
        self.linetests.start()
        self.talks.start()
        self.record.start()
        log.info("terminal %s (fingerprint %s) starting; server %s", self.device_id,
                 self.me.fingerprint, self.link.origin)

    async def stop(self) -> None:
        for call in self.book.live():
            with contextlib.suppress(ParleyError):
                self._run(self.book.hangup(call.call_id, now_ms()))
        if self._lane_tasks:  # the hang-ups above, sent before the link goes
            await asyncio.wait(list(self._lane_tasks), timeout=3.0)
        for task in [*self._tasks, *self._lane_tasks]:
            task.cancel()
        for task in [*self._tasks, *self._lane_tasks]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.close()
        await self.messages.stop()
        await self.linetests.stop()
        await self.talks.stop()
        await self.record.stop()
        await self.link.close()
        self.store.close()

    # -- the local API (UI, CLI, demo) -----------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    async def place_call(self, target: str, media: MediaKind = MediaKind.VIDEO, *,
                         test_id: str | None = None) -> CallInfo:
        device = await self.peers.resolve(target)
        trust, keys, _ = await self.peers.trust(device.device_id, fresh=True)
        call_id, actions = self.book.place(keys, trust, media, now_ms(), test_id=test_id)
        self._placed_at[call_id] = time.monotonic()
        log.info("calling %s (%s, %s%s)", keys.device_id, media, trust,
                 f", line test {test_id}" if test_id else "")
        self._run(actions)
        return self.book.info(call_id)

    async def place_test_call(self, target: str, test_id: str) -> CallInfo:
        """A line test's call (test sets only: see terminal.linetest)."""
        return await self.place_call(target, MediaKind.VIDEO, test_id=test_id)

    def _line_state(self, party: str) -> dict[str, Any] | None:
        """The line with `party` as this terminal verified its tests (for a talk's view)."""
        line = next((v for v in self.linetests.view() if party in v["line"].split(":")),
                    None)
        return None if line is None else {"status": line["status"], "age_ms": line["age_ms"],
                                          "reasons": line["reasons"]}

    def in_call(self) -> bool:
        return bool(self.book.live())

    def live_call(self, call_id: str) -> CallInfo | None:
        try:
            return self.book.info(call_id)
        except LocalError:
            return None

    def accept(self, call_id: str) -> CallInfo:
        self._run(self.book.accept(call_id, now_ms()))
        return self.book.info(call_id)

    def decline(self, call_id: str) -> CallInfo:
        self._run(self.book.decline(call_id, now_ms()))
        return self.book.info(call_id)

    def hangup(self, call_id: str) -> CallInfo:
        self._run(self.book.hangup(call_id, now_ms()))
        return self.book.info(call_id)

    def set_media(self, call_id: str, *, audio: bool, video: bool) -> CallInfo:
        self._run(self.book.set_local_media(call_id, audio=audio, video=video))
        return self.book.info(call_id)

    def notify_verified(self, device_id: str) -> None:
        log.info("%s marked verified", device_id)
        self.record.soon()  # a new witness: it sees this log's checkpoint at once
        self._publish({"t": "verified", "device": device_id,
                       "party": split_device_id(device_id)[0]})

    async def call_stats(self, call_id: str) -> dict[str, Any]:
        session = self.sessions.get(call_id)
        stats = await session.stats() if session is not None else \
            self.final_stats.get(call_id, {})
        return dict(stats)

    async def wait_for_call(self, predicate: Callable[[CallInfo], bool], timeout: float
                            ) -> CallInfo:
        """Wait until some call satisfies `predicate` (for the demo and tests)."""
        found: asyncio.Future[CallInfo] = asyncio.get_running_loop().create_future()

        def listener(event: dict[str, Any]) -> None:
            if event.get("t") == "call" and not found.done():
                info = self.book.info(event["call"]["call_id"])
                if predicate(info):
                    found.set_result(info)

        for info in self.book.calls():
            if predicate(info):
                return info
        unsubscribe = self.subscribe(listener)
        try:
            return await asyncio.wait_for(found, timeout)
        finally:
            unsubscribe()

    def status(self) -> dict[str, Any]:
        return {
            "device": self.device_id,
            "party": self.party,
            "fingerprint": self.me.fingerprint,
            "server": self.link.origin,  # the node in use, of:
            "servers": list(self.link.servers),
            "connected": self.link.connected.is_set(),
            "server_error": str(self.link.last_error) if self.link.last_error else None,
            "require_verified": self.book.require_verified,
            "media": self.config.media,
            "lines": self.link.peers,
            "calls": [c.to_json() for c in self.book.calls()],
            "alarms": self.alarms,
            "unread": self.messages.unread(),
            "test_set": self.book.test_set,
            "line_tests": [{k: line[k] for k in ("line", "status", "reasons", "age_ms")}
                           for line in self.linetests.view()],
            "record": self.record.state(),
        }

    @property
    def alarms(self) -> list[dict[str, Any]]:
        """Every open alarm, oldest first (the store keeps them until acknowledged)."""
        return [a.to_json() for a in self.store.alarms()]

    def acknowledge_alarms(self, ids: list[int] | None, note: str = "") -> list[int]:
        """An operator has seen these alarms (None: every open one)."""
        done = self.store.acknowledge_alarms(ids, now_ms(), note)
        if done:
            log.info("alarms %s acknowledged%s", ", ".join(map(str, done)),
                     f" ({note})" if note else "")
            self._publish({"t": "alarms", "alarms": [a.to_json() for a in self.store.alarms()]})
        return done

    # -- media events (MediaEvents) ---------------------------------------------------------

    def media_connected(self, call_id: str, handshake_dtls: str) -> None:
        self._run(self.book.media_connected(call_id, handshake_dtls, now_ms()))

    def media_failed(self, call_id: str, reason: str) -> None:
        log.warning("call %s: %s", call_id, reason)
        self._run(self.book.media_failed(call_id, reason, now_ms()))

    def local_ice(self, call_id: str, candidate: str, mid: str | None, mline: int | None) -> None:
        self._run(self.book.local_ice(call_id, candidate, mid, mline))

    def frames_unprotected(self, call_id: str, detail: str) -> None:
        log.warning("call %s: the peer's frames fail the end-to-end layer: %s", call_id, detail)
        self._run(self.book.frames_unprotected(call_id, detail, now_ms()))

    # -- from the server ----------------------------------------------------------------

    async def _on_deliver(self, raw: dict[str, Any], attempt: int = 0) -> None:
        try:
            envelope = Envelope.from_json(raw)
        except RemoteError as exc:
            log.warning("dropped a malformed envelope: %s", exc)
            ident = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(ident, str) and len(ident) <= 32:
                await self.link.ack(ident)  # dropped for good: do not send it again
            return
        if envelope.id in self._opening:
            return  # being handled already (a retry, and the server delivering it again)
        self._opening.add(envelope.id)
        try:
            handled = await self._handle(envelope, raw, attempt)
        finally:
            self._opening.discard(envelope.id)
        if handled:
            # Only now, whatever its kind: the server deletes what it stored (an ack of an
            # ephemeral one changes nothing), and nothing is acknowledged unread.
            await self.link.ack(envelope.id)

    async def _handle(self, envelope: Envelope, raw: dict[str, Any], attempt: int) -> bool:
        """Handle or deliberately drop one envelope; False: not yet (it stays on the server)."""
        now = now_ms()
        kind = kind_of(envelope.type)
        if envelope.recipient != self.device_id:
            # Nothing in an envelope not meant for us has been checked, its sender least of
            # all: an alarm about the server, and nothing it names is ended or blamed.
            self._alarm(None, SecurityAlarm(
                f"the server delivered an envelope meant for {envelope.recipient}"
                f" (claiming to be from {envelope.sender}) to this device",
                code=ErrorCode.WRONG_RECIPIENT,
                hint="it was dropped unread; the server is misrouting or tampering"))
            return True
        if kind is None:
            log.warning("dropped %s from %s: this terminal does not know that kind",
                        envelope.type, envelope.sender)
            return True
        try:
            if kind.stored and self.replay.seen(envelope.id):
                if self.store.ack_confirmed(envelope.id):
                    raise SecurityAlarm(
                        f"{envelope.type} {envelope.id} from {envelope.sender} was delivered"
                        " again after the server had confirmed it deleted",
                        code=ErrorCode.REPLAY,
                        hint="a replay by the server: it was dropped; report it if it"
                             " repeats")
                # Delivered again because our acknowledgement was lost (a server restart):
                # handled already, so acknowledged again, and no alarm.
                log.info("%s %s from %s came again; acknowledged again", envelope.type,
                         envelope.id, envelope.sender)
                return True
            self.replay.check(envelope, now)
            payload, keys, trust = await self._open(envelope)
            if envelope.type in MESSAGE_PAYLOADS:
                # Its id remembered and the message committed together, and acknowledged
                # only after: a crash anywhere loses nothing and shows nothing twice.
                with self.messages.ms.batch():
                    self.store.remember_envelope(envelope.id, self.replay.remember(envelope),
                                                 now)
                    self.messages.receive(envelope, payload, trust, now)
                return True
            if envelope.type in SCHEDULE_PAYLOADS:
                # The talk kept first: a crash before its id is remembered brings it again,
                # and applying it again is a duplicate -- nothing is lost, nothing doubled.
                self.talks.receive(envelope, payload, trust)
                self.store.remember_envelope(envelope.id, self.replay.remember(envelope), now)
                return True
            if envelope.type in STATEMENT_PAYLOADS:
                # Kept and recorded first, as a talk is: applying it again is a duplicate.
                self.statements.receive(envelope, payload, trust)
                self.store.remember_envelope(envelope.id, self.replay.remember(envelope), now)
                return True
            if envelope.type in RECORD_PAYLOADS:
                with self.store.batch():
                    self.record.receive(envelope, payload, keys, trust)
                    self.store.remember_envelope(envelope.id, self.replay.remember(envelope),
                                                 now)
                return True
            if envelope.type in LINETEST_PAYLOADS:
                self.store.remember_envelope(envelope.id, self.replay.remember(envelope), now)
                self.linetests.receive(envelope, payload, keys, trust)
                return True
            self.store.remember_envelope(envelope.id, self.replay.remember(envelope), now)
        except SecurityAlarm as alarm:
            self._tampered(envelope, alarm)
            return True
        except RemoteError as exc:
            if exc.code is not ErrorCode.SERVER_ERROR:
                log.warning("dropped %s from %s: %s", envelope.type, envelope.sender, exc)
                return True
            if attempt < len(RETRY_DELAYS_S):  # the directory did not answer: again shortly
                log.warning("could not open %s from %s yet (%s); trying again in %.0f s",
                            envelope.type, envelope.sender, exc, RETRY_DELAYS_S[attempt])
                self._retry(raw, attempt)
            else:  # left on the server: it comes again at the next login
                log.warning("could not open %s from %s: %s; it stays on the server",
                            envelope.type, envelope.sender, exc)
            return False
        except ParleyError as exc:
            log.warning("dropped %s from %s: %s", envelope.type, envelope.sender, exc)
            return True
        if envelope.type == notice.TAMPER:
            try:
                self._run(self.book.tamper_reported(envelope.sender, payload, envelope.time_ms,
                                                    now))
            except RemoteError as exc:
                log.warning("bad tamper notice from %s: %s", envelope.sender, exc)
        elif kind.call_signaling:
            try:
                actions = self.book.receive(keys, trust, envelope.type, payload, now,
                                            sent_ms=envelope.time_ms)
            except SecurityAlarm as alarm:
                self._alarm(payload.get("call_id") if isinstance(payload.get("call_id"), str)
                            else None, alarm, subject=envelope.sender)
                return True
            except ParleyError as exc:
                log.warning("bad %s from %s: %s", envelope.type, envelope.sender, exc)
                return True
            self._run(actions)
        return True

    def _retry(self, raw: dict[str, Any], attempt: int) -> None:
        async def again() -> None:
            await asyncio.sleep(RETRY_DELAYS_S[attempt])
            await self._on_deliver(raw, attempt + 1)

        self._spawn_lane_task(again())

    async def _open(self, envelope: Envelope) -> tuple[dict[str, Any], Any, Trust]:
        """Open with the key we trust for the sender; tell a changed key from a forgery."""
        split_device_id(envelope.sender)
        trust, keys, _ = await self.peers.trust(envelope.sender)
        try:
            return open_envelope(envelope, self.keys, self.device_id, keys), keys, trust
        except SecurityAlarm as alarm:
            if alarm.code is not ErrorCode.BAD_SIGNATURE:
                raise
            # Perhaps the directory changed since we looked: look again, once.
            trust2, keys2, listed = await self.peers.trust(envelope.sender, fresh=True)
            if listed is not None and listed.verify(envelope.signature, envelope.signed_bytes()):
                if trust2 is Trust.CHANGED:
                    raise SecurityAlarm(
                        f"the key of {envelope.sender} has changed since you verified it;"
                        f" its {envelope.type} was refused",
                        code=ErrorCode.KEY_CHANGED,
                        hint=verify_hint(listed.party, changed=True)) from alarm
                return open_envelope(envelope, self.keys, self.device_id, keys2), keys2, trust2
            raise

    def _tampered(self, envelope: Envelope, alarm: SecurityAlarm) -> None:
        self._run(self.book.envelope_tampered(envelope.sender, envelope.id, envelope.type,
                                              alarm, self.store.pin(envelope.sender), now_ms()))

    def _on_presence(self, device: str, online: bool) -> None:
        self.peers.set_online(device, online)
        if online and self._unsent_ends:
            self._send_unsent_ends(device)
        self._publish({"t": "presence", "device": device,
                       "party": split_device_id(device)[0], "online": online})

    def _on_link_state(self, up: bool, why: str) -> None:
        self._publish({"t": "link", "connected": up, "detail": why})
        if up:
            # Asked afresh: the server may have restarted with another TURN secret.
            for party, (grant, _at) in list(self._turn_grants.items()):
                self._turn_grants[party] = (grant, -TURN_GRANT_KEPT_MS)
            # A device gained while we were away is told at once.
            self._spawn_lane_task(self._refresh_peers())
            self.messages.link_up()
            self._send_unsent_ends(None)
            self._spawn_lane_task(self.outbox.flush())
            self.record.soon()
            self._run(self.book.link_up(now_ms()))

    def _send_unsent_ends(self, device: str | None) -> None:
        """Send again the hang-ups kept for `device` (None: all of them)."""
        keep = []
        for action, until in self._unsent_ends:
            if until <= now_ms():
                continue
            if device is not None and action.to.device_id != device:
                keep.append((action, until))
                continue
            # Under a new id: the first may have gone after all.
            self._spawn_lane_task(self._send(dataclasses.replace(
                action, envelope_id=random_id()), keep_until=until))
        self._unsent_ends = keep

    async def _resend_ends_later(self) -> None:
        await asyncio.sleep(END_RETRY_S)
        self._send_unsent_ends(None)

    def _on_roster(self, party: str) -> None:
        """The server says `party`'s devices changed: look (its word is not trusted)."""
        self._spawn_lane_task(self._refresh_peers([party]))

    async def _refresh_peers(self, parties: list[str] | None = None) -> None:
        for party in parties if parties is not None else list(self.link.peers):
            try:
                await self.peers.refresh(party)
            except ParleyError as exc:
                log.info("could not look at %s's devices: %s", party, exc)

    async def _watch_peers(self) -> None:
        while True:
            await asyncio.sleep(PEERS_REFRESH_S)
            if self.link.connected.is_set():
                await self._refresh_peers()

    # -- carrying out actions -----------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, CallChanged | Alarm):
                self._execute_now(action)  # what the person sees is never queued
                continue
            if isinstance(action, StopMedia):
                # Ending a call does not wait for its media setup: closing the session
                # is what ends a setup that waits on a person or a peer.
                self._spawn_lane_task(self._stop_media(action.call_id))
                continue
            key = action.call_id
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = deque()
                self._spawn_lane_task(self._drain(key, lane))
            lane.append(action)
        self._wake.set()

    def _spawn_lane_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _drain(self, key: str | None, lane: deque[Action]) -> None:
        try:
            while lane:
                action = lane.popleft()
                try:
                    await self._execute(action)
                except Exception:
                    log.exception("failed to carry out %s", type(action).__name__)
        finally:
            if self._lanes.get(key) is lane:
                del self._lanes[key]

    def _execute_now(self, action: CallChanged | Alarm) -> None:
        try:
            if isinstance(action, CallChanged):
                self._call_changed(action.call)
            else:
                self._alarm(action.call_id, SecurityAlarm(action.message, code=action.code,
                                                          hint=action.hint),
                            subject=action.subject)
        except Exception:
            log.exception("failed to carry out %s", type(action).__name__)

    async def _execute(self, action: Action) -> None:
        if isinstance(action, SendEnvelope):
            await self._send(action)
        elif isinstance(action, StartMedia):
            await self._start_media(action)
        elif isinstance(action, ApplyAnswer):
            await self._with_session(action.call_id, lambda s: s.apply_answer(action.sdp))
        elif isinstance(action, AddRemoteIce):
            if self._session_gen.get(action.call_id, 0) != action.gen:
                return  # for another peer connection of the call than the one open
            # One unusable candidate is not worth the call: the others may work.
            await self._with_session(action.call_id, lambda s: s.add_ice(
                action.candidate, action.mid, action.mline), fatal=False)
        elif isinstance(action, SetLocalMedia):
            session = self.sessions.get(action.call_id)
            if session is not None:
                session.set_local_media(action.audio, action.video)
        elif isinstance(action, MediaKeys):
            session = self.sessions.get(action.call_id)
            if session is not None and self._session_gen.get(action.call_id, 0) == action.gen:
                session.set_keys(action.send, action.receive)
        elif isinstance(action, StopMedia | CallChanged | Alarm):
            raise AssertionError(f"{type(action).__name__} is carried out at once, in _run")

    async def _send(self, action: SendEnvelope, keep_until: int | None = None) -> None:
        envelope = seal_envelope(self.keys, self.device_id, action.to, action.type,
                                 action.payload, now_ms(), action.envelope_id)
        kind = kind_of(action.type)
        try:
            await self.link.send_envelope(envelope, ephemeral=kind is None or not kind.stored)
        except RemoteError as exc:
            if action.type == "call.end" and exc.code in (ErrorCode.SERVER_ERROR,
                                                          ErrorCode.RECIPIENT_OFFLINE):
                # A hang-up, decline or cancel must arrive: the other side would hold the
                # call. Kept, and sent again (sealed afresh) once the server is back and
                # the peer with it.
                log.warning("could not send call.end to %s (%s); it goes when the server is"
                            " back", action.to.device_id, exc)
                until = keep_until if keep_until is not None else now_ms() + END_KEPT_MS
                self._unsent_ends.append((action, until))
                if self.link.connected.is_set():  # no answer, though connected: again soon
                    self._spawn_lane_task(self._resend_ends_later())
                return
            log.warning("could not send %s to %s: %s", action.type, action.to.device_id, exc)
            if exc.code is ErrorCode.QUOTA_EXCEEDED:
                self._publish({"t": "problem", "problem": {**exc.as_dict(),
                                                           "about": action.to.device_id}})
            if action.call_id is not None:
                self._run(self.book.delivery_failed(action.call_id, exc.code, now_ms()))

    async def _start_media(self, action: StartMedia) -> None:
        if self.book.info(action.call_id).state is CallState.ENDED:
            return  # ended while this waited its turn: no camera for a call that is over
        if action.restart:  # a reconnection: the lost peer connection goes first
            await self._stop_media(action.call_id)
            call = self.book.get(action.call_id)
            if call.gen != action.gen or call.state is CallState.ENDED:
                return  # a newer attempt has been asked for meanwhile, or it ended
        try:
            ice = await self._call_ice(self.book.get(action.call_id).peer.party)
        except LocalError as exc:
            self._run(self.book.media_failed(action.call_id, exc.message, now_ms(),
                                             gen=action.gen))
            return
        call = self.book.get(action.call_id)
        if call.gen != action.gen or call.state is CallState.ENDED:
            return  # replaced, or ended, while the credentials came
        session = self.engine.open(action.call_id, action.media, self, ice)
        self.sessions[action.call_id] = session
        self._session_gen[action.call_id] = action.gen
        try:
            if action.remote_sdp is None:
                desc = await session.create_offer()
            else:
                desc = await session.create_answer(action.remote_sdp)
            self._run(self.book.local_description(action.call_id, desc.sdp, desc.dtls, now_ms(),
                                                  gen=action.gen))
        except SecurityAlarm as alarm:
            self._run(self.book.intercepted(action.call_id, alarm, now_ms()))
        except Exception as exc:
            log.exception("call %s: media setup failed", action.call_id)
            if self.book.get(action.call_id).gen == action.gen:
                self._run(self.book.media_failed(action.call_id, f"media setup failed: {exc}",
                                                 now_ms(), gen=action.gen))

    async def _call_ice(self, party: str) -> IceConfig | None:
        """ICE for a call with `party`: ours, plus the TURN relays the server issues for
        that line, relayed only if the line says so. A grant is kept for a few minutes
        (a line's policy, changed by its host, holds within them) and, while its
        credentials last, stands in when the server cannot be asked. None: ours as they
        are (a server that issues no relays, or one too old to know of them)."""
        held = self._turn_grants.get(party)
        now = now_ms()
        if held is None or now > held[1] + TURN_GRANT_KEPT_MS:
            try:
                grant = await self.link.turn(party, timeout=TURN_REQUEST_TIMEOUT_S)
            except RemoteError as exc:
                if exc.code is ErrorCode.UNKNOWN_TYPE:
                    # An older server: it issues none, and knows no policy but "any".
                    log.info("the line server issues no TURN credentials (an older version)")
                    self._turn_grants[party] = (Grant((), 0, "any"), now)
                    return None
                if held is None or (held[0].servers
                                    and now >= held[0].expires_ms - TURN_GRANT_KEPT_MS):
                    # Without the line's policy, a call could offer this site's addresses
                    # on a line meant to hide them: it fails instead, saying why.
                    raise LocalError(f"the line server could not say how to reach {party}"
                                     f" ({exc.message})", code=ErrorCode.SERVER_ERROR,
                                     hint="call again once the server is back") from None
                log.warning("the line server did not answer for TURN credentials (%s);"
                            " using what it said before", exc.message)
            else:
                held = self._turn_grants[party] = (grant, now)
        grant = held[0]
        base = self.engine.ice
        servers = [RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
                   for s in grant.servers]
        if grant.relay_only and not servers and not base.has_turn():
            raise LocalError("this line's calls must go through a TURN relay, and the line"
                             " server issues none", code=ErrorCode.BAD_CONFIG,
                             hint="the line host must configure its TURN server"
                                  " (parley server --turn ... --turn-secret-file ...)")
        if not servers and not grant.relay_only:
            return None
        return base.with_turn(servers, grant.relay_only)

    async def _with_session(self, call_id: str,
                            op: Callable[[MediaSession], Awaitable[None]], *,
                            fatal: bool = True) -> None:
        session = self.sessions.get(call_id)
        if session is None:
            return
        try:
            await op(session)
        except Exception as exc:
            log.warning("call %s: media error: %s", call_id, exc)
            if fatal:
                self._run(self.book.media_failed(call_id, f"media error: {exc}", now_ms()))

    async def _stop_media(self, call_id: str) -> None:
        session = self.sessions.get(call_id)
        if session is None:
            return
        # Keep the session listed until it is closed (its recording finished) and its
        # last stats are recorded, so call_stats never falls between the two.
        try:
            await session.close()
            with contextlib.suppress(Exception):
                self.final_stats[call_id] = await session.stats()
        except Exception:
            log.exception("call %s: closing its media failed", call_id)
        finally:
            if self.sessions.get(call_id) is session:
                self.sessions.pop(call_id, None)

    def _call_changed(self, info: CallInfo) -> None:
        data = info.to_json()
        placed = self._placed_at.get(info.call_id)
        if info.state is CallState.ACTIVE:
            log.info("call %s with %s is ACTIVE and verified=%s; SAS %s; media %s",
                     info.call_id, info.peer, info.verified, info.sas, info.media_protection)
        elif info.state is CallState.RECONNECTING:
            log.warning("call %s with %s: media lost, reconnecting (peer connection %d)",
                        info.call_id, info.peer, info.gen)
        elif info.state is CallState.ENDED:
            self._session_gen.pop(info.call_id, None)
            log.info("call %s with %s ended: %s%s", info.call_id, info.peer, info.end_reason,
                     f" ({info.alarm})" if info.alarm else "")
            with self.store.batch():
                self.store.log_call(data)
                self.record.call(data)
            self.record.soon()  # checkpoints are exchanged after every call
            self._placed_at.pop(info.call_id, None)
            # A line runs for years: keep a bounded window of ended calls in memory
            # (the call log on disk has them all).
            self.book.forget_ended(keep=MAX_ENDED_CALLS)
            known = {c.call_id for c in self.book.calls()}
            for stale in set(self.final_stats) - known:
                del self.final_stats[stale]
        else:
            log.info("call %s with %s: %s", info.call_id, info.peer, info.state)
        if placed is not None:
            data["since_placed_ms"] = round((time.monotonic() - placed) * 1000, 1)
        self._publish({"t": "call", "call": data})
        if (info.state is CallState.RINGING and info.direction == "incoming"
                and not self.config.auto_answer and not self.book.test_set
                and getattr(self.engine, "page_open", True) is False):
            log.warning("a call from %s is ringing, but no page of this terminal is open to"
                        " take it: open the address 'parley ui' prints", info.peer)
        if (info.state is CallState.RINGING and info.direction == "incoming"
                and (self.config.auto_answer or self.book.test_set)):
            # A test set rings only for test calls (the book refuses others) and takes them.
            try:
                self.accept(info.call_id)
            except LocalError as exc:
                log.warning("auto-answer refused: %s", exc)

    def _alarm(self, call_id: str | None, alarm: ParleyError, *,
               subject: str | None = None) -> None:
        record = self.store.raise_alarm(
            code=str(alarm.code), title=alarm_title(alarm.code, about_call=call_id is not None),
            message=alarm.message, hint=alarm.hint, call_id=call_id, subject=subject,
            now_ms=now_ms())
        if record.count == 1:
            self.record.add("alarm", code=record.code[:32], message=record.message[:600],
                            subject=record.subject, call_id=record.call_id)
        self._publish_alarm(record)

    def _publish_alarm(self, record: AlarmRecord) -> None:
        if record.count == 1 or record.count in (10, 100, 1000) or record.count % 10_000 == 0:
            log.error("SECURITY ALARM [%s] %s -- %s%s", record.code, record.message, record.hint,
                      f" ({record.count} times)" if record.count > 1 else "")
        self._publish({"t": "alarm", "alarm": record.to_json()})

    def _publish(self, event: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed")

    async def _timers(self) -> None:
        while True:
            deadline = self.book.next_deadline()
            timeout = None if deadline is None else max(0.0, (deadline - now_ms()) / 1000)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            self._run_timers()

    def _run_timers(self) -> None:
        actions = self.book.handle_timer(now_ms())
        if actions:
            self._run(actions)
