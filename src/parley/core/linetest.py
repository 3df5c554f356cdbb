"""Line tests: a short verified test call between two sites' test sets, signed by both ends.

A line that is used once in years must be known to work on the day. Each site
runs a *test set*: a terminal with robot media that takes part in test calls
only (`CallBook.test_set`), enrolled and verified like any device. A line test
is, between the two test sets of a line:

1. a test call, placed by one (the *caller*) with the test's id in its signed,
   sealed offer, answered by the other (the *callee*) only because it is a
   test call; it runs for a few seconds (10 by default) and is verified as any
   call is (pinned keys, signed DTLS fingerprints, handshake certificate);
2. a message round trip over the store-and-forward path (``linetest.ping``,
   stored by the server like a message), answered with ``linetest.pong``,
   which carries the callee's *part*: what the callee measured of the media it
   received and of its own setup, signed with its device key;
3. the *record*: the caller adds what it measured, and countersigns the
   whole -- the callee's part and signature included -- so one record carries
   both ends' signatures over both ends' figures. It is filed with the server
   (which checks both signatures against the devices it enrolled and refuses
   anything else) and sent sealed to the callee (``linetest.result``), so
   that each site holds it and can show the line's state without believing
   the server.

Everything in a record is an integer or a string (no floats travel here):
times in ms (jitter in µs), packet counts rather than ratios. `evaluate`
turns a record into green / amber / red with reasons, against `Thresholds`
that are settings; `line_status` adds the one rule that keeps a dead test
set from leaving a line green: no result within two intervals is red.

Pure: no clock, no sockets (``now_ms`` is passed in).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from . import schema
from .encoding import b64d, b64e, canonical_json
from .errors import ErrorCode, RemoteError, SecurityAlarm
from .keys import DEVICE_ID_MAX, NAME_MAX, DeviceKeys, DevicePublicKeys, split_device_id

VERSION = 1
DEFAULT_DURATION_S = 10
DEFAULT_INTERVAL_S = 3600
TEST_SET_DEVICE = "testset"  # a site's test set is <party>/testset unless told otherwise
PING_MAX_AGE_MS = 5 * 60_000  # a ping or pong older than this answers nothing
CLOCK_SKEW_MS = 60_000  # how far apart two sites' clocks may be
MAX_TEST_MS = 15 * 60_000  # from the callee's signature to the record's end, at most
RESULT_MAX_AGE_MS = 30 * 86_400_000
MAX_RECORD_BYTES = 8 * 1024
_CALLEE_DOMAIN = b"parley-linetest-callee-v1\x00"
_RECORD_DOMAIN = b"parley-linetest-record-v1\x00"

GREEN, AMBER, RED = "green", "amber", "red"
STATUSES = (GREEN, AMBER, RED)
SEVERITY = {GREEN: 0, AMBER: 1, RED: 2}


def line_id(a: str, b: str) -> str:
    """The line between two parties, named the same from both ends: 'moscow:washington'."""
    return ":".join(sorted((a, b)))


def parse_line(text: str) -> tuple[str, str]:
    """'washington:moscow' -> ('washington', 'moscow'), each a valid party name."""
    a, sep, b = text.partition(":")
    if not sep or not a or not b or a == b:
        raise RemoteError(f"a line is two parties, as A:B, not {text[:80]!r}",
                          code=ErrorCode.BAD_MESSAGE, hint="for example washington:moscow")
    for name in (a, b):
        split_device_id(f"{name}/x")
    return a, b


# -- what each end measures ---------------------------------------------------------------

_COUNT = schema.integer(0, 2**40)
_MS = schema.integer(0, 86_400_000)
MEASURED = {
    "setup_ms": schema.integer(0, 600_000, required=False),  # placed/offered -> verified
    "rtt_ms": schema.integer(0, 600_000, required=False),  # media round trip (RTCP)
    "jitter_us": schema.integer(0, 60_000_000, required=False),  # of the audio received
    "audio_packets": _COUNT, "audio_lost": _COUNT,
    "video_packets": _COUNT, "video_lost": _COUNT,
    "audio_frames": _COUNT, "video_frames": _COUNT,  # decoded, as received
    "verified": schema.boolean(),  # keys pinned and the handshake certificate checked
    "sas": schema.text(32, required=False),
    "message_rtt_ms": schema.integer(0, 600_000, required=False),  # the caller's
    "error": schema.text(300, required=False),
}


def _measured(value: Any) -> None:
    schema.validate(value, MEASURED, what="measurements")


_DEVICE = schema.Field(str, max_len=DEVICE_ID_MAX, check=split_device_id)
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _plain_id(value: str) -> None:
    if not value or not set(value) <= _ID_CHARS:
        raise RemoteError("a line test's ids are letters, digits, - and _",
                          code=ErrorCode.BAD_MESSAGE)


_TEST_ID = schema.Field(str, max_len=32, check=_plain_id)
_CALL_ID = schema.Field(str, max_len=32, check=_plain_id)
_INTERVAL_S = schema.integer(1, 31 * 86_400)  # the caller's test interval
CALLEE_PART = {
    "v": schema.integer(VERSION, VERSION),
    "test_id": _TEST_ID,
    "call_id": _CALL_ID,
    "caller": _DEVICE,
    "callee": _DEVICE,
    "measured": schema.obj(check=_measured),
    "signed_ms": schema.integer(0, 2**53),
    # The interval the caller tests at, as its ping said: the callee signs it too, so that
    # no single end can make one result keep the line green for longer.
    "interval_s": _INTERVAL_S,
}


def _callee_part(value: Any) -> None:
    schema.validate(value, CALLEE_PART, what="the callee's part")


RECORD = {
    "v": schema.integer(VERSION, VERSION),
    "test_id": _TEST_ID,
    "call_id": _CALL_ID,
    "line": schema.text(2 * NAME_MAX + 1),
    "caller": _DEVICE,
    "callee": _DEVICE,
    "started_ms": schema.integer(0, 2**53),
    "ended_ms": schema.integer(0, 2**53),
    "duration_ms": schema.integer(0, 3_600_000),  # of the call, as asked
    "interval_s": _INTERVAL_S,  # the caller's test interval: red after twice this
    "callee_part": schema.obj(check=_callee_part),
    "callee_sig": schema.text(88),
    "caller_measured": schema.obj(check=_measured),
    "caller_sig": schema.text(88),
}

PAYLOADS: dict[str, dict[str, schema.Field]] = {
    # caller -> callee, during the test call: answer with your signed part
    "linetest.ping": {"test_id": _TEST_ID, "call_id": _CALL_ID, "interval_s": _INTERVAL_S},
    # callee -> caller
    "linetest.pong": {"test_id": _TEST_ID, "part": schema.obj(check=_callee_part),
                      "sig": schema.text(88)},
    # caller -> callee: the record, signed by both
    "linetest.result": {"record": schema.obj()},
}


def callee_statement(part: Mapping[str, Any]) -> bytes:
    return _CALLEE_DOMAIN + canonical_json(part)


def record_statement(record: Mapping[str, Any]) -> bytes:
    """What the caller signs: the whole record but its own signature."""
    return _RECORD_DOMAIN + canonical_json({k: v for k, v in record.items() if k != "caller_sig"})


def sign_part(keys: DeviceKeys, part: dict[str, Any]) -> str:
    schema.validate(part, CALLEE_PART, what="the callee's part")
    return b64e(keys.sign(callee_statement(part)))


def countersign(keys: DeviceKeys, record: dict[str, Any]) -> dict[str, Any]:
    """The record with the caller's signature over all of it (the callee's included)."""
    unsigned = {k: v for k, v in record.items() if k != "caller_sig"}
    signed = {**unsigned, "caller_sig": b64e(keys.sign(record_statement(unsigned)))}
    check_record_shape(signed)
    return signed


def check_record_shape(record: Any) -> dict[str, Any]:
    """A record's fields and their agreement with each other; signatures not checked."""
    schema.validate(record, RECORD, what="line test record")
    try:
        size = len(canonical_json(record))
    except ValueError:  # a lone surrogate in some text: not text that can be signed
        raise RemoteError("a line test record holds text that is not valid Unicode",
                          code=ErrorCode.BAD_MESSAGE) from None
    if size > MAX_RECORD_BYTES:
        raise RemoteError(f"a line test record is at most {MAX_RECORD_BYTES} bytes",
                          code=ErrorCode.TOO_LARGE)
    part = record["callee_part"]
    for name in ("test_id", "call_id", "caller", "callee", "interval_s"):
        if part[name] != record[name]:
            raise RemoteError(f"the callee signed {name} {part[name]!r}, the record says"
                              f" {record[name]!r}", code=ErrorCode.BAD_MESSAGE)
    caller_party, _ = split_device_id(record["caller"])
    callee_party, _ = split_device_id(record["callee"])
    if caller_party == callee_party or record["line"] != line_id(caller_party, callee_party):
        raise RemoteError(f"the record's line {record['line']!r} is not the line between"
                          f" {record['caller']} and {record['callee']}",
                          code=ErrorCode.BAD_MESSAGE)
    if record["ended_ms"] < record["started_ms"]:
        raise RemoteError("the record ends before it starts", code=ErrorCode.BAD_MESSAGE)
    signed = part["signed_ms"]
    if not record["ended_ms"] - MAX_TEST_MS <= signed <= record["ended_ms"] + CLOCK_SKEW_MS:
        # A callee's signature from another time: a part kept back to be filed later.
        raise RemoteError("the callee signed its part at another time than the test ended",
                          code=ErrorCode.BAD_MESSAGE)
    checked: dict[str, Any] = record
    return checked


