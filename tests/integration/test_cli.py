"""The `parley` command as an operator uses it: real processes, real files, loopback only."""

from __future__ import annotations

import json
import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parley.cli import build_parser

PARLEY = [sys.executable, "-m", "parley"]


def run(*args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*PARLEY, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(f"parley {' '.join(args)} -> {result.returncode}\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def all_commands() -> list[list[str]]:
    """Every command and subcommand path, read from the parser itself."""
    import argparse

    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        found.append(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "parley")
def test_every_command_has_help(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path, "--help"])
    assert done.value.code == 0
    assert "usage: parley" in capsys.readouterr().out


class Proc:
    """A running `parley` command; threads drain its stdout (into lines) and stderr."""

    def __init__(self, *args: str, netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.proc = subprocess.Popen([*prefix, *PARLEY, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()  # None: stdout closed
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for text in self.proc.stdout:
                self.lines.put(text)
        self.lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            self.stderr.extend(self.proc.stderr)

    def line(self, prefix: str, timeout: float = 30) -> str:
        """The next stdout line starting with `prefix`, or a failure within `timeout` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                text = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if text is None:
                break
            if text.startswith(prefix):
                return text[len(prefix):].strip()
        self.kill()
        raise AssertionError(f"no {prefix!r} line within {timeout} s (exit status"
                             f" {self.proc.returncode}); stderr: {self.err()[-3000:]}")

    def err(self) -> str:
        """Its stderr so far; all of it once it has exited."""
        if self.proc.poll() is not None:
            for reader in self._readers:
                reader.join(10)
        return "".join(self.stderr)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.err()  # so that the readers are done and have closed the pipes

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=20)
        return self.err()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def test_an_operator_sets_up_a_line_verifies_and_calls(tmp_path: Path,
                                                       procs: list[Proc]) -> None:
    srv = ["--data", str(tmp_path / "srv")]
    run("server", "principal", "add", "washington", "--display", "The White House",
        "--timezone", "America/New_York", *srv)
    run("server", "principal", "add", "moscow", "--timezone", "Europe/Moscow", *srv)
    assert "already exists" in run("server", "principal", "add", "moscow", *srv,
                                   check=False).stderr
    run("server", "line", "add", "washington", "moscow", *srv)
    assert "washington <-> moscow" in run("server", "line", "list", *srv).stdout or \
        "moscow <-> washington" in run("server", "line", "list", *srv).stdout
    server = Proc("server", "--port", "0", *srv)
    procs.append(server)
    url = server.line("ready: ")

    dirs = {name: ["--data", str(tmp_path / name)] for name in ("washington", "moscow")}
    for name in dirs:
        code = run("server", "enroll-code", name, "--quiet", *srv).stdout.strip()
        run("terminal", "init", "--name", "desk", *dirs[name])
        key_file = tmp_path / name / "device.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "enrolled as" in run("terminal", "enroll", "--server", url, "--code", code,
                                    *dirs[name]).stdout
        reused = run("terminal", "enroll", "--server", url, "--code", code, *dirs[name],
                     check=False)
        assert reused.returncode != 0 and "already been used" in reused.stderr

    shown = json.loads(run("keys", "show", "moscow", "--json", *dirs["washington"]).stdout)
    number = shown["peers"][0]["safety_number"]
    assert shown["peers"][0]["trust"] == "unverified"
    seen_by_moscow = json.loads(run("keys", "show", "washington", "--json",
                                    *dirs["moscow"]).stdout)["peers"][0]["safety_number"]
    assert seen_by_moscow == number

    # The terminal refuses an unverified call and says exactly how to fix it.
    term_w = Proc("terminal", "--ui-port", "0", "--ice-host", "127.0.0.1", *dirs["washington"])
    term_m = Proc("terminal", "--ui-port", "0", "--ice-host", "127.0.0.1", "--auto-answer",
                  *dirs["moscow"])
    procs += [term_w, term_m]
    term_w.line("ui: ")
    term_m.line("ui: ")
    refused = run("call", "moscow", *dirs["washington"], check=False)
    assert refused.returncode != 0
    assert "not verified" in refused.stderr and "parley keys verify moscow" in refused.stderr

    wrong = run("keys", "verify", "moscow", "--safety-number", "1" * 60, *dirs["washington"],
                check=False)
    assert wrong.returncode != 0 and "does not match" in wrong.stderr
    run("keys", "verify", "moscow", "--safety-number", number.replace(" ", ""),
        *dirs["washington"])
    run("keys", "verify", "washington", "--safety-number", number, *dirs["moscow"])

    placed = run("call", "moscow", *dirs["washington"])
    assert "active" in placed.stdout and "SAS" in placed.stdout
    status = json.loads(run("status", "--json", *dirs["washington"]).stdout)
    live = [c for c in status["calls"] if c["state"] == "active"]
    assert live and live[0]["verified"] is True
    assert "hung up" in run("hangup", *dirs["washington"]).stdout

    # Hotline messages from the command line, through the running terminals.
    sent = run("message", "send", "--to", "moscow", "Agenda: the treaty, item 4", "--wait",
               "10", *dirs["washington"])
    assert "queued for moscow" in sent.stdout and "delivered to moscow/desk" in sent.stdout
    doc = tmp_path / "annex.txt"
    doc.write_text("annex A\n" * 1000)
    filed = run("message", "send", "--to", "moscow", "--file", str(doc), "--caption",
                "the annex", "--wait", "10", *dirs["washington"])
    assert "annex.txt (8,000 bytes, 1 parts)" in filed.stdout and "delivered" in filed.stdout
    listed = run("message", "list", "--party", "washington", *dirs["moscow"]).stdout
    assert "washington/desk: Agenda: the treaty, item 4" in listed
    assert "[file annex.txt, 8,000 bytes, complete] the annex" in listed
    def read_by_moscow() -> bool:  # moscow listed them: its read receipts come back
        shown = json.loads(run("message", "list", "--json", "--keep-unread",
                               *dirs["washington"]).stdout)
        mine = [m for m in shown["messages"] if m["outgoing"]]
        return len(mine) == 2 and all(d["read_ms"] for m in mine for d in m["deliveries"])

    deadline = time.monotonic() + 10
    while not read_by_moscow():
        assert time.monotonic() < deadline, "moscow's read receipts never came"
        time.sleep(0.2)
    found = run("message", "search", "treat*", *dirs["moscow"]).stdout
    assert "Agenda: the treaty" in found
    # A message that would clear the screen or read backwards is printed as escapes.
    run("message", "send", "--to", "moscow", "pay \x1b[2J\u202e001 \u2066ok\u2069\nline 2",
        "--wait", "10", *dirs["washington"])
    listed = run("message", "list", "--party", "washington", *dirs["moscow"]).stdout
    assert "\x1b" not in listed and "\u202e" not in listed and "\u2066" not in listed
    assert "pay \\x1b[2J\\u202e001 \\u2066ok\\u2069\n      line 2" in listed
    assert "Agenda" in run("message", "search", "Agenda \x07\x1b", *dirs["moscow"]).stdout
    assert "nothing matches" in run("message", "search", "missiles", *dirs["moscow"]).stdout
    refused = run("message", "send", "--to", "moscow", *dirs["washington"], check=False)
    assert refused.returncode == 2 and "give the text, or --file PATH" in refused.stderr
    assert "call ended" not in term_w.stop()
    term_m.stop()
    assert not (tmp_path / "washington" / "control.json").exists()


def test_settings_come_from_flags_then_environment_then_toml(tmp_path: Path) -> None:
    from parley.cli import SERVER_OPTIONS
    from parley.config import resolve

    (tmp_path / "parley.toml").write_text('[server]\nport = 9000\nhost = "127.0.0.1"\n')
    parser = build_parser()
    args = parser.parse_args(["server", "--data", str(tmp_path)])
    assert resolve(args, SERVER_OPTIONS, "server", tmp_path)["port"] == 9000
    os.environ["PARLEY_PORT"] = "9100"
    try:
        assert resolve(args, SERVER_OPTIONS, "server", tmp_path)["port"] == 9100
        args = parser.parse_args(["server", "--data", str(tmp_path), "--port", "9200"])
        assert resolve(args, SERVER_OPTIONS, "server", tmp_path)["port"] == 9200
    finally:
        del os.environ["PARLEY_PORT"]
    (tmp_path / "parley.toml").write_text('[server]\nprot = 1\n')
    result = run("server", "--data", str(tmp_path), check=False)
    assert result.returncode == 2 and "unknown setting" in result.stderr


def test_errors_name_the_fix(tmp_path: Path) -> None:
    result = run("keys", "--data", str(tmp_path / "none"), check=False)
    assert result.returncode == 2 and "parley terminal init" in result.stderr
    run("terminal", "init", "--name", "desk", "--data", str(tmp_path / "t"))
    again = run("terminal", "init", "--name", "desk", "--data", str(tmp_path / "t"), check=False)
    assert again.returncode == 2 and "already holds a terminal" in again.stderr
    os.chmod(tmp_path / "t" / "device.key", 0o644)
    loose = run("keys", "--data", str(tmp_path / "t"), check=False)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr
    bad_name = run("terminal", "init", "--name", "Bad Name", "--data", str(tmp_path / "u"),
                   check=False)
    assert bad_name.returncode == 2 and "a-z" in bad_name.stderr


def test_headless_demo_reports_a_verified_call_with_media_both_ways() -> None:
    result = run("demo", "--headless", "--json", "--duration", "4", timeout=120)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["verified"] is True
    assert summary["sas_caller"] == summary["sas_callee"]
    assert all(n > 0 for n in summary["video_frames"].values())
    assert all(n > 0 for n in summary["audio_frames"].values())
    assert summary["setup_ms"] > 0
    # Every frame sealed end to end (SFrame) inside DTLS-SRTP, and opened at the other side.
    assert summary["media_protection"] == summary["media_protection_callee"] == \
        "sframe+dtls-srtp"
    assert all(n > 0 for n in summary["frames_opened"].values())
    # 100 messages each way during the call, each delivered and read.
    assert summary["messages"] == {"sent": 200, "delivered": 200, "read_receipts": 200}
    # And one line test between the sites' test sets: green, verified each way, frames both
    # ways, signed by both ends and accepted by the server (which checks both signatures).
    test = summary["linetest"]
    assert test["status"] == "green" and test["reasons"] == []
    assert test["line"] == "moscow:washington" and test["verified"] is True
    assert sorted(test["signed_by"]) == ["moscow/testset", "washington/testset"]
    assert test["filed"] is True and test["server_status"] == "green"
    assert set(test["ways"]) == {"washington->moscow", "moscow->washington"}
    for way in test["ways"].values():
        assert way["verified"] and way["video_frames"] > 0 and way["audio_frames"] > 0
        assert way["audio_packets"] > 0 and way["loss_pct"] < 5
    assert 0 <= test["message_rtt_ms"] < 2000
    # And a talk scheduled for tomorrow, requested by washington, accepted by moscow.
    assert summary["schedule"]["state"] == "confirmed"
    assert "15:00 UTC --" in summary["schedule"]["when"]
    assert "in America/New_York" in summary["schedule"]["when"]
    assert "in Europe/Moscow (+03:00)" in summary["schedule"]["when"]
    # And a joint statement: edited by moscow, signed by both, in both records, cosigned.
    statement = summary["statement"]
    assert statement["final"] == 2 and statement["in_both_logs"]
    assert statement["signed_by"] == ["moscow/hotline", "washington/hotline"]
    assert statement["records"]["washington"]["cosigned"] == ["moscow/hotline"]
    assert statement["records"]["moscow"]["cosigned"] == ["washington/hotline"]


def test_alarms_are_listed_and_acknowledged_from_the_command_line(tmp_path: Path) -> None:
    from parley.terminal.store import TerminalStore

    data = ["--data", str(tmp_path / "t")]
    run("terminal", "init", "--name", "desk", *data)
    store = TerminalStore(tmp_path / "t")
    for _ in range(3):
        forged = store.raise_alarm(code="bad_signature", title="Forged or altered message",
                                   message="an envelope from moscow/desk does not verify",
                                   hint="it was dropped", call_id=None, subject="moscow/desk",
                                   now_ms=1_800_000_000_000)
    other = store.raise_alarm(code="wrong_recipient", title="Misrouted message",
                              message="meant for moscow/spare", hint="", call_id=None,
                              subject="moscow/spare", now_ms=1_800_000_001_000)
    store.close()
    listed = run("alarms", *data).stdout
    assert f"#{forged.id}" in listed and " x3" in listed and "OPEN" in listed
    assert "what to do: it was dropped" in listed and "2 open" in listed
    done = run("alarms", "ack", str(forged.id), "--note", "reported", *data)
    assert f"acknowledged: #{forged.id}" in done.stdout
    assert json.loads(run("alarms", "--json", *data).stdout)[0]["id"] == other.id
    everything = run("alarms", "--all", *data).stdout
    assert f"#{forged.id}    acknowledged " in everything and "note: reported" in everything
    missing = run("alarms", "ack", "999", *data, check=False)
    assert missing.returncode == 2 and "no open alarm #999" in missing.stderr
    nothing = run("alarms", "ack", *data, check=False)
    assert nothing.returncode == 2 and "--all" in nothing.stderr
    assert "acknowledged" in run("alarms", "ack", "--all", *data).stdout
    assert "no open alarms" in run("alarms", *data).stdout
