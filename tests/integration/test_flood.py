"""A local flood while a logged-in pair talks: the limits close the flood, not the line.

The flood is its own process (`tests.flood`: 100 WebSockets sending batches of
junk without reading, 300 half-open HTTP requests, each opened again as soon as
the server lets go of it), on 127.0.0.1 like everything else, so it shares the
genuine clients' address. The server is the real one with its default limits,
but for shorter timeouts so that a few seconds show whole cycles of them. The
figures (rates, the slowest round trip, login times against targets) are
`bench/run flood`'s; this checks what must hold whatever the machine.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from parley.clock import now_ms
from parley.core.envelope import seal_envelope
from parley.core.relay.limits import Limits
from parley.terminal.link import ServerLink
from tests.harness import device_of, local_line

REPO = Path(__file__).resolve().parents[2]
FLOOD_S = 6.0


async def test_a_flood_is_closed_by_the_limits_while_the_pair_talks_and_logins_succeed(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    limits = Limits(header_timeout=1.5, login_timeout=2.0, hold_refused=1.0)
    async with local_line(tmp_path, limits) as line:
        dirs = await line.provision(verify=False)
        (a_id, a_keys), (b_id, b_keys) = device_of(dirs, "washington"), device_of(dirs, "moscow")
        answered = asyncio.Event()

        async def at_b(_env: dict[str, Any]) -> None:
            reply = seal_envelope(b_keys, b_id, a_keys.public(a_id), "call.ice",
                                  {"call_id": "flood", "candidate": ""}, now_ms())
            await b.send_envelope(reply, ephemeral=True)

        async def at_a(_env: dict[str, Any]) -> None:
            answered.set()

        a = ServerLink(line.url, a_id, a_keys, on_deliver=at_a)
        b = ServerLink(line.url, b_id, b_keys, on_deliver=at_b)
        await a.connect_once()
        await b.connect_once()
        assert line.server is not None
        admission = line.server.admission

        round_trips: list[float] = []  # when each completed (monotonic s)

        async def talk(until: float) -> None:
            while time.monotonic() < until:
                answered.clear()
                env = seal_envelope(a_keys, a_id, b_keys.public(b_id), "call.ice",
                                    {"call_id": "flood", "candidate": ""}, now_ms())
                await a.send_envelope(env, ephemeral=True)
                await asyncio.wait_for(answered.wait(), 5)
                round_trips.append(time.monotonic())
                await asyncio.sleep(0.005)

        flood = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.flood", "--url", line.url, "--seconds", str(FLOOD_S),
            cwd=REPO, stdout=subprocess.PIPE)
        assert flood.stdout is not None
        assert (await asyncio.wait_for(flood.stdout.readline(), 30)).startswith(b"flood:")
        started = time.monotonic()
        talking = asyncio.ensure_future(talk(started + FLOOD_S - 1))
        logins, peak_unauthenticated = [], 0
        while time.monotonic() < started + FLOOD_S - 1.5:
            await asyncio.sleep(0.5)
            peak_unauthenticated = max(peak_unauthenticated, admission.unauthenticated)
            fresh = ServerLink(line.url, a_id, a_keys, receive=False)
            t0 = time.monotonic()
            try:
                await fresh.connect_once()  # a login from the flood's own address
                logins.append(time.monotonic() - t0)
            finally:
                await fresh.close()
        await talking
        out, _ = await asyncio.wait_for(flood.communicate(), 30)
        tally = json.loads(out.decode().strip().splitlines()[-1].removeprefix("json: "))
        await a.close()
        await b.close()

        # The pair kept talking throughout: no stretch of two seconds without a round trip.
        times = [started, *round_trips, started + FLOOD_S - 1]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert len(round_trips) > 50 and max(gaps) < 2.0, (len(round_trips), max(gaps))
        # Every fresh login during the flood succeeded.
        assert len(logins) >= 5, logins
        # The flood's connections were closed or pushed out by the limits, and those not
        # logged in never grew past their cap.
        counters = line.server.relay.counters
        assert tally["ws_opened"] > 0 and tally["half_opened"] >= 300
        assert counters.closed_before_login > 0 and admission.evicted > 0
        assert tally["ws_closed"] > 0 and tally["half_closed"] > 0
        assert 0 < peak_unauthenticated <= limits.max_unauthenticated_per_source
        async with http.get(line.url + "/metrics") as resp:
            metrics = await resp.text()
        assert "parley_connections_evicted_total" in metrics
        assert "parley_closed_before_login_total" in metrics
