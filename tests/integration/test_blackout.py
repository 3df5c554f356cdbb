"""A network blackout in the middle of a call: cut for 10 s, the call comes back by itself.

Two network namespaces made here, one per site, joined by a veth pair:
washington's (with the line server) and moscow's. Every process is a real
one -- `parley server`, `parley terminal` for each site, started with ``ip
netns exec`` -- and the test drives them as an operator would, with the CLI
inside each namespace. The cut is iptables in moscow's namespace dropping
every packet, in and out: media, and moscow's signaling to the server alike.

What must hold: both sides show *reconnecting*; within 5 s of the restore the
call is active again, on a new peer connection whose handshake certificate
was checked against the one its side signed (the same certificate, so the same
SAS), with no alarm; and a cut longer than the give-up time ends the call at
both sides as ``connection_lost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from tests.integration.test_cli import Proc, procs

pytestmark = pytest.mark.netns
__all__ = ["procs"]  # a fixture used below
ROOT = Path(__file__).resolve().parents[2]
A_ADDR, B_ADDR = "10.93.0.1", "10.93.0.2"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture
def sites() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: (washington's, moscow's)."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces and iptables need root: run scripts/test as root")
    tag = os.getpid() % 100_000
    a, b = f"parley-w{tag}", f"parley-m{tag}"
    for ns in (a, b):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", f"pw{tag}", "netns", a, "type", "veth", "peer", "name",
           f"pm{tag}", "netns", b)
        for ns, dev, addr in ((a, f"pw{tag}", A_ADDR), (b, f"pm{tag}", B_ADDR)):
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


class Site:
    """One site's terminal, in its namespace, and the CLI there."""

    def __init__(self, ns: str, data: Path) -> None:
        self.ns, self.data = ns, data

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "parley",
                               *args, "--data", str(self.data)], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"parley {' '.join(args)} in {self.ns}: {done.stdout}"
                                 f" {done.stderr}")
        return done

    def call(self) -> dict[str, Any]:
        calls = json.loads(self.cli("status", "--json").stdout)["calls"]
        return dict(calls[-1]) if calls else {}


def start_line(tmp: Path, a: str, b: str, procs: list[Proc], give_up_s: float, *,
               browser: bool = False) -> tuple[Site, Site, str]:
    """The server, each site provisioned and verified, moscow a robot that answers,
    washington a robot or its person's browser; (washington, moscow, washington's UI)."""
    server = Proc("server", "--host", A_ADDR, "--port", "0", "--data", str(tmp / "server"),
                  netns=a)
    procs.append(server)
    url = server.line("ready: ", 60)
    provision = subprocess.run(
        ["ip", "netns", "exec", a, sys.executable, "-c",
         "import asyncio, sys; from pathlib import Path; from parley.lab import provision_line;"
         " asyncio.run(provision_line(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])))",
         str(tmp / "server"), url, str(tmp)], capture_output=True, text=True, timeout=120,
        cwd=ROOT)
    assert provision.returncode == 0, provision.stderr[-2000:]
    common = ["--ui-port", "0", "--reconnect-give-up", str(give_up_s)]
    ui = ""
    for name, ns, addr, extra in (("moscow", b, B_ADDR, ["--auto-answer"]),
                                  ("washington", a, A_ADDR,
                                   ["--media", "browser"] if browser else [])):
        proc = Proc("terminal", "--data", str(tmp / name), "--ice-host", addr, *common, *extra,
                    netns=ns)
        procs.append(proc)
        ui = proc.line("ui: ", 60)
    return Site(a, tmp / "washington"), Site(b, tmp / "moscow"), ui


def cut(ns: str, on: bool) -> None:
    """Every packet to or from the namespace's network dropped (its own loopback spared:
    the site's operator still reaches its terminal)."""
    op = "-I" if on else "-D"
    for chain, side in (("INPUT", "-i"), ("OUTPUT", "-o")):
        sh("ip", "netns", "exec", ns, "iptables", op, chain, "!", side, "lo", "-j", "DROP")