def check_not_future(record: Mapping[str, Any], now_ms: int) -> None:
    """A result that ends after now (beyond clock skew) would never age: refused."""
    if record["ended_ms"] > now_ms + CLOCK_SKEW_MS:
        raise RemoteError(f"line test {record['test_id']} ends"
                          f" {age_text(record['ended_ms'] - now_ms)} in the future",
                          code=ErrorCode.STALE, hint="check the test sets' clocks")


def verify_record(record: Any, caller: DevicePublicKeys | None,
                  callee: DevicePublicKeys | None) -> dict[str, Any]:
    """Check a record's shape and both signatures against these keys, or raise.

    The server checks against the devices it enrolled; a terminal against the
    keys it verified itself. A record one end did not sign is refused, whatever
    the other end claims.
    """
    check_record_shape(record)
    for who, keys in (("caller", caller), ("callee", callee)):
        if keys is None or keys.device_id != record[who]:
            raise SecurityAlarm(f"the {who} of line test {record['test_id']}, {record[who]},"
                                " is not a device whose keys are known here",
                                code=ErrorCode.UNKNOWN_DEVICE,
                                hint="a record is accepted only from enrolled, verified devices")
    assert caller is not None and callee is not None
    part_sig = b64d(record["callee_sig"], what="callee_sig", max_bytes=64)
    if not callee.verify(part_sig, callee_statement(record["callee_part"])):
        raise SecurityAlarm(f"line test {record['test_id']}: the callee's signature"
                            f" ({record['callee']}) does not verify",
                            code=ErrorCode.BAD_SIGNATURE,
                            hint="a result not signed by both ends is refused")
    caller_sig = b64d(record["caller_sig"], what="caller_sig", max_bytes=64)
    if not caller.verify(caller_sig, record_statement(record)):
        raise SecurityAlarm(f"line test {record['test_id']}: the caller's signature"
                            f" ({record['caller']}) does not verify",
                            code=ErrorCode.BAD_SIGNATURE,
                            hint="a result not signed by both ends is refused")
    checked: dict[str, Any] = record
    return checked


