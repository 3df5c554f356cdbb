"""`parley demo`: the whole line on one machine, in one command.

It starts a line server and two terminals, "washington" and "moscow", each in
its own process on 127.0.0.1 with a throwaway data directory; creates the two
parties and the line between them; enrolls each terminal with a one-time code;
has each side compute the safety number, checks that both computed the same
digits (the out-of-band comparison two operators would do on a known phone
line) and pins the keys; then hands over:

* by default, washington gets a browser UI (the URL is printed on a line that
  starts with ``ui: ``) and moscow is a robot that answers at once;
  ``--human moscow`` gives moscow a UI too;
* ``--headless`` places one robot-to-robot call, exchanges 100 hotline messages
  each way during it (each side then reads them, so that read receipts come
  back), hangs up, runs one line test between the two sites' test sets, schedules
  a talk, has the two sides agree a joint statement (drafted, edited, signed by
  both, in both sites' records), stops everything and prints a summary
  (``--json``: one JSON object, last line).

Each site also runs its test set (``<party>/testset``, `terminal.linetest`),
verified by the other site's test set and by both persons' terminals; in the
interactive demo they test the line every minute, so the line's state shows
in the person's page from the start.

In the interactive demo a robot side also answers every message it is sent,
so that the person at washington sees a conversation, with receipts, and signs
any joint statement it is sent as it stands.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from parley.children import START_TIMEOUT_S, Child
from parley.core.errors import ErrorCode, LocalError
from parley.core.linetest import TEST_SET_DEVICE
from parley.lab import PARTIES as SIDES
from parley.lab import provision_line, test_set_dir

PARLEY = [sys.executable, "-m", "parley"]
DEMO_MESSAGES = 100  # each way, in the headless demo
DEMO_LINETEST_S = 3.0  # the demo's line test calls, shorter than a real line's 10 s
DEMO_LINETEST_EVERY_S = 60.0  # interactive: a line test a minute

class Control:
    """A client for a running terminal's local API."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        base, _, token = url.partition("/?token=")
        self.base, self.token, self.http = base, token, http

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self.http.request(method, self.base + path, json=body, headers={
                "Authorization": f"Bearer {self.token}"}) as resp:
            data = await resp.json()
            if resp.status != 200:
                err = data.get("error", {})
                raise LocalError(err.get("message", f"HTTP {resp.status}"),
                                 hint=err.get("hint", ""))
            return data

    async def wait_state(self, call_id: str | None, states: set[str], timeout: float
                         ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if call_id is None:
                calls = (await self.call("GET", "/api/status"))["calls"]
                call = calls[-1] if calls else None
            else:
                call = await self.call("GET", f"/api/calls/{call_id}")
            if call is not None and call["state"] in states:
                return dict(call)
            if time.monotonic() > deadline:
                raise LocalError(f"the call did not reach {'/'.join(sorted(states))} within"
                                 f" {timeout:.0f} s", code=ErrorCode.INVALID_STATE,
                                 hint="see the terminal logs in the demo directory")
            await asyncio.sleep(0.1)


async def _demo(headless: bool, as_json: bool, humans: list[str], duration_s: float,
                root: Path, out: TextIO) -> int:
    def say(text: str) -> None:
        print(text, file=out, flush=True)

    children: list[Child] = []
    try:
        server = await Child.spawn("server", [*PARLEY, "server", "--data", str(root / "server"),
                                              "--port", "0"], root)
        children.append(server)
        server_url = await server.line("ready: ")
        say(f"line server at {server_url} (data and logs in {root})")
        await provision_line(root / "server", server_url, root, test_sets=True, say=say)

        robots = set(SIDES) if headless else set(SIDES) - {"washington", *humans}
        urls = {}
        for name in SIDES:
            args = [*PARLEY, "terminal", "--data", str(root / name), "--ui-port", "0",
                    "--ice-host", "127.0.0.1"]
            if name in robots:
                args.append("--auto-answer")
            else:
                args.append("--media=browser")
            child = await Child.spawn(name, args, root)
            children.append(child)
            urls[name] = await child.line("ui: ")
        for name in SIDES:
            test_set = f"{name}-{TEST_SET_DEVICE}"
            child = await Child.spawn(test_set, [
                *PARLEY, "terminal", "--data", str(test_set_dir(root, name)), "--test-set",
                "--ui-port", "0", "--ice-host", "127.0.0.1",
                "--linetest-duration", str(DEMO_LINETEST_S),
                "--linetest-every", "0" if headless else str(DEMO_LINETEST_EVERY_S)], root)
            children.append(child)
            urls[test_set] = await child.line("ui: ")
        say("each site's test set is running (line tests: verified test calls between them)")
        async with aiohttp.ClientSession() as http:
            controls = {name: Control(url, http) for name, url in urls.items()}
            if headless:
                return await _headless_call(controls, duration_s, as_json, say)
            controls = {name: controls[name] for name in SIDES}
            for name in SIDES:
                if name not in robots:
                    print(f"ui: {urls[name]}", flush=True)
                    say(f"   ^ {name}'s terminal: open this in a browser on this machine")
            if robots:
                say(f"{', '.join(sorted(robots))} is a robot: it answers calls and messages at"
                    " once, and sends a test pattern and a tone")
            say("Ctrl-C stops the demo.")
            await _follow(controls, say, robots)
            return 0
    finally:
        for child in reversed(children):
            await child.stop()


async def _headless_call(controls: dict[str, Control], duration_s: float, as_json: bool,
                         say: Any) -> int:
    wash, moscow = controls["washington"], controls["moscow"]
    for side in (wash, moscow):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (await side.call("GET", "/api/status"))["connected"]:
            if time.monotonic() > deadline:
                raise LocalError("a terminal could not connect to the server")
            await asyncio.sleep(0.05)
    started = time.monotonic()
    placed = await wash.call("POST", "/api/call", {"target": "moscow", "media": "video"})
    say(f"washington calls moscow (call {placed['call_id']})")
    active = await wash.wait_state(placed["call_id"], {"active", "ended"}, 30)
    if active["state"] != "active":
        say(f"the call did not connect: {active['end_reason']} {active.get('alarm') or ''}")
        return 1
    callee = await moscow.wait_state(None, {"active", "ended"}, 10)
    say(f"call active; SAS washington {active['sas']} / moscow {callee['sas']}")
    deadline = time.monotonic() + 10
    setup_ms = None
    while setup_ms is None and time.monotonic() < deadline:
        stats = (await wash.call("GET", f"/api/calls/{placed['call_id']}"))["stats"]
        firsts = [stats.get(k, {}).get("first_frame_ms") for k in ("audio", "video")]
        if all(f is not None for f in firsts):
            setup_ms = round(max(firsts), 1)
        else:
            await asyncio.sleep(0.02)
    say(f"media flowing {setup_ms} ms after the call was placed")
    messages = await _exchange_messages(wash, moscow, DEMO_MESSAGES, say)
    await asyncio.sleep(max(0.0, duration_s - (time.monotonic() - started)))
    await wash.call("POST", f"/api/calls/{placed['call_id']}/hangup")
    ended = {"caller": await wash.wait_state(placed["call_id"], {"ended"}, 10),
             "callee": await moscow.wait_state(callee["call_id"], {"ended"}, 10)}
    stats = {"caller": (await wash.call("GET", f"/api/calls/{placed['call_id']}"))["stats"],
             "callee": (await moscow.call("GET", f"/api/calls/{callee['call_id']}"))["stats"]}
    summary = {
        "verified": bool(active["verified"] and callee["verified"]),
        "sas_caller": active["sas"],
        "sas_callee": callee["sas"],
        # Both sides' view: "sframe+dtls-srtp" when every frame is sealed end to end.
        "media_protection": active.get("media_protection"),
        "media_protection_callee": callee.get("media_protection"),
        "frames_opened": {k: sum(v.get("frame_layer", {}).get(m, {}).get("opened", 0)
                                 for m in ("audio", "video")) for k, v in stats.items()},
        "setup_ms": setup_ms,
        "video_frames": {k: v.get("video", {}).get("frames", 0) for k, v in stats.items()},
        "audio_frames": {k: v.get("audio", {}).get("frames", 0) for k, v in stats.items()},
        "messages": messages,
    }
    say(f"hung up: caller {ended['caller']['end_reason']}, callee {ended['callee']['end_reason']}")
    summary["linetest"] = await _line_test(controls, say)
    summary["schedule"] = await _schedule_talk(wash, moscow, say)
    summary["statement"] = await _joint_statement(wash, moscow, say)
    ok = (summary["verified"] and summary["sas_caller"] == summary["sas_callee"]
          and summary["media_protection"] == summary["media_protection_callee"]
          == "sframe+dtls-srtp" and all(n > 0 for n in summary["frames_opened"].values())
          and all(n > 0 for n in summary["video_frames"].values())
          and all(n > 0 for n in summary["audio_frames"].values())
          and messages["sent"] == messages["delivered"] == messages["read_receipts"]
          == 2 * DEMO_MESSAGES and summary["linetest"]["status"] == "green"
          and summary["schedule"]["state"] == "confirmed"
          and summary["statement"]["in_both_logs"]
          and all(r["cosigned"] for r in summary["statement"]["records"].values()))
    if as_json:
        print(json.dumps(summary), flush=True)
    else:
        say(f"verified: {summary['verified']}; media {summary['media_protection']};"
            f" frames received -- video {summary['video_frames']}, audio"
            f" {summary['audio_frames']}")
        say(f"messages: {messages['sent']} sent, {messages['delivered']} delivered,"
            f" {messages['read_receipts']} read receipts")
        say("demo call OK" if ok else "demo call FAILED")
    return 0 if ok else 1


async def _schedule_talk(wash: Control, moscow: Control, say: Any) -> dict[str, Any]:
    """Washington requests a talk for tomorrow, 15:00 UTC; moscow accepts; both agree."""
    at = time.strftime("%Y-%m-%d 15:00 UTC", time.gmtime(time.time() + 86_400))
    asked = await wash.call("POST", "/api/schedule", {
        "party": "moscow", "title": "Demo talk", "at": at, "duration_s": 3600,
        "media": "video", "agenda": "1. The line itself"})
    say(f"talk requested: {asked['when']}")
    talk_id = asked["talk_id"]

    async def state(control: Control) -> str | None:
        talks = (await control.call("GET", "/api/schedule"))["talks"]
        return next((t["state"] for t in talks if t["talk_id"] == talk_id), None)

    deadline = time.monotonic() + 15
    while await state(moscow) != "proposed":
        if time.monotonic() > deadline:
            raise LocalError("moscow never saw the talk requested", code=ErrorCode.INVALID_STATE)
        await asyncio.sleep(0.1)
    await moscow.call("POST", f"/api/schedule/{talk_id}/accept", {})
    while await state(wash) != "confirmed":
        if time.monotonic() > deadline:
            raise LocalError("washington never saw the talk accepted",
                             code=ErrorCode.INVALID_STATE)
        await asyncio.sleep(0.1)
    say("talk accepted by moscow: confirmed at both ends")
    return {"talk_id": talk_id, "state": "confirmed", "when": asked["when"]}


async def _joint_statement(wash: Control, moscow: Control, say: Any) -> dict[str, Any]:
    """Washington drafts a statement, moscow edits it, both sign version 2; then each site's
    record holds it, cosigned by the other."""
    drafted = await wash.call("POST", "/api/statements", {
        "party": "moscow", "title": "Joint statement on the demo line",
        "text": "The two sides tested the line today.\nIt works."})
    ident = drafted["statement"]
    say(f"statement drafted by washington ({ident})")

    async def view(control: Control) -> dict[str, Any] | None:
        items = (await control.call("GET", "/api/statements"))["statements"]
        return next((s for s in items if s["statement"] == ident), None)

    async def until(control: Control, ok: Any, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            seen = await view(control)
            if seen is not None and ok(seen):
                return seen
            if time.monotonic() > deadline:
                raise LocalError(f"the statement: {what} never came",
                                 code=ErrorCode.INVALID_STATE)
            await asyncio.sleep(0.1)

    await until(moscow, lambda s: s["my_turn"], "the draft at moscow")
    edited = await moscow.call("POST", f"/api/statements/{ident}/edit", {
        "text": "The two sides tested the line today.\nIt works, and stays open."})
    sha = edited["versions"][-1]["sha256"]
    await until(wash, lambda s: s["latest"] == 2, "moscow's edit at washington")
    for side in (wash, moscow):
        await side.call("POST", f"/api/statements/{ident}/sign", {"version": 2, "sha256": sha})
    final = await until(wash, lambda s: s["in_both_logs"], "the statement in both logs")
    await until(moscow, lambda s: s["in_both_logs"], "the statement in both logs at moscow")
    records = {}
    for name, side in (("washington", wash), ("moscow", moscow)):
        rec = (await side.call("GET", "/api/record?limit=1"))["record"]
        records[name] = {"size": rec["size"],
                         "cosigned": [c["by"] for c in rec["cosigned"]]}
    say(f"statement final, signed by {' and '.join(final['versions'][-1]['signatures'])};"
        f" in both sites' records ({records['washington']['size']} and"
        f" {records['moscow']['size']} entries, each cosigned by the other)")
    return {"statement": ident, "final": final["final"], "in_both_logs": final["in_both_logs"],
            "signed_by": final["versions"][-1]["signatures"], "records": records}


async def _line_test(controls: dict[str, Control], say: Any) -> dict[str, Any]:
    """One line test from washington's test set to moscow's; its result, as the CLI's."""
    tester = controls[f"washington-{TEST_SET_DEVICE}"]
    for name in (f"washington-{TEST_SET_DEVICE}", f"moscow-{TEST_SET_DEVICE}"):
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (await controls[name].call("GET", "/api/status"))["connected"]:
            if time.monotonic() > deadline:
                raise LocalError("a test set could not connect to the server")
            await asyncio.sleep(0.05)
    say(f"line test: washington's test set calls moscow's ({DEMO_LINETEST_S:g} s) and"
        " sends a message round trip")
    result: dict[str, Any] = await tester.call("POST", "/api/linetest",
                                               {"line": "washington:moscow"})
    reasons = "; ".join(result["reasons"]) or "every figure within its threshold"
    say(f"line test {result['status'].upper()}: {reasons}; signed by"
        f" {' and '.join(result['signed_by']) or 'nobody'}")
    return result


async def _exchange_messages(wash: Control, moscow: Control, count: int,
                             say: Any) -> dict[str, int]:
    """`count` messages each way, each side reading what it got; what the senders saw."""
    sides = {"washington": (wash, "moscow"), "moscow": (moscow, "washington")}

    async def send(name: str) -> None:
        control, peer = sides[name]
        for n in range(count):
            await control.call("POST", "/api/messages",
                               {"to": peer, "text": f"{name} to {peer}, message {n + 1}"})

    await asyncio.gather(*(send(name) for name in sides))
    say(f"{count} messages sent each way during the call")

    async def outgoing(name: str) -> list[dict[str, Any]]:
        control, peer = sides[name]
        got = await control.call("GET", f"/api/messages?party={peer}&limit=1000")
        return [m for m in got["messages"] if m["outgoing"]]

    async def all_have(key: str) -> bool:
        for name in sides:
            mine = await outgoing(name)
            if len(mine) < count or not all(m["deliveries"] and all(d[key] for d in
                                                                    m["deliveries"])
                                            for m in mine):
                return False
        return True

    async def wait_all(key: str, deadline: float) -> None:
        """Poll the terminals' API (what a person's page would show) until `key` is in."""
        while time.monotonic() < deadline:
            if await all_have(key):
                return
            await asyncio.sleep(0.1)

    deadline = time.monotonic() + 30
    await wait_all("delivered_ms", deadline)
    for control, peer in sides.values():  # each person reads the conversation
        await control.call("POST", "/api/messages/read", {"party": peer})
    await wait_all("read_ms", deadline)
    mine = [m for name in sides for m in await outgoing(name)]
    summary = {
        "sent": sum(m["state"] == "sent" for m in mine),
        "delivered": sum(bool(m["deliveries"]) and all(d["delivered_ms"] for d in
                                                        m["deliveries"]) for m in mine),
        "read_receipts": sum(bool(m["deliveries"]) and all(d["read_ms"] for d in
                                                            m["deliveries"]) for m in mine),
    }
    say(f"messages: {summary['delivered']} of {len(mine)} delivered,"
        f" {summary['read_receipts']} read")
    return summary


async def _robot_signs(control: Control, statement: dict[str, Any], say: Any, name: str
                       ) -> None:
    """A robot signs the version a person sent it, as it stands (it edits nothing)."""
    if statement["final"] is not None or statement["signed_by_me"] or not statement["my_turn"]:
        return
    latest = statement["versions"][-1]
    say(f"[{name}] statement '{statement['title']}' v{latest['version']} from {latest['by']}:"
        " the robot signs it as it stands")
    await control.call("POST", f"/api/statements/{statement['statement']}/sign",
                       {"version": latest["version"], "sha256": latest["sha256"]})


async def _follow(controls: dict[str, Control], say: Any, robots: set[str]) -> None:
    """Print each side's call events as they happen, until Ctrl-C."""

    async def follow(name: str, control: Control) -> None:
        url = control.base.replace("http://", "ws://") + f"/api/events?token={control.token}"
        answered: set[str] = set()
        async with control.http.ws_connect(url) as ws:
            seen: dict[str, str] = {}
            async for msg in ws:
                event = json.loads(msg.data)
                if event.get("t") == "call":
                    call = event["call"]
                    if seen.get(call["call_id"]) == call["state"]:
                        continue
                    seen[call["call_id"]] = call["state"]
                    extra = f", SAS {call['sas']}, media {call['media_protection']}" \
                        if call["state"] == "active" else \
                        f" ({call['end_reason']})" if call["state"] == "ended" else ""
                    say(f"[{name}] call {call['direction']} {call['peer']}: {call['state']}{extra}")
                elif event.get("t") == "linetest" and "result" in event and \
                        name == "washington":
                    result = event["result"]
                    why = "; ".join(result["reasons"]) or "every figure within its threshold"
                    say(f"[line test] {result['line']}: {result['status'].upper()} -- {why}")
                elif event.get("t") == "statement" and name in robots:
                    await _robot_signs(control, event["statement"], say, name)
                elif event.get("t") == "alarm":
                    alarm = event["alarm"]
                    say(f"[{name}] ALARM {alarm['title']} [{alarm['code']}]: {alarm['message']}")
                elif event.get("t") == "message" and not event["message"]["outgoing"] \
                        and event["message"]["msg_id"] not in answered:
                    message = event["message"]
                    if message["kind"] == "text" and message["state"] == "shown":
                        answered.add(message["msg_id"])
                        say(f"[{name}] message from {message['sender']}: {message['text'][:200]}")
                        if name in robots:  # a robot reads it and answers
                            await control.call("POST", "/api/messages/read",
                                               {"party": message["party"]})
                            await control.call("POST", "/api/messages", {
                                "to": message["party"],
                                "text": f"{name} (a robot) received: {message['text'][:500]}"})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.ensure_future(follow(n, c)) for n, c in controls.items()]
    await stop.wait()
    for task in tasks:
        task.cancel()
    say("stopping")


def run_demo(*, headless: bool, as_json: bool, human: list[str], duration_s: float,
             keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="parley-demo-"))
    out = sys.stderr if as_json else sys.stdout
    try:
        return asyncio.run(_demo(headless, as_json, human, duration_s, root, out))
    except KeyboardInterrupt:
        return 130
    finally:
        if keep:
            print(f"demo data kept in {root}", file=out)
        else:
            shutil.rmtree(root, ignore_errors=True)
