"""Hotline messages end to end, beside the same path relayed instead of stored, in one run.

The server is its own process (``python -m parley server``, default limits),
and so is the receiving terminal (``parley terminal``), as it would be at its
own site; the sending terminal runs here. Both are real terminals, verified as
operators would. A message's path is
the whole of it: queued in the sender's store, sealed and signed, stored by the
server (committed before it says so), delivered, opened, committed in the
receiver's store, and its delivery receipt -- sealed, signed, stored and
delivered the same way -- back at the sender. Times are the sender's own:
from queueing a message to recording its receipt.

* Throughput: `burst` messages queued as fast as the sender takes them;
  messages a second from the first queued to the last receipt.
* Latency at a fixed rate (200 a second): p50 and p99 of each message's time
  to its receipt.
* The baseline, in the same run: the same terminals with messages sent
  ephemeral (relayed by the server, never stored): what storing costs.
* Drain: a recipient offline while `drain` messages wait for it, then online;
  the time until it has committed them all.

Targets (PRODUCT.md): at least 1,000 messages a second end to end, and p99
under 50 ms at 200 a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from bench.common import PYTHON, Child, Result, median, percentile, r, say, start_server_process
from parley.lab import provision_line
from parley.terminal.app import Terminal, TerminalConfig

TARGET_RATE = 1000.0
TARGET_P99_MS = 50.0
FIXED_RATE = 200.0


async def _terminal(root: Path, name: str, *, stored: bool) -> Terminal:
    terminal = Terminal(TerminalConfig(data_dir=root / name, messages_stored=stored))
    await terminal.start()
    await asyncio.wait_for(terminal.link.connected.wait(), 10)
    return terminal


def _receipts(terminal: Terminal, since_order: int) -> list[tuple[int, int]]:
    """(queued, receipt recorded) wall ms of each message sent after `since_order`."""
    rows = terminal.store.db.execute(
        "SELECT m.time_ms, d.delivered_ms FROM messages m JOIN deliveries d ON d.msg_id ="
        " m.msg_id WHERE m.outgoing=1 AND m.shown>? AND d.delivered_ms IS NOT NULL",
        (since_order,)).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def _last_order(terminal: Terminal) -> int:
    row = terminal.store.db.execute("SELECT MAX(shown) FROM messages").fetchone()
    return int(row[0] or 0)


async def _wait_receipts(terminal: Terminal, since: int, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(_receipts(terminal, since)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(_receipts(terminal, since))} of {count} delivery"
                               f" receipts within {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def burst(sender: Terminal, count: int) -> tuple[float, list[float]]:
    """Messages a second for `count` queued at once, and each one's time to its receipt."""
    since = _last_order(sender)
    started = time.time() * 1000
    for n in range(count):
        await sender.messages.send_text("moscow", f"burst message {n}")
    await _wait_receipts(sender, since, count, 120)
    got = _receipts(sender, since)
    done = max(b for _, b in got)
    return count / ((done - started) / 1000), [b - a for a, b in got]


async def steady(sender: Terminal, rate: float, seconds: float) -> list[float]:
    """Messages at `rate` a second for `seconds`; each one's time to its receipt (ms)."""
    since = _last_order(sender)
    count = int(rate * seconds)
    start = time.monotonic()
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await sender.messages.send_text("moscow", f"steady message {n}")
    await _wait_receipts(sender, since, count, 60)
    return [b - a for a, b in _receipts(sender, since)]


async def _receiver(root: Path, logs: Path, *, stored: bool) -> Child:
    """moscow's terminal in its own process (ephemeral messages for the baseline)."""
    child = await Child.spawn("moscow", [PYTHON, "-m", "parley", "terminal", "--data",
                                         str(root / "moscow"), "--ui-port", "0",
                                         "--log-level", "warning",
                                         "--no-messages-relayed" if stored
                                         else "--messages-relayed"], logs)
    await child.line("ui: ", 30)
    return child