# -- what a result means -------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    """Where a line test turns amber and red. Settings (`parley server`, `parley terminal`)."""

    amber_loss_pct: float = 5.0
    red_loss_pct: float = 50.0
    amber_setup_ms: int = 5_000
    red_setup_ms: int = 20_000
    amber_rtt_ms: int = 400
    red_rtt_ms: int = 2_000
    amber_jitter_ms: float = 50.0
    red_jitter_ms: float = 500.0
    amber_message_rtt_ms: int = 2_000
    red_message_rtt_ms: int = 15_000

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Thresholds:
        """From a command's settings: ``linetest_<name>`` where given."""
        given = {name: settings[f"linetest_{name}"] for name in cls.names()
                 if settings.get(f"linetest_{name}") is not None}
        return cls(**given)


THRESHOLD_HELP = {
    "amber_loss_pct": "a line test losing more than this % of packets either way is amber",
    "red_loss_pct": "...and red beyond this %",
    "amber_setup_ms": "a test call taking longer than this (ms) to be verified is amber",
    "red_setup_ms": "...and red beyond this (ms)",
    "amber_rtt_ms": "a media round trip longer than this (ms) is amber",
    "red_rtt_ms": "...and red beyond this (ms)",
    "amber_jitter_ms": "audio jitter above this (ms) either way is amber",
    "red_jitter_ms": "...and red above this (ms)",
    "amber_message_rtt_ms": "a message round trip longer than this (ms) is amber",
    "red_message_rtt_ms": "...and red beyond this (ms)",
}


