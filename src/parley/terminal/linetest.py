"""Line tests at a terminal: run one, answer one, schedule them, and see the lines' state.

What a line test is, and its record, is `core.linetest`. Here:

* `LineTester.run` (at a test set) places the test call to the other site's
  test set, lets it run, does the message round trip that brings the callee's
  signed part, hangs up, countersigns, keeps the record, files it with the
  server and sends it, sealed, to the callee. A test that fails before both
  ends signed (the other test set offline, busy, not verified...) is kept
  here as red with its reason; nothing unsigned is filed.
* At the callee, a ``linetest.ping`` for the test call in progress is
  answered with what this end measured, signed; the ``linetest.result`` that
  follows is checked (both signatures, against keys verified here) and kept.
* The scheduler (test sets with an interval) tests each of its lines every
  interval, give or take a tenth, and skips a line whose other test set has
  just tested it; a line is never tested twice at once (here, a second run
  is refused; there, a second test call gets "busy").
* `view` is this terminal's own view of its lines, from results it verified
  itself; beside it, what the server shows. Where the server shows a line
  green or amber but cannot produce a result signed by both ends with keys
  verified here, that is a security alarm: a hostile server cannot paint a
  dead line green.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from parley.clock import now_ms
from parley.core import linetest, schema
from parley.core.call import CallInfo, CallState
from parley.core.encoding import random_id
from parley.core.envelope import Envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError, SecurityAlarm
from parley.core.keys import DeviceKeys, DevicePublicKeys, split_device_id
from parley.core.trust import Trust
from parley.terminal.link import ServerLink
from parley.terminal.peers import PeerBook
from parley.terminal.record import Record
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.linetest")
CONNECT_WAIT_S = 45.0  # placing the test call until it is verified, or given up
PONG_WAIT_S = 15.0
HISTORY_MS = 90 * linetest.DAY_MS
BUSY_RETRY_S = (1.0, 4.0)


@dataclass
class LineTestSettings:
    test_set: bool = False
    # The interval this test set tests at (signed in each result, by both ends: the line
    # is red after twice it without one), and whether it schedules tests itself.
    every_s: float = float(linetest.DEFAULT_INTERVAL_S)
    scheduled: bool = False
    duration_s: float = linetest.DEFAULT_DURATION_S
    thresholds: linetest.Thresholds = field(default_factory=linetest.Thresholds)
    peer_test_set: str = linetest.TEST_SET_DEVICE  # the other site's test set's device name
    check_server_s: float = 60.0  # how often what the server shows is checked


class CallHost(Protocol):
    """What a line test needs of its terminal (`Terminal` is one)."""

    async def place_test_call(self, target: str, test_id: str) -> CallInfo: ...

    async def wait_for_call(self, predicate: Callable[[CallInfo], bool], timeout: float
                            ) -> CallInfo: ...

    async def call_stats(self, call_id: str) -> dict[str, Any]: ...

    def hangup(self, call_id: str) -> CallInfo: ...

    def live_call(self, call_id: str) -> CallInfo | None: ...

    def in_call(self) -> bool:
        """Is this terminal in a call now (a line test it answers, say)?"""


def measured_from(stats: dict[str, Any], info: CallInfo) -> dict[str, Any]:
    """What one end measured of the media it received, from its media session's stats."""
    inbound = stats.get("inbound") or {}
    audio, video = inbound.get("audio") or {}, inbound.get("video") or {}

    def count(value: Any) -> int:
        return max(0, int(value)) if isinstance(value, int | float) else 0

    out: dict[str, Any] = {
        "audio_packets": count(audio.get("packets")), "audio_lost": count(audio.get("lost")),
        "video_packets": count(video.get("packets")), "video_lost": count(video.get("lost")),
        "audio_frames": count((stats.get("audio") or {}).get("frames")),
        "video_frames": count((stats.get("video") or {}).get("frames")),
        "verified": bool(info.verified),
        "jitter_us": count(round(float(audio.get("jitter_ms") or 0) * 1000)),
    }
    if info.sas:
        out["sas"] = info.sas
    if info.active_ms is not None:
        out["setup_ms"] = max(0, info.active_ms - info.started_ms)
    if isinstance(stats.get("rtt_ms"), int | float):
        out["rtt_ms"] = count(round(stats["rtt_ms"]))
    return out


