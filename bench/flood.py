"""A logged-in pair under a local flood, beside the same pair with no flood, in one run.

The server under test is its own process (``python -m parley server``, default
limits but for the per-device rate, raised so that the pair's own pace is what
is measured); the flood is another (`tests.flood`: 100 WebSockets that send
batches of junk and never read, 300 half-open HTTP requests, each opened
again as soon as the server closes or refuses it); the pair and the logins
run here. All on 127.0.0.1, so the flood shares the genuine clients' address
and no limit per address can tell them apart: what has to hold is that junk
gets its connection closed fast and idle unauthenticated ones time out or are
pushed out by newer ones.

* The pair: two enrolled devices, each logged in with its real key; one sends
  the other an envelope sealed with HPKE and signed, the other answers with
  one of its own, and the next goes when the answer is in (one in flight).
  Figures: round trips a second, and the slowest round trip, with and without
  the flood; the ratio of the two rates.
* Logins: a third device logs in afresh (challenge, signature, welcome) once a
  second while the flood runs; the slowest, and how many succeeded.

Targets (PRODUCT.md): under the flood the pair keeps at least half its round
trip rate, no round trip over 250 ms, and a new login takes under 1 s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    PYTHON,
    REPO,
    Child,
    Result,
    median,
    percentile,
    r,
    say,
    start_server_process,
)
from parley.clock import now_ms
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys
from parley.lab import create_parties, enroll_terminal
from parley.terminal.link import ServerLink
from parley.terminal.store import TerminalStore

TARGET_RATIO = 0.5
TARGET_MAX_RTT_MS = 250.0
TARGET_LOGIN_MS = 1000.0


class Pair:
    """Two links; round trips of sealed envelopes, one in flight."""

    def __init__(self, a: tuple[str, DeviceKeys], b: tuple[str, DeviceKeys], url: str) -> None:
        self.a_id, self.a_keys = a
        self.b_id, self.b_keys = b
        self.a_pub = self.a_keys.public(self.a_id)
        self.b_pub = self.b_keys.public(self.b_id)
        self.answered: asyncio.Event = asyncio.Event()
        self.a = ServerLink(url, self.a_id, self.a_keys, on_deliver=self._at_a)
        self.b = ServerLink(url, self.b_id, self.b_keys, on_deliver=self._at_b)

    async def _at_b(self, _env: dict[str, Any]) -> None:
        reply = seal_envelope(self.b_keys, self.b_id, self.a_pub, "call.ice",
                              {"call_id": "bench", "candidate": ""}, now_ms())
        await self.b.send_envelope(reply, ephemeral=True)

    async def _at_a(self, _env: dict[str, Any]) -> None:
        self.answered.set()

    async def start(self) -> None:
        await self.a.connect_once()
        await self.b.connect_once()

    async def round_trips(self, seconds: float) -> list[float]:
        """Each round trip's time (ms), for `seconds`."""
        out = []
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            self.answered.clear()
            started = time.perf_counter()
            env = seal_envelope(self.a_keys, self.a_id, self.b_pub, "call.ice",
                                {"call_id": "bench", "candidate": ""}, now_ms())
            await self.a.send_envelope(env, ephemeral=True)
            await asyncio.wait_for(self.answered.wait(), 10)
            out.append((time.perf_counter() - started) * 1000)
        return out

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


async def timed_logins(url: str, device: tuple[str, DeviceKeys], seconds: float
                       ) -> tuple[list[float], list[str]]:
    """A fresh login once a second: how long each took (ms), and what failed."""
    times, failures = [], []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        link = ServerLink(url, device[0], device[1], receive=False)
        started = time.perf_counter()
        try:
            await link.connect_once()
            times.append((time.perf_counter() - started) * 1000)
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            await link.close()
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - started)))
    return times, failures


def _device(data: Path) -> tuple[str, DeviceKeys]:
    store = TerminalStore(data)
    try:
        return store.device_id, store.load_keys()
    finally:
        store.close()