def loss_pct(measured: Mapping[str, Any]) -> float:
    """The share of media packets lost on the way here, audio and video together, in %.

    Together, because a few seconds of video are few packets: one lost more or less
    moves video's share alone by whole percents.
    """
    got = measured.get("audio_packets", 0) + measured.get("video_packets", 0)
    lost = measured.get("audio_lost", 0) + measured.get("video_lost", 0)
    return 100.0 * lost / (got + lost) if got + lost else 0.0


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.0f} ms"


def evaluate(record: Mapping[str, Any], t: Thresholds = Thresholds()) -> tuple[str, list[str]]:
    """green / amber / red, and why (empty reasons: green)."""
    sides = {"caller": record["caller_measured"], "callee": record["callee_part"]["measured"]}
    # What each end received came *to* it: name the way by where it went.
    way = {"caller": f"{record['callee']} -> {record['caller']}",
           "callee": f"{record['caller']} -> {record['callee']}"}
    found: list[tuple[str, str]] = []

    def check(value: float | None, amber: float, red: float, what: Callable[[float], str],
              limit: Callable[[float], str], side: str | None) -> None:
        if value is None:
            return
        where = f" ({way[side]})" if side else ""
        if value > red:
            found.append((RED, f"{what(value)}{where} > {limit(red)}"))
        elif value > amber:
            found.append((AMBER, f"{what(value)}{where} > {limit(amber)}"))

    for side, m in sides.items():
        if m.get("error"):
            found.append((RED, f"{side}: {m['error']}"))
        if not m["verified"]:
            found.append((RED, f"not verified at the {side} ({record[side]})"))
        if m["audio_frames"] == 0:
            found.append((RED, f"no audio received ({way[side]})"))
        if m["video_frames"] == 0:
            found.append((RED, f"no video received ({way[side]})"))
    losses = {side: loss_pct(m) for side, m in sides.items()}
    if max(losses.values()) > t.amber_loss_pct:
        worst = max(losses.values())
        level = RED if worst > t.red_loss_pct else AMBER
        limit = t.red_loss_pct if level == RED else t.amber_loss_pct
        if all(v > limit for v in losses.values()):
            found.append((level, f"loss {worst:.1f}% each way > {limit:g}%"))
        else:
            side = max(losses, key=lambda s: losses[s])
            found.append((level, f"loss {worst:.1f}% ({way[side]}) > {limit:g}%"))
    for side, m in sides.items():
        check(m.get("setup_ms"), t.amber_setup_ms, t.red_setup_ms,
              lambda v: f"setup {_fmt_ms(v)}", _fmt_ms, side)
        check((m.get("jitter_us") or 0) / 1000, t.amber_jitter_ms, t.red_jitter_ms,
              lambda v: f"jitter {v:.0f} ms", lambda v: f"{v:g} ms", side)
    rtts = [m["rtt_ms"] for m in sides.values() if m.get("rtt_ms") is not None]
    check(max(rtts) if rtts else None, t.amber_rtt_ms, t.red_rtt_ms,
          lambda v: f"round trip {_fmt_ms(v)}", _fmt_ms, None)
    check(sides["caller"].get("message_rtt_ms"), t.amber_message_rtt_ms, t.red_message_rtt_ms,
          lambda v: f"message round trip {_fmt_ms(v)}", _fmt_ms, None)
    if sides["caller"].get("message_rtt_ms") is None:
        found.append((RED, "no message round trip"))
    if not found:
        return GREEN, []
    status = max((s for s, _ in found), key=SEVERITY.__getitem__)
    return status, [reason for _, reason in found]