def watch(sites: tuple[Site, Site], until: Any, timeout: float) -> tuple[float, list[Any]]:
    """Poll both sites' call until `until(w, m)`; (when, every (w, m) state seen)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        w, m = sites[0].call(), sites[1].call()
        seen.append((w.get("state"), m.get("state")))
        if until(w, m):
            return time.monotonic(), seen
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout} s; saw {seen[-10:]}")


def test_a_ten_second_blackout_and_the_call_is_back_within_five_seconds(
        tmp_path: Path, sites: tuple[str, str], procs: list[Proc]) -> None:
    a, b = sites
    washington, moscow, _ = start_line(tmp_path, a, b, procs, give_up_s=60)
    placed = washington.cli("call", "moscow")
    assert "active" in placed.stdout, placed.stdout
    first = washington.call()
    assert first["verified"] and first["gen"] == 0
    time.sleep(2)

    cut(b, True)
    cut_at = time.monotonic()
    watch((washington, moscow), lambda w, m: w.get("state") == "reconnecting", 12)
    # moscow's terminal is behind the cut too: its view is read there, through its own CLI.
    left = 10 - (time.monotonic() - cut_at)
    m_seen = []
    end = time.monotonic() + max(0.0, left)
    while time.monotonic() < end:
        m_seen.append(moscow.call().get("state"))
        time.sleep(0.3)
    cut(b, False)
    restored = time.monotonic()
    back_at, after = watch((washington, moscow),
                           lambda w, m: w.get("state") == "active" and w.get("gen", 0) >= 1
                           and m.get("state") == "active" and m.get("gen", 0) >= 1, 15)
    print(f"blackout: the call was back {back_at - restored:.1f} s after the restore")
    assert back_at - restored <= 5.0, (back_at - restored, after)
    assert "reconnecting" in m_seen, m_seen  # moscow showed it too
    w, m = washington.call(), moscow.call()
    assert w["verified"] and m["verified"] and w["call_id"] == first["call_id"]
    # The same certificates again: the handshake checked against what each side signed,
    # and the SAS unchanged.
    assert w["sas"] == m["sas"] == first["sas"] and not w["sas_changed"]
    for site in (washington, moscow):
        alarms = json.loads(site.cli("alarms", "--json").stdout)
        assert alarms == [], alarms
    washington.cli("hangup")


def test_a_blackout_longer_than_the_give_up_time_ends_the_call_as_lost(
        tmp_path: Path, sites: tuple[str, str], procs: list[Proc]) -> None:
    a, b = sites
    washington, moscow, _ = start_line(tmp_path, a, b, procs, give_up_s=6)
    assert "active" in washington.cli("call", "moscow").stdout
    cut(b, True)
    try:
        watch((washington, moscow), lambda w, m: w.get("state") == "ended", 20)
    finally:
        cut(b, False)
    w = washington.call()
    assert w["end_reason"] == "connection_lost", w
    watch((washington, moscow), lambda w, m: m.get("state") == "ended", 15)
    assert moscow.call()["end_reason"] == "connection_lost"


@contextlib.asynccontextmanager
async def person_in_a_call(tmp: Path, ns: str, ui: str) -> AsyncIterator[Page]:
    """washington's person: Chromium run inside its namespace, its page open at `ui`,
    in an active call with moscow."""
    from playwright.async_api import async_playwright, expect

    from tests.browser import VIEWPORT, call_button
    from tests.chromium import CHROMIUM, CHROMIUM_ARGS

    wrapper = tmp / "chromium-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(wrapper),
                                                   args=CHROMIUM_ARGS, headless=True)
        try:
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            await page.goto(ui)
            await page.get_by_test_id("link-state").filter(
                has_text="line server: connected").wait_for(timeout=20_000)
            await call_button(page, "moscow").click()
            await expect(page.get_by_test_id("call-state")).to_have_attribute(
                "data-state", "active", timeout=20_000)
            yield page
        finally:
            await browser.close()


@pytest.mark.browser
async def test_a_blackout_between_a_persons_browser_and_a_robot(
        tmp_path: Path, sites: tuple[str, str], procs: list[Proc]) -> None:
    """The same cut with washington's media in its person's Chromium (run inside
    washington's namespace): the page shows reconnecting, makes a new peer connection
    with the call's certificate, and plays the robot's video again."""
    from playwright.async_api import expect

    from tests.browser import remote_video_frames

    a, b = sites
    washington, moscow, ui = await asyncio.to_thread(start_line, tmp_path, a, b, procs, 60,
                                                     browser=True)
    async with person_in_a_call(tmp_path, a, ui) as page:
        state = page.get_by_test_id("call-state")
        sas = await page.get_by_test_id("sas").text_content()
        first = await asyncio.to_thread(washington.call)

        cut(b, True)
        cut_at = time.monotonic()
        await expect(state).to_have_attribute("data-state", "reconnecting", timeout=12_000)
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - cut_at)))
        cut(b, False)
        restored = time.monotonic()
        await expect(state).to_have_attribute("data-state", "active", timeout=15_000)
        back = time.monotonic() - restored
        print(f"blackout (browser): the call was back {back:.1f} s after the restore")
        assert back <= 5.0, back
        before = await remote_video_frames(page)
        await page.wait_for_function(
            f"() => document.querySelector('[data-testid=remote-video]').srcObject &&"
            f" document.querySelector('[data-testid=remote-video]')"
            f".getVideoPlaybackQuality().totalVideoFrames > {before + 10}",
            timeout=10_000)
        w = await asyncio.to_thread(washington.call)
        m = await asyncio.to_thread(moscow.call)
        assert w["call_id"] == first["call_id"] and w["gen"] >= 1 and w["verified"]
        assert m["state"] == "active" and m["verified"] and m["sas"] == w["sas"]
        assert await page.get_by_test_id("sas").text_content() == sas
        assert not w["sas_changed"]
        alarms = await asyncio.to_thread(washington.cli, "alarms", "--json")
        assert json.loads(alarms.stdout) == []


@pytest.mark.browser
async def test_a_long_blackout_ends_a_persons_call_as_lost(
        tmp_path: Path, sites: tuple[str, str], procs: list[Proc]) -> None:
    from playwright.async_api import expect

    a, b = sites
    _washington, moscow, ui = await asyncio.to_thread(start_line, tmp_path, a, b, procs, 8,
                                                      browser=True)
    async with person_in_a_call(tmp_path, a, ui) as page:
        state = page.get_by_test_id("call-state")
        cut(b, True)
        try:
            await expect(state).to_have_attribute("data-state", "reconnecting",
                                                  timeout=12_000)
            await expect(state).to_have_attribute("data-reason", "connection_lost",
                                                  timeout=20_000)
        finally:
            cut(b, False)
        await expect(page.get_by_test_id("call-failed-title")).to_contain_text(
            "the connection was lost")
        m = await asyncio.to_thread(moscow.call)
        assert m["state"] == "ended" and m["end_reason"] == "connection_lost", m