async def run(root: Path, *, quick: bool) -> Result:
    started = time.monotonic()
    result = Result("messages")
    count = 2000 if quick else 5000
    seconds = 5.0 if quick else 15.0
    drain_count = 3000 if quick else 10_000
    logs = root / "messages-logs"
    server: Child
    server, url = await start_server_process(root / "messages-server", logs)
    figures: dict[str, dict[str, float]] = {}
    lat: dict[str, list[float]] = {}
    try:
        await provision_line(root / "messages-server", url, root)
        for mode in ("stored", "ephemeral"):
            moscow = await _receiver(root, logs, stored=mode == "stored")
            washington = await _terminal(root, "washington", stored=mode == "stored")
            try:
                say(f"messages: {count} at once, {mode}")
                await burst(washington, 100)  # warm up: keys, listings, connections
                rate, burst_ms = await burst(washington, count)
                say(f"messages: {FIXED_RATE:.0f}/s for {seconds:.0f} s, {mode}")
                steady_ms = await steady(washington, FIXED_RATE, seconds)
            finally:
                await washington.stop()
                await moscow.stop()
            figures[mode] = {"rate": rate, "p50": median(steady_ms),
                             "p99": percentile(steady_ms, 99),
                             "burst_p50": median(burst_ms)}
            lat[mode] = steady_ms

        say(f"messages: {drain_count} waiting for a recipient that was away")
        washington = await _terminal(root, "washington", stored=True)
        try:
            since = _last_order(washington)
            for n in range(drain_count):
                await washington.messages.send_text("moscow", f"while you were away {n}")
            deadline = time.monotonic() + 120
            while washington.messages.ms.outbox_size():
                if time.monotonic() > deadline:
                    raise RuntimeError("the messages were not all stored by the server")
                await asyncio.sleep(0.1)
            moscow_before = _shown(root, "washington")
            t0 = time.monotonic()
            moscow = await _receiver(root, logs, stored=True)
            try:
                while _shown(root, "washington") - moscow_before < drain_count:
                    if time.monotonic() - t0 > 180:
                        raise RuntimeError("the backlog did not drain in 180 s")
                    await asyncio.sleep(0.05)
                drain_s = time.monotonic() - t0
                await _wait_receipts(washington, since, drain_count, 120)
            finally:
                await moscow.stop()
        finally:
            await washington.stop()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()

    s, e = figures["stored"], figures["ephemeral"]
    result.row("messages/s end to end, stored (baseline: relayed, not stored)", r(s["rate"]),
               "/s", r(e["rate"]), round(s["rate"] / e["rate"], 2),
               f">= {TARGET_RATE:.0f}/s", s["rate"] >= TARGET_RATE)
    result.row(f"latency p50 at {FIXED_RATE:.0f}/s, queued to receipt", r(s["p50"]), "ms",
               r(e["p50"]), round(s["p50"] / e["p50"], 2) if e["p50"] else None)
    result.row(f"latency p99 at {FIXED_RATE:.0f}/s, queued to receipt", r(s["p99"]), "ms",
               r(e["p99"]), round(s["p99"] / e["p99"], 2) if e["p99"] else None,
               f"< {TARGET_P99_MS:.0f} ms", s["p99"] < TARGET_P99_MS)
    result.row(f"an offline recipient drains {drain_count:,} waiting messages", r(drain_s, 2),
               "s")
    result.row("  that is, messages/s", r(drain_count / drain_s), "/s")
    result.notes.append(
        "each message: queued in the sender's store, sealed (HPKE) and signed, stored by the"
        " server, delivered, opened, committed in the receiver's store; its delivery receipt"
        " back the same way. Baseline: the same with the server relaying instead of storing")
    result.figures.update({
        "messages_per_s": r(s["rate"]), "messages_per_s_baseline": r(e["rate"]),
        "messages_p50_ms": r(s["p50"]), "messages_p99_ms": r(s["p99"]),
        "messages_p99_ms_baseline": r(e["p99"]), "messages_drain_s": r(drain_s, 2),
        "messages_drain_count": drain_count,
    })
    result.series = {"steady_stored_ms": lat["stored"], "steady_ephemeral_ms": lat["ephemeral"]}
    result.seconds = time.monotonic() - started
    return result


def _shown(root: Path, party: str) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{root / 'moscow' / 'terminal.db'}?mode=ro", uri=True) as db:
        row = db.execute("SELECT COUNT(*) FROM messages WHERE outgoing=0 AND party=? AND shown"
                         " IS NOT NULL", (party,)).fetchone()
    return int(row[0])
