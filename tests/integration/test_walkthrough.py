"""docs/operator-guide.md's "Running a real line", run as written, ends in a verified call.

The commands are read from the guide's shell blocks, in order, and run as real
processes. Only what cannot be written in advance is put in: the data
directories (under the test's own directory), the ports (free ones), each
site's enrollment code (the one the line host's command printed) and each
safety number (the one the *other* side's terminal shows, as its operator would
read it out). A command ending in ``&`` keeps running; ``parley ui``'s address
is opened in Chromium, as washington's person would. If the guide and the CLI
drift apart, this fails.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from tests.browser import VIEWPORT, chromium_browser
from tests.integration.test_cli import Proc, procs, run

__all__ = ["procs"]  # a fixture used below
pytestmark = pytest.mark.browser
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
CODE = re.compile(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}")


def walkthrough(title: str = "Running a real line") -> list[list[str]]:
    text = GUIDE.read_text()
    section = text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_guides_walk_through_works_as_written(tmp_path: Path,
                                                        procs: list[Proc]) -> None:
    commands = walkthrough()
    assert commands and all(c[0] == "parley" for c in commands), commands
    ports = {"8800": str(free_port()), "8810": str(free_port()), "8811": str(free_port())}
    codes: dict[str, str] = {}
    ui_url = ""
    call_out = ""

    def put_in(words: list[str]) -> list[str]:
        out = []
        for word in words:
            word = word.replace("~/.parley", str(tmp_path))
            for port, real in ports.items():
                word = re.sub(rf"(?<=:){port}\b|^{port}$", real, word)
            out.append(word)
        return out

    def data_of(words: list[str]) -> str:
        return Path(words[words.index("--data") + 1]).name

    for words in commands:
        words = put_in(words[1:])
        background = words[-1] == "&"
        if background:
            words = words[:-1]
        if "--code" in words:  # the code the line host gave this site
            words[words.index("--code") + 1] = codes[data_of(words)]
        if "--safety-number" in words:  # the number the other operator reads out
            me, peer = data_of(words), words[words.index("verify") + 1]
            shown = json.loads(run("keys", "show", me, "--json", "--data",
                                   str(tmp_path / peer)).stdout)
            words[words.index("--safety-number") + 1] = shown["peers"][0]["safety_number"]
        if background:
            proc = Proc(*words)
            procs.append(proc)
            proc.line("ready: " if words[0] == "server" else "ui: ", 60)
            continue
        done = run(*words, timeout=90)
        if words[:2] == ["server", "enroll-code"]:
            match = CODE.search(done.stdout)
            assert match, done.stdout
            codes[words[2]] = match.group(0)
            assert f"--code {match.group(0)}" in done.stdout  # and how to use it
        if words[0] == "ui":
            ui_url = done.stdout.splitlines()[0].removeprefix("ui: ")
            # The person opens the page; it does washington's media from now on.
            browser_cm = chromium_browser()
            browser = await browser_cm.__aenter__()
            page = await (await browser.new_context(viewport=VIEWPORT)).new_page()
            await page.goto(ui_url)
            await page.get_by_test_id("link-state").filter(
                has_text="line server: connected").wait_for(timeout=20_000)
        if words[0] == "call":
            call_out = done.stdout
    try:
        assert ui_url.startswith("http://127.0.0.1:" + ports["8810"])
        assert "active" in call_out and "SAS" in call_out, call_out
        status = json.loads(run("status", "--json", "--data",
                                str(tmp_path / "washington")).stdout)
        call = status["calls"][-1]
        assert call["state"] == "active" and call["verified"] is True, call
        assert call["peer"] == "moscow/robot"
        # Every frame sealed end to end (the person's page and the robot), and said so.
        assert call["media_protection"] == "sframe+dtls-srtp", call
        assert "media sframe+dtls-srtp" in run("status", "--data",
                                                str(tmp_path / "washington")).stdout
        # The person sees it verified, with the same code.
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                          "active")
        assert (await page.get_by_test_id("sas").text_content() or "").replace(" ", "") == \
            call["sas"].replace(" ", "")
        moscow = json.loads(run("status", "--json", "--data", str(tmp_path / "moscow")).stdout)
        assert moscow["calls"][-1]["sas"] == call["sas"]
        run("hangup", "--data", str(tmp_path / "washington"))
        await statement_walkthrough(tmp_path, put_in)
    finally:
        if ui_url:
            await browser_cm.__aexit__(None, None, None)


async def statement_walkthrough(tmp_path: Path, put_in: Callable[[list[str]], list[str]]
                                ) -> None:
    """The guide's "The record and joint statements", run as written after the call."""
    commands = walkthrough("The record and joint statements")
    assert commands and all(c[0] in ("parley", "pdftoppm") for c in commands), commands
    text = "The two sides agree that the line stays open.\nIt is reviewed each year."
    (tmp_path / "statement.txt").write_text(text + "\n")
    (tmp_path / "edited.txt").write_text(text.replace("each", "every") + "\n")
    washington = str(tmp_path / "washington")

    def listed() -> list[dict[str, Any]]:
        return list(json.loads(run("statement", "list", "--json", "--data", washington,
                                   cwd=tmp_path).stdout))

    ident, outputs = "", []
    for words in commands:
        words = put_in(words)
        if "STATEMENT" in words:
            words[words.index("STATEMENT")] = ident
        if "HASH" in words:  # the hash the operator read off 'statement show'
            shown = json.loads(run("statement", "show", ident, "--json", "--data", washington,
                                   cwd=tmp_path).stdout)
            words[words.index("HASH")] = shown["versions"][-1]["sha256"][:16]
        if words[:3] == ["parley", "statement", "pdf"]:
            await wait_for_final(listed)
        if words[0] == "pdftoppm":
            await asyncio.to_thread(subprocess.run, words, cwd=tmp_path, check=True,
                                    timeout=60)
            continue
        done = run(*words[1:], cwd=tmp_path, timeout=90)
        outputs.append((words[1:], done.stdout))
        if words[1:3] == ["statement", "draft"]:
            ident = listed()[0]["statement"]

    def said(*start: str) -> list[str]:
        return [out for cmd, out in outputs if cmd[:len(start)] == list(start)]

    assert "FINAL, in both logs" in said("statement", "list")[-1]
    assert "to sign exactly this: parley statement sign" in said("statement", "show")[0]
    from_qr, from_file, whole = said("record", "verify")
    for verified in (from_qr, from_file):
        assert "signed by moscow/robot and washington/desk; final; included in" in verified
        assert "washington/desk's log at size" in verified.split("final; included in")[1]
        assert "moscow/robot's log at size" in verified.split("final; included in")[1]
    assert "the text in edited.txt is the text of statement" in from_qr
    proven = json.loads(whole)
    assert proven["ok"] and "note" in said("record", "show")[0]
    kinds = {e["entry"]["type"] for e in proven["entries"]}
    assert {"call", "verification", "statement", "note"} <= kinds, kinds


async def wait_for_final(listed: Callable[[], list[dict[str, Any]]]) -> None:
    """Until the statement is final in both logs (the other site's proof has come)."""
    for _ in range(60):
        if listed()[0]["in_both_logs"]:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the statement is not in both logs: {listed()[0]}")
