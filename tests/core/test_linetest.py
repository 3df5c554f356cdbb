"""Line test records, their verdicts and a line's state, without sockets or clocks."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from parley.core import linetest
from parley.core.errors import ErrorCode, RemoteError, SecurityAlarm
from tests.core.keys_fixture import device

CALLER, CALLEE = "washington/testset", "moscow/testset"
NOW = 1_800_000_000_000


def measured(**changes: Any) -> dict[str, Any]:
    base = {"audio_packets": 500, "audio_lost": 0, "video_packets": 300, "video_lost": 0,
            "audio_frames": 500, "video_frames": 300, "verified": True, "setup_ms": 80,
            "rtt_ms": 3, "jitter_us": 1500}
    return {**base, **changes}


def record(caller: dict[str, Any] | None = None, callee: dict[str, Any] | None = None,
           *, ended_ms: int = NOW, interval_s: int = 60) -> dict[str, Any]:
    keys_a, keys_b = device(CALLER), device(CALLEE)
    part = {"v": 1, "test_id": "t1", "call_id": "c1", "caller": CALLER, "callee": CALLEE,
            "measured": callee or measured(), "signed_ms": ended_ms - 500,
            "interval_s": interval_s}
    return linetest.countersign(keys_a, {
        "v": 1, "test_id": "t1", "call_id": "c1", "line": "moscow:washington",
        "caller": CALLER, "callee": CALLEE, "started_ms": ended_ms - 11_000,
        "ended_ms": ended_ms, "duration_ms": 10_000, "interval_s": interval_s,
        "callee_part": part, "callee_sig": linetest.sign_part(keys_b, part),
        "caller_measured": caller or measured(message_rtt_ms=12)})


def verify(rec: dict[str, Any]) -> dict[str, Any]:
    return linetest.verify_record(rec, device(CALLER).public(CALLER),
                                  device(CALLEE).public(CALLEE))


def test_a_record_signed_by_both_verifies_and_is_green() -> None:
    rec = verify(record())
    assert linetest.evaluate(rec) == ("green", [])


@pytest.mark.parametrize("tamper", [
    lambda r: r["callee_part"]["measured"].update(audio_lost=400),  # the callee's figures
    lambda r: r["caller_measured"].update(audio_lost=400),  # the caller's figures
    lambda r: r.update(duration_ms=1),  # anything in the record
    lambda r: (r.update(interval_s=999_999),  # the interval, which both sign
               r["callee_part"].update(interval_s=999_999)),
    lambda r: r.update(callee_sig=r["caller_sig"]),  # a signature moved
])
def test_any_change_after_signing_breaks_a_signature(tamper: Any) -> None:
    rec = copy.deepcopy(record())
    tamper(rec)
    with pytest.raises(SecurityAlarm) as refused:
        verify(rec)
    assert refused.value.code is ErrorCode.BAD_SIGNATURE


def test_a_record_one_end_signed_alone_is_refused() -> None:
    rec = record()
    keys_a = device(CALLER)
    forged = linetest.countersign(keys_a, {**rec, "callee_sig": linetest.sign_part(
        keys_a, rec["callee_part"])})
    with pytest.raises(SecurityAlarm, match="callee"):
        verify(forged)
    with pytest.raises(SecurityAlarm, match="not a device"):
        linetest.verify_record(rec, device(CALLER).public(CALLER), None)


def test_the_callee_part_must_be_about_the_same_test() -> None:
    rec = record()
    rec["callee_part"]["callee"] = "moscow/other"
    with pytest.raises(RemoteError, match="the callee signed callee"):
        linetest.check_record_shape(rec)
    kept = record()
    kept["callee_part"]["signed_ms"] -= 86_400_000  # a part signed a day before the test
    with pytest.raises(RemoteError, match="another time"):
        linetest.check_record_shape(kept)


def test_verdicts_name_the_figure_the_way_and_the_threshold() -> None:
    lossy = measured(audio_lost=125, video_lost=75)  # 20% of 1,000 packets
    status, reasons = linetest.evaluate(record(measured(audio_lost=125, video_lost=75,
                                                        message_rtt_ms=10), lossy))
    assert status == "amber" and reasons == ["loss 20.0% each way > 5%"]
    status, reasons = linetest.evaluate(record(callee=measured(audio_lost=900)))  # 900/1700
    assert status == "red" and reasons == ["loss 52.9% (washington/testset -> moscow/testset)"
                                           " > 50%"]
    status, reasons = linetest.evaluate(record(callee=measured(video_frames=0, verified=False)))
    assert status == "red"
    assert reasons == ["not verified at the callee (moscow/testset)",
                       "no video received (washington/testset -> moscow/testset)"]
    status, reasons = linetest.evaluate(record(caller=measured()))
    assert (status, reasons) == ("red", ["no message round trip"])
    strict = linetest.Thresholds(amber_setup_ms=50)
    assert linetest.evaluate(record(), strict)[0] == "amber"


def test_a_line_turns_red_two_intervals_after_its_last_result() -> None:
    rec = record(ended_ms=NOW, interval_s=60)
    verdict = linetest.evaluate(rec)
    assert linetest.line_status("l", rec, verdict, NOW + 120_000).status == "green"
    late = linetest.line_status("l", rec, verdict, NOW + 120_001 + 3 * 60_000)
    assert late.status == "red" and late.reasons == ("no test result for 5 min 0 s",)
    assert linetest.line_status("l", None, None, NOW).reasons == ("never tested",)
    hourly = record(ended_ms=NOW, interval_s=3600)  # the record's interval, not the default
    assert linetest.line_status("l", hourly, verdict, NOW + 7_100_000, 60).status == "green"
    assert linetest.line_status("l", hourly, verdict, NOW + 7_300_000, 60).status == "red"
    with pytest.raises(RemoteError, match="future"):
        linetest.check_not_future(record(ended_ms=NOW + 61_000), NOW)
    assert linetest.age_text(2 * 3_600_000 + 3 * 60_000) == "2 h 3 min"


def test_the_daily_history_keeps_each_days_worst() -> None:
    day = linetest.DAY_MS
    bars = linetest.daily_history([(NOW - 1000, "green"), (NOW - 2000, "amber"),
                                   (NOW - 3 * day - 5, "red"), (NOW - 100 * day, "red")], NOW)
    assert len(bars) == 90 and bars[-1] == "amber" and bars[-4] == "red"
    assert bars.count(None) == 88


def test_lines_and_ids_are_checked() -> None:
    assert linetest.line_id("washington", "moscow") == "moscow:washington"
    assert linetest.parse_line("washington:moscow") == ("washington", "moscow")
    for bad in ("washington", "a:a", ":b", "Wash:moscow"):
        with pytest.raises(RemoteError):
            linetest.parse_line(bad)
    rec = record()
    for field, value in (("test_id", "../x"), ("call_id", "c\u202e")):
        with pytest.raises(RemoteError):
            linetest.check_record_shape({**rec, field: value})
    with pytest.raises(RemoteError, match="not valid Unicode"):
        linetest.check_record_shape({**rec, "caller_measured": {
            **rec["caller_measured"], "sas": "\ud800"}})
