"""Two sites with no path to each other talk through coturn, on credentials the server issued.

Three network namespaces made here: the line host's (the line server and a real
coturn, both on 10.95.0.1) and one per site, each joined to the host's by its own
veth pair. The host's namespace forwards nothing, so washington's packets can reach
the server and the relay but never moscow, and the other way round. The line is
set to *relay only*; the server holds the secret it shares with coturn
(``use-auth-secret``) and gives each terminal time-limited credentials for its
call. The call must come up verified, its frames sealed end to end, through the
relay (coturn's log shows each side's allocation, under the username the server
issued); and coturn refuses a credential once its time is past.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parley.core.turn import credential
from tests.integration.test_blackout import ROOT, Site, person_in_a_call, sh
from tests.integration.test_cli import Proc, procs

pytestmark = pytest.mark.netns
__all__ = ["procs"]  # a fixture used below
HOST = "10.95.0.1"  # the line server and coturn
W_LINK, M_LINK = ("10.95.1.1", "10.95.1.2"), ("10.95.2.1", "10.95.2.2")  # (host side, site)
TURN_PORT = 3478


@pytest.fixture
def host_and_sites() -> Iterator[tuple[str, str, str]]:
    """(the line host's namespace, washington's, moscow's)."""
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root: run scripts/test as root")
    if shutil.which("turnserver") is None:
        pytest.fail("coturn is missing: scripts/test installs it (scripts/test-packages.txt)")
    tag = os.getpid() % 100_000
    host, w, m = f"parley-h{tag}", f"parley-tw{tag}", f"parley-tm{tag}"
    for ns in (host, w, m):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "netns", "exec", host, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", host, "ip", "addr", "add", f"{HOST}/32", "dev", "lo")
        sh("ip", "netns", "exec", host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
        for site, (near, far), dev in ((w, W_LINK, f"hw{tag}"), (m, M_LINK, f"hm{tag}")):
            peer = f"s{dev}"
            sh("ip", "link", "add", dev, "netns", host, "type", "veth", "peer", "name", peer,
               "netns", site)
            sh("ip", "netns", "exec", host, "ip", "addr", "add", f"{near}/24", "dev", dev)
            sh("ip", "netns", "exec", host, "ip", "link", "set", dev, "up")
            sh("ip", "netns", "exec", site, "ip", "link", "set", "lo", "up")
            sh("ip", "netns", "exec", site, "ip", "addr", "add", f"{far}/24", "dev", peer)
            sh("ip", "netns", "exec", site, "ip", "link", "set", peer, "up")
            sh("ip", "netns", "exec", site, "ip", "route", "add", f"{HOST}/32", "via", near)
        yield host, w, m
    finally:
        for ns in (host, w, m):
            sh("ip", "netns", "del", ns, check=False)


def _turn_probe(ns: str, username: str, password: str) -> str:
    """Try a TURN allocation from `ns` with these credentials: "allocated" or the error."""
    code = (
        "import asyncio, sys\n"
        "from aioice.turn import create_turn_endpoint\n"
        "async def main():\n"
        "    try:\n"
        "        transport, _ = await asyncio.wait_for(create_turn_endpoint(\n"
        "            asyncio.DatagramProtocol, server_addr=(sys.argv[1], int(sys.argv[2])),\n"
        "            username=sys.argv[3], password=sys.argv[4], lifetime=60), 10)\n"
        "    except Exception as exc:\n"
        "        print(f'refused: {type(exc).__name__}: {exc}')\n"
        "        return\n"
        "    print('allocated', transport.get_extra_info('sockname'))\n"
        "    transport.close()\n"
        "asyncio.run(main())\n")
    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, HOST,
                           str(TURN_PORT), username, password], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    return (done.stdout + done.stderr).strip()


@contextlib.contextmanager
def relay_line(tmp: Path, namespaces: tuple[str, str, str], procs: list[Proc], *,
               browser: bool = False) -> Iterator[tuple[Site, Site, str, str, Path]]:
    """coturn and the line server at the host, the line relay-only, moscow a robot that
    answers, washington a robot or its person's browser: (washington, moscow, washington's
    UI, the TURN secret, coturn's log)."""
    host, w, m = namespaces
    secret = secrets.token_urlsafe(32)
    secret_file = tmp / "turn.secret"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    turn_log = tmp / "coturn.log"
    conf = tmp / "turnserver.conf"  # the secret in a 0600 file, as the guide says
    conf.write_text("\n".join([
        "use-auth-secret", f"static-auth-secret={secret}", "realm=parley.test",
        f"listening-ip={HOST}", f"relay-ip={HOST}", f"listening-port={TURN_PORT}",
        "fingerprint", "no-tls", "no-dtls", "no-cli", "no-multicast-peers", "verbose",
        f"log-file={turn_log}", "simple-log", f"pidfile={tmp / 'coturn.pid'}",
        f"allowed-peer-ip={HOST}", "min-port=49160", "max-port=49200", ""]))
    conf.chmod(0o600)
    coturn = subprocess.Popen(["ip", "netns", "exec", host, "turnserver", "-c", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = Proc("server", "--host", HOST, "--port", "0", "--data", str(tmp / "server"),
                      "--turn", f"turn:{HOST}:{TURN_PORT}", "--turn-secret-file",
                      str(secret_file), netns=host)
        procs.append(server)
        url = server.line("ready: ", 60)
        provision = subprocess.run(
            ["ip", "netns", "exec", host, sys.executable, "-c",
             "import asyncio, sys; from pathlib import Path; from parley.lab import"
             " provision_line; asyncio.run(provision_line(Path(sys.argv[1]), sys.argv[2],"
             " Path(sys.argv[3])))", str(tmp / "server"), url, str(tmp)],
            capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert provision.returncode == 0, provision.stderr[-2000:]
        media = subprocess.run(
            ["ip", "netns", "exec", host, sys.executable, "-m", "parley", "server", "line",
             "media", "washington", "moscow", "relay", "--data", str(tmp / "server")],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert media.returncode == 0 and "relay only" in media.stdout, media.stderr
        ui = ""
        for name, ns, (_near, addr), extra in (
                ("moscow", m, M_LINK, ["--auto-answer"]),
                ("washington", w, W_LINK, ["--media", "browser"] if browser else [])):
            proc = Proc("terminal", "--data", str(tmp / name), "--ice-host", addr,
                        "--ui-port", "0", *extra, netns=ns)
            procs.append(proc)
            ui = proc.line("ui: ", 60)
        # No path between the sites: washington cannot even reach moscow's address.
        ping = sh("ip", "netns", "exec", w, "ping", "-c", "1", "-W", "1", M_LINK[1],
                  check=False)
        assert ping.returncode != 0
        yield (Site(w, tmp / "washington"), Site(m, tmp / "moscow"), ui, secret, turn_log)
    finally:
        coturn.terminate()
        coturn.wait(10)


def _relayed(turn_log: Path) -> None:
    """coturn allocated a relay for each side, under the username the server issued."""
    log = turn_log.read_text(errors="replace").splitlines()
    for device in ("washington/hotline", "moscow/hotline"):
        assert any(f":{device}" in line and "ALLOCATE processed, success" in line
                   for line in log), f"no allocation by {device} in coturn's log"


def _call_stats(site: Site, call_id: str) -> dict[str, Any]:
    """The call's media figures, from the terminal's local API (as `parley ui` shows)."""
    control = json.loads((site.data / "control.json").read_text())
    fetch = ("import sys, urllib.request\n"
             "request = urllib.request.Request(sys.argv[1], headers={'Authorization':"
             " 'Bearer ' + sys.argv[2]})\n"
             "print(urllib.request.urlopen(request, timeout=10).read().decode())\n")
    done = subprocess.run(
        ["ip", "netns", "exec", site.ns, sys.executable, "-c", fetch,
         f"{control['url']}/api/calls/{call_id}", control["token"]],
        capture_output=True, text=True, timeout=30)
    return dict(json.loads(done.stdout)["stats"])


def test_a_call_with_no_direct_path_goes_through_coturn_on_issued_credentials(
        tmp_path: Path, host_and_sites: tuple[str, str, str], procs: list[Proc]) -> None:
    _host, w, _m = host_and_sites
    with relay_line(tmp_path, host_and_sites, procs) as (washington, moscow, _ui, secret,
                                                          turn_log):
        washington.cli("call", "moscow")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            call = washington.call()
            if call.get("state") in ("active", "ended"):
                break
            time.sleep(0.2)
        assert call.get("state") == "active", call
        assert call["verified"] and call["media_protection"] == "sframe+dtls-srtp"
        callee = moscow.call()
        assert callee["state"] == "active" and callee["sas"] == call["sas"]
        time.sleep(2)  # media flows both ways, and only the relay can carry it
        for site in (washington, moscow):
            status = json.loads(site.cli("status", "--json").stdout)
            assert status["calls"][-1]["state"] == "active"
            # Relay only: the only candidates gathered, offered and chosen are relayed ones.
            stats = _call_stats(site, status["calls"][-1]["call_id"])
            assert stats["ice"] == {"local_types": ["relay"], "selected": ["relay"]}, stats
            assert stats["audio"]["frames"] > 50 and stats["video"]["frames"] > 20
        _relayed(turn_log)
        washington.cli("hangup")

        # The credentials are coturn's to judge: good now, refused once expired.
        now = int(time.time())
        for expiry, expect in ((now + 600, "allocated"), (now - 60, "refused")):
            username = f"{expiry}:washington/hotline"
            result = _turn_probe(w, username, credential(secret.encode(), username))
            assert result.startswith(expect), result
        wrong = _turn_probe(w, f"{now + 600}:washington/hotline", credential(b"x" * 32, "y"))
        assert wrong.startswith("refused"), wrong


@pytest.mark.browser
async def test_a_persons_browser_calls_through_coturn_too(
        tmp_path: Path, host_and_sites: tuple[str, str, str], procs: list[Proc]) -> None:
    """washington's media in its person's Chromium, run inside washington's namespace:
    the page is given the issued credentials and relayed candidates only."""
    from playwright.async_api import expect

    from tests.browser import remote_video_frames

    _host, w, _m = host_and_sites
    with relay_line(tmp_path, host_and_sites, procs, browser=True) as (
            washington, moscow, ui, _secret, turn_log):
        async with person_in_a_call(tmp_path, w, ui) as page:
            await expect(page.get_by_test_id("verified-badge")).to_be_visible()
            await expect(page.get_by_test_id("media-protection")).to_have_attribute(
                "data-protection", "sframe+dtls-srtp")
            await page.wait_for_function(
                "() => document.querySelector('[data-testid=remote-video]').srcObject &&"
                " document.querySelector('[data-testid=remote-video]')"
                ".getVideoPlaybackQuality().totalVideoFrames > 30", timeout=20_000)
            assert await remote_video_frames(page) > 30
            callee = await asyncio.to_thread(moscow.call)
            assert callee["state"] == "active" and callee["verified"]
            # The page chose a relayed pair; the robot gathered relayed candidates only.
            stats = await asyncio.to_thread(_call_stats, washington, callee["call_id"])
            assert stats.get("ice_local") == "relay", stats
            robot = await asyncio.to_thread(_call_stats, moscow, callee["call_id"])
            assert robot["ice"]["local_types"] == ["relay"], robot
            _relayed(turn_log)
