"""The usual mistakes of an operator, each answered with one clear line and the fix.

Real `parley` processes on real data directories, loopback only: options given
before the subcommand, durations, a second process on a data directory in use,
a port in use, and a safety number mistyped rather than mismatched.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

from parley.core.errors import ErrorCode
from tests.integration.test_cli import Proc, procs, run

__all__ = ["procs"]  # a fixture used below


def test_options_count_wherever_they_are_given(tmp_path: Path) -> None:
    data = str(tmp_path / "srv")
    run("server", "--data", data, "principal", "add", "moscow", "--timezone", "Europe/Moscow")
    assert "moscow" in run("server", "principal", "list", "--data", data).stdout
    run("server", "principal", "add", "washington", "--data", data)
    assert "washington" in run("server", "--data", data, "principal", "list").stdout
    run("terminal", "--data", str(tmp_path / "t"), "init", "--name", "desk")
    assert (tmp_path / "t" / "device.key").exists()
    # Flags too, before or after the subcommand; and the environment.
    for args in (["alarms", "--json", "list"], ["alarms", "list", "--json"]):
        listed = run(*args, "--data", str(tmp_path / "t"))
        assert json.loads(listed.stdout) == [], args
    listed = run("alarms", "--json", "list", env={"PARLEY_DATA": str(tmp_path / "t")})
    assert json.loads(listed.stdout) == []
    shown = run("keys", "--data", str(tmp_path / "t"), "show", check=False)
    assert "not enrolled" in shown.stderr and str(tmp_path / "t") in shown.stderr


def test_durations_read_as_people_write_them(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path / "srv")]
    run("server", "principal", "add", "moscow", *data)
    assert "for 1h30m" in run("server", "enroll-code", "moscow", "--ttl", "1h30m", *data).stdout
    assert "for 0h45m" in run("server", "enroll-code", "moscow", "--ttl", "45m", *data).stdout
    bad = run("server", "enroll-code", "moscow", "--ttl", "abc", *data, check=False)
    assert bad.returncode == 2
    assert "'abc' is not a duration such as 90s, 30m, 24h, 1h30m or 7d" in bad.stderr
    assert "_duration_ms" not in bad.stderr
    assert "24h, 1h30m" in run("server", "enroll-code", "--help").stdout


def test_a_second_server_on_a_data_directory_in_use_is_refused(
        tmp_path: Path, procs: list[Proc]) -> None:
    data = ["--data", str(tmp_path / "srv")]
    first = Proc("server", "--port", "0", *data)
    procs.append(first)
    url = first.line("ready: ")
    second = run("server", "--port", "0", *data, check=False)
    assert second.returncode == 2
    assert f"a line server in {tmp_path / 'srv'} is already running (PID" \
           f" {first.proc.pid})" in second.stderr
    assert f"kill {first.proc.pid}" in second.stderr and "Traceback" not in second.stderr
    with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:  # the first serves on
        assert json.loads(resp.read())["ok"] is True
    # The port in use, from another data directory: one line, the fix, no traceback.
    port = url.rsplit(":", 1)[1]
    clash = run("server", "--port", port, "--data", str(tmp_path / "other"), check=False)
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert f"port {port} on 127.0.0.1 is in use" in clash.stderr
    assert "choose another --port" in clash.stderr
    first.stop()
    again = Proc("server", "--port", "0", *data)  # the lock went with the first process
    procs.append(again)
    again.line("ready: ")


def test_a_second_terminal_on_a_data_directory_in_use_is_refused(
        tmp_path: Path, procs: list[Proc]) -> None:
    srv = ["--data", str(tmp_path / "srv")]
    run("server", "principal", "add", "moscow", *srv)
    server = Proc("server", "--port", "0", *srv)
    procs.append(server)
    url = server.line("ready: ")
    code = run("server", "enroll-code", "moscow", "--quiet", *srv).stdout.strip()
    term = ["--data", str(tmp_path / "t")]
    run("terminal", "init", "--name", "desk", *term)
    run("terminal", "enroll", "--server", url, "--code", code, *term)
    first = Proc("terminal", "--ui-port", "0", *term)
    procs.append(first)
    first.line("ui: ")
    control = (tmp_path / "t" / "control.json").read_text()
    second = run("terminal", "--ui-port", "0", *term, check=False)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"a terminal in {tmp_path / 't'} is already running (PID {first.proc.pid})" \
        in second.stderr
    # The refused one touched nothing of the first's: its control file, its status.
    assert (tmp_path / "t" / "control.json").read_text() == control
    status = json.loads(run("status", "--json", *term).stdout)
    assert status["device"] == "moscow/desk" and status["connected"]
    # Its UI port in use, from another terminal's data: one line and the fix.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        run("terminal", "init", "--name", "spare", "--data", str(tmp_path / "u"))
        code2 = run("server", "enroll-code", "moscow", "--quiet", *srv).stdout.strip()
        run("terminal", "enroll", "--server", url, "--code", code2, "--data",
            str(tmp_path / "u"))
        clash = run("terminal", "--ui-port", str(port), "--data", str(tmp_path / "u"),
                    check=False, timeout=30)
    finally:
        busy.close()
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert f"the UI port {port} on 127.0.0.1 is in use" in clash.stderr
    assert not (tmp_path / "u" / "control.json").exists()


def two_sites(tmp_path: Path, procs: list[Proc],
              zones: tuple[str, str] = ("UTC", "UTC")) -> dict[str, list[str]]:
    """A running server with washington and moscow on a line, each with an enrolled,
    not yet running terminal; their --data arguments."""
    srv = ["--data", str(tmp_path / "srv")]
    for party, zone in zip(("washington", "moscow"), zones, strict=True):
        run("server", "principal", "add", party, "--timezone", zone, *srv)
    run("server", "line", "add", "washington", "moscow", *srv)
    server = Proc("server", "--port", "0", *srv)
    procs.append(server)
    url = server.line("ready: ")
    dirs = {"srv": srv}
    for party in ("washington", "moscow"):
        dirs[party] = ["--data", str(tmp_path / party)]
        code = run("server", "enroll-code", party, "--quiet", *srv).stdout.strip()
        run("terminal", "init", "--name", "desk", *dirs[party])
        run("terminal", "enroll", "--server", url, "--code", code, *dirs[party])
    return dirs


def test_a_mistyped_safety_number_is_a_typo_not_an_interception(
        tmp_path: Path, procs: list[Proc]) -> None:
    dirs = two_sites(tmp_path, procs)

    def shown() -> dict[str, str]:
        out = json.loads(run("keys", "show", "moscow", "--json", *dirs["washington"]).stdout)
        return dict(out["peers"][0])

    number = "".join(ch for ch in shown()["safety_number"] if ch.isdigit())

    def verify(typed: str) -> tuple[int, str]:
        done = run("keys", "verify", "moscow", "--safety-number", typed, *dirs["washington"],
                   check=False)
        return done.returncode, done.stderr

    code, err = verify(number[:10])
    assert code == 2 and "a safety number has 60 digits; you entered 10" in err
    assert f"[{ErrorCode.INVALID_INPUT}]" in err and "key" not in err.split("[")[0]
    code, err = verify(number[:20] + "x" + number[21:])
    assert code == 2 and "digits only" in err
    one_off = number[:12] + str((int(number[12]) + 1) % 10) + number[13:]  # in group 3
    code, err = verify(one_off)
    assert code == 2 and "group 3 of the safety number you entered does not match" in err
    assert f"[{ErrorCode.SAFETY_NUMBER_TYPO}]" in err and "differ from the keys" not in err
    everything = "".join(str((int(d) + 5) % 10) for d in number)
    code, err = verify(everything)
    assert code == 2 and f"[{ErrorCode.KEY_CHANGED}]" in err
    assert "do not mark it verified: the keys the server gave us differ" in err
    # None of these pinned anything; the right number does, however it is grouped.
    assert shown()["trust"] == "unverified"
    grouped = "-".join(number[i:i + 5] for i in range(0, 60, 5))
    assert verify(grouped)[0] == 0
    assert shown()["trust"] == "verified"


async def test_the_servers_own_pages_need_its_admin_token_when_one_is_set(
        tmp_path: Path) -> None:
    import aiohttp
    import pytest

    from parley.core.errors import LocalError
    from parley.server.app import ServerConfig, load_admin_token, start_server

    token = load_admin_token(tmp_path / "srv")
    assert (tmp_path / "srv" / "admin.token").stat().st_mode & 0o777 == 0o600
    # Behind a proxy on this machine, its public address elsewhere: the token is asked for.
    assert not ServerConfig(data_dir=tmp_path, public_url="https://line.example").loopback
    assert ServerConfig(data_dir=tmp_path).loopback
    # A token file left empty (a crash as it was written) protects nothing: refused.
    (tmp_path / "empty").mkdir(mode=0o700)
    (tmp_path / "empty" / "admin.token").write_text("")
    (tmp_path / "empty" / "admin.token").chmod(0o600)
    with pytest.raises(LocalError, match="too short"):
        await start_server(ServerConfig(data_dir=tmp_path / "empty", port=0,
                                        public_url="https://line.example"))
    server, runner = await start_server(ServerConfig(data_dir=tmp_path / "srv", port=0,
                                                     admin_token=token))
    base = f"http://127.0.0.1:{server.config.port}"
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/metrics", "/lines.json"):
                async with http.get(base + path) as resp:
                    assert resp.status == 401, path
                    assert "parley server admin-token" in await resp.text()
                async with http.get(base + path, params={"token": "wrong"}) as resp:
                    assert resp.status == 401, path
                async with http.get(base + path, headers={
                        "Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == 200, path
            async with http.get(base + "/", params={"token": token}) as resp:
                assert "Parley line server" in await resp.text()
            async with http.get(base + "/healthz") as resp:  # for a load balancer: no more
                assert await resp.json() == {"ok": True}
    finally:
        await runner.cleanup()


def test_parley_ui_gives_the_running_terminals_address(tmp_path: Path,
                                                       procs: list[Proc]) -> None:
    srv = ["--data", str(tmp_path / "srv")]
    run("server", "principal", "add", "moscow", *srv)
    server = Proc("server", "--port", "0", *srv)
    procs.append(server)
    url = server.line("ready: ")
    printed = run("server", "enroll-code", "moscow", *srv).stdout
    assert "--server http://127.0.0.1:8800 --code" in printed  # as its settings give it
    code = run("server", "enroll-code", "moscow", "--quiet", *srv).stdout.strip()
    term = ["--data", str(tmp_path / "t")]
    run("terminal", "init", "--name", "desk", *term)
    run("terminal", "enroll", "--server", url, "--code", code, *term)
    terminal = Proc("terminal", "--ui-port", "0", *term)
    procs.append(terminal)
    started = terminal.line("ui: ")
    assert run("ui", *term).stdout.splitlines()[0] == f"ui: {started}"
    terminal.stop()
    again = Proc("terminal", "--ui-port", "0", *term)  # a new token at every start
    procs.append(again)
    restarted = again.line("ui: ")
    assert restarted.split("token=")[1] != started.split("token=")[1]
    assert run("ui", *term).stdout.splitlines()[0] == f"ui: {restarted}"
    again.stop()
    gone = run("ui", *term, check=False)
    assert gone.returncode == 2 and "no terminal is running" in gone.stderr


def test_talks_are_scheduled_from_the_command_line(tmp_path: Path, procs: list[Proc]) -> None:
    import icalendar

    data = two_sites(tmp_path, procs, ("America/New_York", "Europe/Moscow"))
    run("keys", "verify", "moscow", "--yes", *data["washington"])
    run("keys", "verify", "washington", "--yes", *data["moscow"])
    for party in ("washington", "moscow"):
        proc = Proc("terminal", "--ui-port", "0", *data[party])
        procs.append(proc)
        proc.line("ui: ")
    refused = run("schedule", "request", "--with", "moscow", "--title", "t", "--at",
                  "2031-03-09 02:30", *data["washington"], check=False)
    assert refused.returncode == 2 and "does not exist in America/New_York" in refused.stderr
    asked = json.loads(run("schedule", "request", "--with", "moscow", "--title", "Arms talks",
                           "--at", "2031-12-09 10:00", "--duration", "2h", "--json",
                           *data["washington"]).stdout)
    assert asked["when"].startswith("2031-12-09 15:00 UTC -- 10:00 Tue in America/New_York")
    talk = asked["talk_id"]
    deadline = time.monotonic() + 15
    while not json.loads(run("schedule", "list", "--json", *data["moscow"]).stdout):
        assert time.monotonic() < deadline, "the request never reached moscow"
        time.sleep(0.2)
    listed = run("schedule", "list", *data["moscow"]).stdout
    assert "PROPOSED" in listed and "18:00 Tue in Europe/Moscow" in listed
    run("schedule", "counter", talk, "--at", "2031-12-11 19:00", "--note", "Thursday",
        *data["moscow"])
    while "COUNTERED" not in run("schedule", "list", *data["washington"]).stdout:
        assert time.monotonic() < deadline + 15, "the counter never reached washington"
        time.sleep(0.2)
    run("schedule", "take-counter", talk, *data["washington"])
    while '"sequence": 1' not in run("schedule", "list", "--json", *data["moscow"]).stdout:
        assert time.monotonic() < deadline + 30
        time.sleep(0.2)
    run("schedule", "accept", talk, *data["moscow"])
    while "CONFIRMED" not in run("schedule", "list", *data["washington"]).stdout:
        assert time.monotonic() < deadline + 45
        time.sleep(0.2)
    run("schedule", "export", "--ics", str(tmp_path / "talks.ics"), *data["washington"])
    (event,) = icalendar.Calendar.from_ical((tmp_path / "talks.ics").read_bytes()).walk(
        "VEVENT")
    assert str(event["status"]) == "CONFIRMED" and int(event["sequence"]) == 1
    # A talk not yours to cancel; yours is.
    wrong = run("schedule", "cancel", talk, *data["moscow"], check=False)
    assert wrong.returncode == 2 and "only it may change or cancel it" in wrong.stderr
    assert "CANCELLED" in run("schedule", "cancel", talk, *data["washington"]).stdout
