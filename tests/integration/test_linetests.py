"""Line tests between real test sets, through the real server: schedule, alerts, forgeries.

Everything is real: the server with its SQLite store, four terminals (two test
sets, two persons' terminals) with aiortc media over loopback, the webhook
receiver is an HTTP server on 127.0.0.1, and /metrics is read with the
Prometheus client's own parser. The lossy link (20% of packets dropped in a
network namespace) is tests/integration/test_linetest_loss.py.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from parley.core import linetest
from parley.core.call import CallState, EndReason
from parley.core.encoding import b64e
from parley.core.errors import ErrorCode, LocalError
from parley.core.keys import DeviceKeys
from parley.server.alerts import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    load_alert_key,
    public_key_text,
    verify_body,
)
from parley.terminal.app import Terminal
from parley.terminal.linetest import LineTestSettings
from tests.harness import LocalLine, device_of, logged_in, wait_until
from tests.webhook import WebhookSink

LINE = "moscow:washington"
EVERY_S = 3.0


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    receiver = WebhookSink()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def start_test_set(line: LocalLine, party: str, every_s: float = 3600.0,
                         scheduled: bool = False) -> Terminal:
    return await line.terminal(f"{party}-testset", linetest=LineTestSettings(
        test_set=True, duration_s=1.0, every_s=every_s, scheduled=scheduled))


async def server_line(http: aiohttp.ClientSession, line: LocalLine) -> dict[str, Any]:
    async with http.get(line.url + "/lines.json") as resp:
        lines = (await resp.json())["lines"]
    (entry,) = [item for item in lines if item["line"] == LINE]
    return dict(entry)


async def metrics(http: aiohttp.ClientSession, line: LocalLine) -> dict[tuple[str, tuple[
        tuple[str, str], ...]], float]:
    async with http.get(line.url + "/metrics") as resp:
        text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def signed_by_server(line: LocalLine, delivery: Any) -> bool:
    key = public_key_text(load_alert_key(line.root / "server"))
    return delivery.headers[KEY_HEADER] == key and verify_body(
        key, delivery.body, delivery.headers[SIGNATURE_HEADER])


async def test_a_stopped_test_set_turns_the_line_red_and_back_green_with_signed_alerts(
        tmp_path: Path, sink: WebhookSink, http: aiohttp.ClientSession) -> None:
    line = LocalLine(tmp_path)
    await line.start(alert_webhooks=[sink.url])
    try:
        await line.provision(test_sets=True)
        washington = await start_test_set(line, "washington", EVERY_S, scheduled=True)
        moscow = await start_test_set(line, "moscow", EVERY_S, scheduled=True)
        person = await line.terminal("washington")
        state = await _wait_status(http, line, "green", 20)
        assert set(state["last"]["signed_by"]) == {"washington/testset", "moscow/testset"}
        await asyncio.sleep(2.5)  # the server looks at its lines every second
        assert not sink.deliveries  # a line's first green is not an alert

        # Moscow's test set stops: washington's tests fail (nothing is signed, nothing is
        # filed) and the server turns the line red by itself, within two intervals.
        sink.fail_next = 1  # and the webhook's first try fails: it is tried again
        await moscow.stop()
        line.terminals.remove(moscow)
        stopped = time.monotonic()
        red = await _wait_status(http, line, "red", 4 * EVERY_S + 5)
        waited = time.monotonic() - stopped
        assert waited <= 2 * EVERY_S + 2 * EVERY_S * 0.1 + 3, waited
        assert red["reasons"][0].startswith("no test result for "), red
        (alert,) = await sink.wait_for(1, 15)
        assert sink.refused == 1  # the first try failed; the second was taken
        assert signed_by_server(line, alert)
        body = alert.json
        assert body["version"] == "4" and body["status"] == "firing"
        assert body["alerts"][0]["labels"] == {
            "alertname": "ParleyLineNotGreen", "line": LINE, "status": "red",
            "severity": "critical"}
        assert "no test result for" in body["alerts"][0]["annotations"]["reasons"]
        failed = washington.linetests.view()[0]
        assert failed["status"] == "red" and "moscow/testset" in failed["reasons"][0]
        # A forged body, or this body under another's signature, does not verify.
        assert not verify_body(public_key_text(load_alert_key(line.root / "server")),
                               alert.body.replace(b"firing", b"resolved"),
                               alert.headers[SIGNATURE_HEADER])

        # It comes back: the next test is green, and the line is, with a second alert.
        moscow = await start_test_set(line, "moscow", EVERY_S, scheduled=True)
        green = await _wait_status(http, line, "green", 4 * EVERY_S + 10)
        assert green["reasons"] == []
        deliveries = await sink.wait_for(2, 15)
        resolved = deliveries[1]
        assert signed_by_server(line, resolved)
        assert resolved.json["status"] == "resolved"
        assert resolved.json["alerts"][0]["labels"]["status"] == "red"  # what it resolves
        assert resolved.json["alerts"][0]["endsAt"] != "0001-01-01T00:00:00Z"

        # The person's terminal sees the same, from results it verified itself.
        await person.linetests.check_server()
        mine = person.linetests.view()[0]
        assert mine["status"] == "green" and mine["last"]["verified_here"]
        assert mine["server"]["status"] == "green" and "problem" not in mine["server"]
        assert not person.alarms
        counters = await metrics(http, line)
        assert counters[("parley_line_status", (("line", LINE),))] == 0
        assert counters[("parley_linetest_success", (("line", LINE),))] == 1
        assert counters[("parley_alerts_delivered_total", ())] == 2
        assert counters[("parley_linetests_filed_total", ())] >= 2
    finally:
        await line.stop()


async def _wait_status(http: aiohttp.ClientSession, line: LocalLine, status: str,
                       timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        entry = await server_line(http, line)
        if entry["status"] == status:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"the line is {entry['status']} ({entry['reasons']}), not"
                                 f" {status}, after {timeout} s")
        await asyncio.sleep(0.2)


async def test_forged_and_one_side_signed_results_are_refused_and_counted(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(test_sets=True)
    washington = await start_test_set(line, "washington")
    await start_test_set(line, "moscow")
    genuine = await washington.linetests.run("washington:moscow")
    assert genuine["status"] == "green" and genuine["filed"]
    record = washington.store.linetests(LINE)[-1]["record"]
    client, _, keys = await logged_in(line, http, dirs, "washington-testset")

    async def file(forged: dict[str, Any], via: Any = client) -> dict[str, Any]:
        await via.send({"t": "linetest", "record": forged, "ref": "f"})
        while True:  # presence and the like may come first
            frame = await via.recv()
            if frame.get("ref") == "f":
                return frame

    # The callee's part altered (loss hidden): its signature no longer holds.
    altered = copy.deepcopy(record)
    altered["test_id"] = altered["callee_part"]["test_id"] = "altered0000000000000000"
    altered["callee_part"]["measured"]["audio_lost"] = 0
    altered = linetest.countersign(keys, altered)
    reply = await file(altered)
    assert reply["t"] == "error" and reply["code"] == "bad_signature", reply
    assert "callee" in reply["message"]
    # One side signed only: the caller signs a callee part it wrote itself.
    part = {**record["callee_part"], "test_id": "onesided00000000000000"}
    one_sided = linetest.countersign(keys, {
        **record, "test_id": part["test_id"], "callee_part": part,
        "callee_sig": linetest.sign_part(keys, part)})
    reply = await file(one_sided)
    assert reply["t"] == "error" and reply["code"] == "bad_signature", reply
    # The caller's signature missing (the callee's alone).
    unsigned = {**record, "test_id": "nocaller0000000000000",
                "callee_part": {**record["callee_part"], "test_id": "nocaller0000000000000"}}
    unsigned["caller_sig"] = b64e(DeviceKeys.generate().sign(b"x"))
    reply = await file(unsigned)
    assert reply["t"] == "error" and reply["code"] == "bad_signature", reply
    # Signed by both (both keys here) but dated a day ahead, so that it would never age;
    # and a callee part signed at another time than the test (one kept back for later).
    _, callee_keys = device_of(dirs, "moscow-testset")
    day = 86_400_000
    ahead_part = {**record["callee_part"], "test_id": "ahead000000000000000000",
                  "signed_ms": record["ended_ms"] + day}
    ahead = linetest.countersign(keys, {
        **record, "test_id": ahead_part["test_id"], "started_ms": record["started_ms"] + day,
        "ended_ms": record["ended_ms"] + day, "callee_part": ahead_part,
        "callee_sig": linetest.sign_part(callee_keys, ahead_part)})
    reply = await file(ahead)
    assert reply["t"] == "error" and reply["code"] == "stale", reply
    old_part = {**record["callee_part"], "test_id": "kept00000000000000000000",
                "signed_ms": record["ended_ms"] - day}
    kept = {**record, "test_id": old_part["test_id"], "callee_part": old_part,
            "callee_sig": b64e(callee_keys.sign(linetest.callee_statement(old_part)))}
    kept["caller_sig"] = b64e(keys.sign(linetest.record_statement(kept)))  # signed by both
    reply = await file(kept)
    assert reply["t"] == "error" and reply["code"] == "bad_message", reply
    # Filed by a device that is neither end.
    person, _, _ = await logged_in(line, http, dirs, "washington")
    reply = await file(record, person)
    assert reply["t"] == "error" and reply["code"] == "forbidden", reply
    # Junk is refused too, and none of it reached the store: a half record, text that is
    # not Unicode (a lone surrogate cannot be signed), ids that are not ids.
    reply = await file({"v": 1, "test_id": "x"})
    assert reply["t"] == "error" and reply["code"] == "bad_message", reply
    reply = await file({**record, "caller_measured": {**record["caller_measured"],
                                                      "sas": "\ud800"}})
    assert reply["t"] == "error" and reply["code"] == "bad_message", reply
    reply = await file({**record, "test_id": "../../x"})
    assert reply["t"] == "error" and reply["code"] == "bad_message", reply
    rows = line.server.store.linetest_history(LINE, 0) if line.server else []
    assert [r[0]["test_id"] for r in rows] == [record["test_id"]]
    counters = await metrics(http, line)
    assert counters[("parley_linetests_refused_total", (("reason", "bad_signature"),))] == 3
    assert counters[("parley_linetests_refused_total", (("reason", "forbidden"),))] == 1
    assert counters[("parley_linetests_filed_total", ())] == 1
    # The genuine one, filed again (a lost reply), is accepted once.
    reply = await file(record)
    assert reply["t"] == "filed" and reply["status"] == "green"
    assert line.server is not None and len(line.server.store.linetest_history(LINE, 0)) == 1


async def test_a_hostile_server_showing_a_dead_line_green_is_caught_by_the_terminal(
        line: LocalLine, http: aiohttp.ClientSession) -> None:
    dirs = await line.provision(test_sets=True)
    person = await line.terminal("washington")
    assert person.linetests.view()[0]["status"] == "red"  # never tested
    # The server's store is the attacker's: it holds a "result" that no test set signed,
    # with figures that read green, and its page and its answers say green.
    _, keys = device_of(dirs, "washington-testset")
    now = int(time.time() * 1000)
    measured = {"audio_packets": 500, "audio_lost": 0, "video_packets": 300, "video_lost": 0,
                "audio_frames": 500, "video_frames": 300, "verified": True, "setup_ms": 60,
                "message_rtt_ms": 5}
    part = {"v": 1, "test_id": "fabricated000000000000", "call_id": "c" * 22,
            "caller": "washington/testset", "callee": "moscow/testset", "measured": measured,
            "signed_ms": now - 1500, "interval_s": 3600}
    forged = {"v": 1, "test_id": part["test_id"], "call_id": part["call_id"], "line": LINE,
              "caller": part["caller"], "callee": part["callee"], "started_ms": now - 12_000,
              "ended_ms": now - 1000, "duration_ms": 10_000, "interval_s": 3600,
              "callee_part": part, "callee_sig": b64e(DeviceKeys.generate().sign(b"x")),
              "caller_measured": measured}
    forged = linetest.countersign(keys, forged)  # the caller's key leaked; the callee's not
    assert line.server is not None
    line.server.store.add_linetest(forged, now, "green", [])
    line.server.lines._last.clear()
    assert (await server_line(http, line))["status"] == "green"

    seen = await person.linetests.check_server()
    assert seen[LINE]["status"] == "green"
    assert "callee's signature" in seen[LINE]["problem"]
    view = person.linetests.view()[0]
    assert view["status"] == "red" and view["reasons"] == ["never tested"]
    alarms = [a for a in person.alarms if a["code"] == ErrorCode.STATUS_UNPROVEN]
    assert len(alarms) == 1 and LINE in alarms[0]["message"]
    # Asking again does not raise it again.
    await person.linetests.check_server()
    assert len([a for a in person.alarms if a["code"] == ErrorCode.STATUS_UNPROVEN]) == 1


async def test_test_calls_never_ring_a_person_and_people_never_reach_a_test_set(
        line: LocalLine) -> None:
    await line.provision(test_sets=True)
    washington = await start_test_set(line, "washington")
    person = await line.terminal("moscow")
    events: list[dict[str, Any]] = []
    person.subscribe(events.append)
    # A test call to a person's terminal is refused on arrival: nothing rings.
    result = await washington.linetests.run("washington:moscow", callee="moscow/hotline")
    assert result["status"] == "red" and "declined" in result["reasons"][0]
    calls = person.book.calls()
    assert [c.end_reason for c in calls] == [EndReason.REJECTED]
    assert not any(e["t"] == "call" and e["call"]["state"] == str(CallState.RINGING)
                   for e in events)
    # A person calling the party reaches its person, never its test set; a test set
    # places no real call.
    moscow_set = await start_test_set(line, "moscow")
    caller = await line.terminal("washington")
    placed = await caller.place_call("moscow")
    assert placed.peer == "moscow/hotline"
    caller.hangup(placed.call_id)
    with pytest.raises(LocalError, match="test set"):
        await moscow_set.place_call("washington")
    # ...and a person's terminal runs no line test.
    with pytest.raises(LocalError, match="not a test set"):
        await person.linetests.run("washington:moscow")
    # Messages to a party do not go to its test set.
    sent = await caller.messages.send_text("moscow", "for the person only")
    assert [d["device"] for d in sent["deliveries"]] == ["moscow/hotline"]
    await wait_until(lambda: bool(person.messages.conversation("washington")), 10,
                     "the message at moscow's person")
    assert not moscow_set.messages.conversation("washington")