class LineTester:
    def __init__(self, *, host: CallHost, keys: DeviceKeys, me: DevicePublicKeys,
                 store: TerminalStore, link: ServerLink, peers: PeerBook,
                 settings: LineTestSettings, publish: Callable[[dict[str, Any]], None],
                 alarm: Callable[[ParleyError, str | None], None],
                 spawn: Callable[[Any], None], record: Record | None = None) -> None:
        self.host = host
        self._record = record
        self.keys = keys
        self.me = me
        self.store = store
        self.link = link
        self.peers = peers
        self.settings = settings
        self._publish = publish
        self._alarm = alarm
        self._spawn = spawn
        self._running: dict[str, str] = {}  # line -> test id
        self._pongs: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._server: dict[str, dict[str, Any]] = {}  # line -> what the server shows
        self._alarmed: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def party(self) -> str:
        return self.me.party

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._watch_server()))
        if self.settings.test_set and self.settings.scheduled:
            self._tasks.append(asyncio.ensure_future(self._schedule(self.settings.every_s)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- running one (the caller) ----------------------------------------------------

    def _line_of(self, line: str | None) -> tuple[str, str]:
        """(line id, the other party) for `line` ('A:B'), or this site's only line."""
        if line is None:
            peers = list(self.link.peers)
            if len(peers) != 1:
                raise LocalError(f"this site has {len(peers)} lines; name one",
                                 code=ErrorCode.INVALID_STATE,
                                 hint="--line " + " or ".join(
                                     f"{self.party}:{p}" for p in peers) if peers else
                                 "is the terminal connected to its server?")
            return linetest.line_id(self.party, peers[0]), peers[0]
        try:
            a, b = linetest.parse_line(line)
        except ParleyError as exc:
            raise LocalError(exc.message, code=ErrorCode.BAD_CONFIG, hint=exc.hint) from None
        if self.party not in (a, b):
            raise LocalError(f"this terminal is {self.me.device_id}: the line {line} is not"
                             f" one of {self.party}'s", code=ErrorCode.NO_LINE,
                             hint="run the test from one of the line's two test sets")
        return linetest.line_id(a, b), b if a == self.party else a

    @property
    def interval_s(self) -> int:
        return max(1, round(self.settings.every_s))

    async def run(self, line: str | None = None, *, callee: str | None = None,
                  duration_s: float | None = None) -> dict[str, Any]:
        """Run one line test from this test set; its result (status, reasons, figures)."""
        if not self.settings.test_set:
            raise LocalError(f"{self.me.device_id} is not a test set",
                             code=ErrorCode.INVALID_STATE,
                             hint="line tests run between test sets ('parley terminal"
                                  " --test-set'); give --data of this site's test set")
        lid, other = self._line_of(line)
        if lid in self._running:
            raise LocalError(f"a line test of {lid} is running already"
                             f" ({self._running[lid]})", code=ErrorCode.BUSY,
                             hint="wait for it: its result comes within a minute")
        target = callee or f"{other}/{self.settings.peer_test_set}"
        if split_device_id(target)[0] != other:
            raise LocalError(f"{target} is not a device of {other}", code=ErrorCode.BAD_CONFIG)
        test_id = random_id()
        self._running[lid] = test_id
        try:
            return await self._run(lid, target, test_id,
                                   self.settings.duration_s if duration_s is None
                                   else duration_s, self.interval_s)
        finally:
            self._running.pop(lid, None)

    async def _run(self, lid: str, target: str, test_id: str, duration_s: float,
                   interval_s: int) -> dict[str, Any]:
        started = now_ms()
        self._progress(lid, test_id, "calling", f"calling {target}")
        await self._file_pending()
        try:
            placed = await self.host.place_test_call(target, test_id)
        except LocalError as exc:
            if exc.code is ErrorCode.BUSY:
                raise  # this test set is answering a test itself: not a failure of the line
            return self._failed(lid, test_id, target, started, f"could not call {target}: {exc}")
        except ParleyError as exc:
            return self._failed(lid, test_id, target, started, f"could not call {target}: {exc}")
        try:
            info = await self.host.wait_for_call(
                lambda c: c.call_id == placed.call_id and c.state in (CallState.ACTIVE,
                                                                      CallState.ENDED),
                CONNECT_WAIT_S)
        except TimeoutError:
            self.host.hangup(placed.call_id)
            return self._failed(lid, test_id, target, started,
                                f"the test call to {target} was not up within"
                                f" {CONNECT_WAIT_S:.0f} s")
        if info.state is CallState.ENDED:
            return self._failed(lid, test_id, target, started, _ended(info, target))
        self._progress(lid, test_id, "in call", f"verified test call with {target}, SAS"
                                                f" {info.sas}; {duration_s:g} s")
        with contextlib.suppress(TimeoutError):
            ended = await self.host.wait_for_call(
                lambda c: c.call_id == info.call_id and c.state is CallState.ENDED, duration_s)
            return self._failed(lid, test_id, target, started, _ended(ended, target))
        info = self.host.live_call(info.call_id) or info
        mine = measured_from(await self.host.call_stats(info.call_id), info)
        self._progress(lid, test_id, "message round trip", f"ping to {target}")
        try:
            trust, keys, _ = await self.peers.trust(target)
            if trust is not Trust.VERIFIED:
                raise LocalError(f"{target}'s key is not verified here",
                                 code=ErrorCode.NOT_VERIFIED)
            pong, rtt_ms = await self._round_trip(keys, test_id, info.call_id, interval_s)
        except (ParleyError, TimeoutError) as exc:
            self.host.hangup(info.call_id)
            why = str(exc) if isinstance(exc, ParleyError) else \
                f"no answer to the message round trip within {PONG_WAIT_S:.0f} s"
            return self._failed(lid, test_id, target, started, why)
        mine["message_rtt_ms"] = rtt_ms
        self.host.hangup(info.call_id)
        try:
            record = linetest.countersign(self.keys, {
                "v": linetest.VERSION, "test_id": test_id, "call_id": info.call_id,
                "line": lid, "caller": self.me.device_id, "callee": target,
                "started_ms": started, "ended_ms": now_ms(),
                "duration_ms": int(duration_s * 1000), "interval_s": interval_s,
                "callee_part": pong["part"], "callee_sig": pong["sig"],
                "caller_measured": mine})
            linetest.verify_record(record, self.me, keys)
        except (ParleyError, ValueError) as exc:  # the callee's part is not about this test
            why = exc.message if isinstance(exc, ParleyError) else "its part is not valid text"
            self._alarm(SecurityAlarm(f"line test {test_id}: {target} answered with a part"
                                      f" that does not hold: {why}",
                                      code=ErrorCode.BAD_SIGNATURE,
                                      hint="the test counts as failed"), target)
            return self._failed(lid, test_id, target, started, f"bad answer: {why}")
        status, reasons = linetest.evaluate(record, self.settings.thresholds)
        self.store.add_linetest(test_id, lid, record["ended_ms"], status, reasons, record,
                                "caller")
        filed = await self._file(record)
        for to in await self._result_recipients(keys):
            try:
                await self._send(to, "linetest.result", {"record": record})
            except ParleyError as exc:
                log.warning("could not send line test %s to %s: %s", test_id, to.device_id,
                            exc)
        return self._result(lid, record, status, reasons, filed)

    async def _result_recipients(self, callee: DevicePublicKeys) -> list[DevicePublicKeys]:
        """The callee, and every other device of both sites verified here: each site holds
        every result, sealed to it, and checks it itself."""
        others = await self.peers.verified_devices([callee.party, self.party], test_sets=True)
        return [callee, *(k for k in others if k.device_id != callee.device_id)]

    async def _round_trip(self, keys: DevicePublicKeys, test_id: str, call_id: str,
                          interval_s: int) -> tuple[dict[str, Any], int]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pongs[test_id] = (keys.device_id, future)
        try:
            sent = time.monotonic()
            await self._send(keys, "linetest.ping", {"test_id": test_id, "call_id": call_id,
                                                     "interval_s": interval_s})
            pong = await asyncio.wait_for(future, PONG_WAIT_S)
            return pong, round((time.monotonic() - sent) * 1000)
        finally:
            self._pongs.pop(test_id, None)

    async def _file(self, record: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await self.link.file_linetest(record)
        except ParleyError as exc:
            if exc.code is not ErrorCode.SERVER_ERROR:  # refused: filing it again won't help
                log.error("the server refused line test %s: %s", record["test_id"], exc)
                self.store.linetest_filed(record["test_id"])
            else:
                log.warning("line test %s not filed yet: %s", record["test_id"], exc)
            return {"filed": False, "error": str(exc)}
        self.store.linetest_filed(record["test_id"])
        return {"filed": True, "server_status": reply.get("status")}

    async def _file_pending(self) -> None:
        for record in self.store.unfiled_linetests():
            if not self.link.connected.is_set():
                return
            await self._file(record)

    def _failed(self, lid: str, test_id: str, target: str, started: int, why: str
                ) -> dict[str, Any]:
        log.warning("line test %s of %s failed: %s", test_id, lid, why)
        ended = now_ms()
        self.store.add_linetest(test_id, lid, ended, linetest.RED, [why], None, "caller")
        result = {"line": lid, "test_id": test_id, "status": linetest.RED, "reasons": [why],
                  "caller": self.me.device_id, "callee": target, "started_ms": started,
                  "ended_ms": ended, "signed_by": [], "verified": False, "filed": False}
        self._told(result)
        return result

    def _result(self, lid: str, record: dict[str, Any], status: str, reasons: list[str],
                filed: dict[str, Any]) -> dict[str, Any]:
        result = {"line": lid, "test_id": record["test_id"], "status": status,
                  "reasons": reasons, "caller": record["caller"], "callee": record["callee"],
                  "started_ms": record["started_ms"], "ended_ms": record["ended_ms"],
                  "signed_by": [record["callee"], record["caller"]], **filed,
                  **linetest.figures(record)}
        log.info("line test %s of %s: %s%s", record["test_id"], lid, status,
                 f" ({'; '.join(reasons)})" if reasons else "")
        self._told(result)
        return result

    def _told(self, result: dict[str, Any]) -> None:
        """A result: into the record, and to the pages."""
        if self._record is not None:
            self._record.add("linetest", test_id=result["test_id"], line=result["line"][:100],
                             status=result["status"],
                             reasons=[r[:200] for r in result["reasons"][:32]])
        self._publish({"t": "linetest", "result": result})

    def _progress(self, lid: str, test_id: str, step: str, detail: str) -> None:
        log.info("line test %s of %s: %s", test_id, lid, detail)
        self._publish({"t": "linetest", "progress": {"line": lid, "test_id": test_id,
                                                      "step": step, "detail": detail}})

    async def _send(self, to: DevicePublicKeys, type_: str, payload: dict[str, Any]) -> None:
        await self.link.send_sealed(to, type_, payload)

    # -- answering one (the callee), and results coming in ----------------------------

    def receive(self, envelope: Envelope, payload: dict[str, Any], keys: DevicePublicKeys,
                trust: Trust) -> None:
        """A linetest.* envelope, opened with the sender's trusted key."""
        sender = envelope.sender
        schema.validate(payload, linetest.PAYLOADS[envelope.type], what=envelope.type)
        if trust is not Trust.VERIFIED:
            log.warning("ignored %s from %s: its key is not verified here", envelope.type,
                        sender)
            return
        if envelope.type == "linetest.ping":
            self._spawn(self._answer(keys, payload))
        elif envelope.type == "linetest.pong":
            waiting = self._pongs.get(payload["test_id"])
            if waiting is not None and waiting[0] == sender and not waiting[1].done():
                waiting[1].set_result(payload)
        elif envelope.type == "linetest.result":
            self._take_result(sender, keys, payload["record"])

    async def _answer(self, caller: DevicePublicKeys, ping: dict[str, Any]) -> None:
        info = self.host.live_call(ping["call_id"])
        if (not self.settings.test_set or info is None or info.test_id != ping["test_id"]
                or info.peer != caller.device_id or info.direction != "incoming"
                or info.state is not CallState.ACTIVE):
            log.warning("a line test ping from %s names no test call in progress here",
                        caller.device_id)
            return
        part = {"v": linetest.VERSION, "test_id": info.test_id, "call_id": info.call_id,
                "caller": caller.device_id, "callee": self.me.device_id,
                "measured": measured_from(await self.host.call_stats(info.call_id), info),
                "signed_ms": now_ms(), "interval_s": ping["interval_s"]}
        try:
            await self._send(caller, "linetest.pong", {
                "test_id": ping["test_id"], "part": part,
                "sig": linetest.sign_part(self.keys, part)})
        except ParleyError as exc:
            log.warning("could not answer line test %s: %s", ping["test_id"], exc)

    def _take_result(self, sender: str, keys: DevicePublicKeys, record: Any) -> None:
        try:
            linetest.check_record_shape(record)
            if record["caller"] != sender or record["line"] not in self.lines():
                raise RemoteError(f"{sender} sent a line test between {record['caller']} and"
                                  f" {record['callee']}", code=ErrorCode.BAD_MESSAGE)
            linetest.check_not_future(record, now_ms())
            callee = self._verified_keys(record["callee"])
            if callee is None:
                log.info("line test %s kept unchecked: %s is not verified here",
                         record["test_id"], record["callee"])
                return
            linetest.verify_record(record, keys, callee)
        except SecurityAlarm as alarm:
            self._alarm(alarm, sender)
            return
        except RemoteError as exc:
            log.warning("dropped a line test result from %s: %s", sender, exc)
            return
        status, reasons = linetest.evaluate(record, self.settings.thresholds)
        role = "callee" if record["callee"] == self.me.device_id else "site"
        if self.store.add_linetest(record["test_id"], record["line"], record["ended_ms"],
                                   status, reasons, record, role):
            self._told({
                "line": record["line"], "test_id": record["test_id"], "status": status,
                "reasons": reasons, "caller": record["caller"], "callee": record["callee"],
                "ended_ms": record["ended_ms"], "signed_by": [record["callee"],
                                                              record["caller"]],
                **linetest.figures(record)})

    # -- the scheduler ---------------------------------------------------------------

    async def _schedule(self, every_s: float) -> None:
        await asyncio.sleep(min(every_s * random.uniform(0.1, 0.3), 30.0))
        while True:
            for peer in list(self.link.peers):
                lid = linetest.line_id(self.party, peer)
                newest = self.store.linetests(lid, now_ms() - int(every_s * 1000))
                if any(r["record"] is not None and now_ms() - r["ended_ms"] < every_s * 500
                       for r in newest):
                    continue  # the other site's test set has just tested it
                await self._scheduled_run(lid, every_s)
            await asyncio.sleep(every_s * random.uniform(0.9, 1.1))

    async def _scheduled_run(self, lid: str, every_s: float) -> None:
        for attempt in range(2):
            try:
                if self.host.in_call():  # answering the other site's test: its turn
                    await asyncio.sleep(random.uniform(*BUSY_RETRY_S))
                    if self.host.in_call():
                        return
                result = await self.run(lid)
            except LocalError as exc:
                log.warning("scheduled line test of %s: %s", lid, exc)
                return
            except Exception:
                log.exception("scheduled line test of %s failed unexpectedly", lid)
                return
            busy = any("busy" in r for r in result["reasons"])
            if not busy or attempt:
                return
            # The other test set is testing this line itself (both schedulers fired at
            # once): a moment later one of the two results will do.
            await asyncio.sleep(random.uniform(*BUSY_RETRY_S))
            if any(r["record"] is not None for r in self.store.linetests(
                    lid, now_ms() - int(every_s * 500))):
                return

    # -- the lines' state, as seen here ----------------------------------------------

    def lines(self) -> list[str]:
        return sorted(linetest.line_id(self.party, p) for p in self.link.peers)

    def view(self, now: int | None = None) -> list[dict[str, Any]]:
        """Each of this site's lines: its state from results verified here, its history,
        and what the server shows."""
        now = now_ms() if now is None else now
        out = []
        for lid in self.lines():
            rows = self.store.linetests(lid, now - HISTORY_MS)
            signed = [r for r in rows if r["record"] is not None]
            last = signed[-1] if signed else None
            state = linetest.line_status(
                lid, last["record"] if last else None,
                (last["status"], last["reasons"]) if last else None, now, self.interval_s)
            status, reasons = state.status, list(state.reasons)
            newest = rows[-1] if rows else None
            if newest is not None and newest["record"] is None and \
                    (last is None or newest["ended_ms"] > last["ended_ms"]):
                status, reasons = linetest.RED, [f"last test failed: {newest['reasons'][0]}"]
            item: dict[str, Any] = {
                "line": lid, "status": status, "reasons": reasons,
                "last_ms": newest["ended_ms"] if newest else None,
                "age_ms": now - newest["ended_ms"] if newest else None,
                "daily": linetest.daily_history([(r["ended_ms"], r["status"]) for r in rows],
                                                now),
                "recent": [{"status": r["status"], "ended_ms": r["ended_ms"],
                            "reasons": r["reasons"], "signed": r["record"] is not None}
                           for r in rows[-60:]],
                "server": self._server.get(lid),
            }
            if last is not None:
                item["last"] = {"test_id": last["test_id"], "status": last["status"],
                                "reasons": last["reasons"], "ended_ms": last["ended_ms"],
                                "caller": last["record"]["caller"],
                                "callee": last["record"]["callee"],
                                "signed_by": [last["record"]["callee"],
                                              last["record"]["caller"]],
                                "verified_here": True, **linetest.figures(last["record"])}
            out.append(item)
        return out

    async def _watch_server(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_server_s)
            if self.link.connected.is_set():
                try:
                    await self.check_server()
                except ParleyError as exc:
                    log.info("could not ask the server about the lines: %s", exc)
                except Exception:  # whatever the server sent, the watch goes on
                    log.exception("checking what the server shows of the lines failed")

    async def check_server(self) -> dict[str, dict[str, Any]]:
        """Ask the server what it shows of our lines, and check it against what we can verify.

        A result it holds that verifies here (both signatures, with keys this
        terminal verified) is kept, so every terminal learns its lines' tests.
        A line it shows green or amber without such a result is an alarm.
        """
        entries = await self.link.lines()
        now = now_ms()
        seen: dict[str, dict[str, Any]] = {}
        for entry in entries[:1000]:
            if not isinstance(entry, dict) or not isinstance(entry.get("line"), str) \
                    or entry["line"] not in self.lines():
                continue
            claimed = str(entry["status"]) if entry.get("status") in linetest.STATUSES \
                else linetest.RED
            view: dict[str, Any] = {"status": claimed, "reasons": [
                str(r)[:300] for r in entry.get("reasons", [])[:20]]
                if isinstance(entry.get("reasons"), list) else [], "checked_ms": now}
            problem = self._check_claim(entry["line"], claimed, entry.get("record"), now)
            if problem is not None:
                view["problem"] = problem
            seen[entry["line"]] = view
        self._server = seen
        return seen

    def _check_claim(self, lid: str, claimed: str, record: Any, now: int) -> str | None:
        """Why the server's claim about a line does not hold here (None: it holds)."""
        why: str | None = None
        test_id = record.get("test_id") if isinstance(record, dict) else None
        if record is None:
            why = "it holds no result for it"
        else:
            try:
                linetest.check_record_shape(record)
                if record["line"] != lid:
                    raise RemoteError(f"it is a result of the line {record['line']}",
                                      code=ErrorCode.BAD_MESSAGE)
                linetest.check_not_future(record, now)
                keys = [self._verified_keys(record[w]) for w in ("caller", "callee")]
                if keys[0] is None or keys[1] is None:
                    missing = [record[w] for w, k in zip(("caller", "callee"), keys,
                                                         strict=True) if k is None]
                    return (f"cannot be checked here: the keys of {', '.join(missing)} are not"
                            " verified on this terminal") if claimed != linetest.RED else None
                linetest.verify_record(record, keys[0], keys[1])
            except ParleyError as exc:
                why = f"its result does not verify: {exc.message}"
            else:
                status, reasons = linetest.evaluate(record, self.settings.thresholds)
                self.store.add_linetest(record["test_id"], lid, record["ended_ms"], status,
                                        reasons, record, "server", filed=True)
                state = linetest.line_status(lid, record, (status, reasons), now,
                                             self.interval_s)
                if linetest.SEVERITY[claimed] < linetest.SEVERITY[state.status]:
                    why = (f"its own result says {state.status}"
                           f" ({'; '.join(state.reasons)})")
        if why is None or claimed == linetest.RED:
            return None
        message = (f"the server shows the line {lid} {claimed}, but {why}; no result signed"
                   " by both test sets backs it")
        key = (lid, str(test_id))
        if key not in self._alarmed:
            self._alarmed.add(key)
            self._alarm(SecurityAlarm(message, code=ErrorCode.STATUS_UNPROVEN,
                                      hint="trust this terminal's own view of the line, not"
                                           " the server's page; report it"), None)
        return message

    def _verified_keys(self, device: str) -> DevicePublicKeys | None:
        if device == self.me.device_id:
            return self.me
        return self.store.pin(device)


def _ended(info: CallInfo, target: str) -> str:
    reason = str(info.end_reason) if info.end_reason else "ended"
    detail = {"unreachable": f"{target} is offline", "busy": f"{target} is busy",
              "declined": f"{target} declined it (not a test set?)",
              "not_verified": f"{target} refused it: our key is not verified there"}.get(reason)
    return f"test call {reason}: {detail or info.alarm or 'no detail'}"