async def _metrics(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("parley_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("parley_").removesuffix("_total")] = float(value)
    return out


async def run(root: Path, *, quick: bool) -> Result:
    started = time.monotonic()
    result = Result("flood")
    seconds = 6.0 if quick else 20.0
    logs = root / "flood-logs"
    # Default limits, but for the per-device rate: the pair, one in flight, goes faster
    # than the 2,000 frames a second a device may send, and it is not what is measured.
    server, url = await start_server_process(root / "flood-server", logs,
                                             extra_args=["--rate-limit", "100000"])
    flood: Child | None = None
    pair: Pair | None = None
    try:
        parties = {"washington": ("W", "UTC"), "moscow": ("M", "UTC")}
        codes = create_parties(root / "flood-server", parties, [("washington", "moscow")])
        await enroll_terminal(root / "flood-a", "a", url, codes["washington"])
        await enroll_terminal(root / "flood-b", "b", url, codes["moscow"])
        spare = create_parties(root / "flood-server", parties, [])["washington"]
        await enroll_terminal(root / "flood-login", "login", url, spare)
        pair = Pair(_device(root / "flood-a"), _device(root / "flood-b"), url)
        await pair.start()
        login_device = _device(root / "flood-login")

        say(f"flood: the pair alone for {seconds:.0f} s")
        await pair.round_trips(1.0)  # warm up
        calm = await pair.round_trips(seconds)
        calm_logins, _ = await timed_logins(url, login_device, 3.0)

        say(f"flood: the pair, and logins, under the flood for {seconds:.0f} s")
        before = await _metrics(url)
        flood = await Child.spawn("flood", [PYTHON, "-m", "tests.flood", "--url", url,
                                            "--seconds", str(seconds + 4)], logs, cwd=REPO)
        await flood.line("flood: started", 30)
        await asyncio.sleep(2.0)  # let it build up: 400 connections opening and churning
        stormy_task = asyncio.ensure_future(pair.round_trips(seconds))
        logins, failures = await timed_logins(url, login_device, seconds)
        stormy = await stormy_task
        tally = await flood.json_line(30)
        after = await _metrics(url)
    finally:
        if pair is not None:
            await pair.close()
        if flood is not None:
            await flood.stop()
        await server.stop()

    rate_calm, rate_flood = len(calm) / seconds, len(stormy) / seconds
    ratio = rate_flood / rate_calm if rate_calm else 0.0
    worst = max(stormy) if stormy else float("nan")
    worst_login = max(logins) if logins else float("nan")
    counted = {k: after.get(k, 0) - before.get(k, 0) for k in (
        "connections_refused", "connections_evicted", "closed_before_login", "login_timeouts",
        "bad_input", "logins")}
    result.row("pair round trips/s, under the flood (baseline: the pair alone)", r(rate_flood),
               "/s", r(rate_calm), round(ratio, 2), f">= {TARGET_RATIO}x",
               ratio >= TARGET_RATIO)
    result.row("slowest round trip under the flood", r(worst), "ms", r(max(calm)),
               None, f"<= {TARGET_MAX_RTT_MS:.0f} ms", worst <= TARGET_MAX_RTT_MS)
    result.row("round trip p50 / p99 under the flood", r(median(stormy), 2), "ms",
               r(median(calm), 2))
    result.row("round trip p99 under the flood", r(percentile(stormy, 99), 2), "ms",
               r(percentile(calm, 99), 2))
    result.row(f"slowest fresh login under the flood ({len(logins)} of"
               f" {len(logins) + len(failures)} succeeded)", r(worst_login), "ms",
               r(max(calm_logins)) if calm_logins else None, None,
               f"< {TARGET_LOGIN_MS:.0f} ms", not failures and worst_login < TARGET_LOGIN_MS)
    result.notes.append(
        f"the flood: {tally['ws_opened']} junk WebSockets opened ({tally['ws_messages']}"
        f" junk messages of 100 frames sent), {tally['half_opened']} half-open requests;"
        f" the server refused {counted['connections_refused']:.0f} connections, pushed out"
        f" {counted['connections_evicted']:.0f} that had not logged in, closed"
        f" {counted['closed_before_login']:.0f} for junk before login and"
        f" {counted['login_timeouts']:.0f} for not logging in")
    if failures:
        result.notes.append(f"failed logins: {'; '.join(failures[:3])}")
    result.figures.update({
        "flood_ratio": round(ratio, 3), "flood_rtt_per_s": r(rate_flood),
        "flood_rtt_per_s_baseline": r(rate_calm), "flood_max_rtt_ms": r(worst),
        "flood_login_ms_max": r(worst_login), "flood_login_failures": len(failures),
        "flood_tally": tally, "flood_server": counted,
    })
    result.series = {"calm_ms": calm, "flood_ms": stormy, "login_ms": logins}
    result.seconds = time.monotonic() - started
    return result