def age_text(ms: int) -> str:
    """'2 h 3 min', '4 min 10 s', '12 s'."""
    s = max(0, ms) // 1000
    if s >= 86_400:
        return f"{s // 86_400} d {s % 86_400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


@dataclass(frozen=True)
class LineState:
    """A line as a status page shows it."""

    line: str
    status: str
    reasons: tuple[str, ...]
    last_ms: int | None  # when its last result ended
    interval_s: int

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "status": self.status, "reasons": list(self.reasons),
                "last_ms": self.last_ms, "interval_s": self.interval_s}


def line_status(line: str, last: Mapping[str, Any] | None, evaluated: tuple[str, list[str]]
                | None, now_ms: int, default_interval_s: int = DEFAULT_INTERVAL_S) -> LineState:
    """The line's state now: its last result's, unless that is older than two intervals.

    A line never tested, or whose last result is older than twice its test
    interval (the scheduler's, as signed in the record; else the default), is
    red: a dead test set can never leave a line green.
    """
    if last is None or evaluated is None:
        return LineState(line, RED, ("never tested",), None, default_interval_s)
    interval_s = last.get("interval_s") or default_interval_s
    age = now_ms - last["ended_ms"]
    if age > 2 * interval_s * 1000:
        return LineState(line, RED, (f"no test result for {age_text(age)}",), last["ended_ms"],
                         interval_s)
    status, reasons = evaluated
    return LineState(line, status, tuple(reasons), last["ended_ms"], interval_s)


# -- history, as status pages draw it -----------------------------------------------------

DAY_MS = 86_400_000


def daily_history(results: list[tuple[int, str]], now_ms: int, days: int = 90
                  ) -> list[str | None]:
    """The worst status of each of the last `days` days (oldest first; None: no result).

    `results` are (ended_ms, status) pairs. Days are counted back from now, so
    the last bar is the last 24 hours.
    """
    bars: list[str | None] = [None] * days
    start = now_ms - days * DAY_MS
    for ended, status in results:
        if ended < start or ended > now_ms:
            continue
        day = min(days - 1, (ended - start) // DAY_MS)
        current = bars[day]
        if current is None or SEVERITY[status] > SEVERITY[current]:
            bars[day] = status
    return bars


def figures(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's headline figures, each way, for pages and --json output."""
    sides = (("caller", record["caller_measured"], record["callee"], record["caller"]),
             ("callee", record["callee_part"]["measured"], record["caller"], record["callee"]))
    ways = {}
    for _side, m, sender, receiver in sides:
        ways[f"{split_device_id(sender)[0]}->{split_device_id(receiver)[0]}"] = {
            "setup_ms": m.get("setup_ms"), "rtt_ms": m.get("rtt_ms"),
            "jitter_ms": round((m.get("jitter_us") or 0) / 1000, 1),
            "loss_pct": round(loss_pct(m), 2),
            "audio_packets": m["audio_packets"], "video_packets": m["video_packets"],
            "audio_frames": m["audio_frames"], "video_frames": m["video_frames"],
            "verified": m["verified"],
        }
    return {"ways": ways, "message_rtt_ms": record["caller_measured"].get("message_rtt_ms"),
            "verified": all(w["verified"] for w in ways.values()),
            "sas": record["caller_measured"].get("sas"),
            "duration_ms": record["ended_ms"] - record["started_ms"]}
