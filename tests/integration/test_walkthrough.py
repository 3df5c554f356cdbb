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

import json
import re
import shlex
import socket
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.browser import VIEWPORT, chromium_browser
from tests.integration.test_cli import Proc, procs, run

__all__ = ["procs"]  # a fixture used below
pytestmark = pytest.mark.browser
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
CODE = re.compile(r"[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}")


def walkthrough() -> list[list[str]]:
    text = GUIDE.read_text()
    section = text.split("## Running a real line", 1)[1].split("\n## ", 1)[0]
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
        # The person sees it verified, with the same code.
        await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state",
                                                                          "active")
        assert (await page.get_by_test_id("sas").text_content() or "").replace(" ", "") == \
            call["sas"].replace(" ", "")
        moscow = json.loads(run("status", "--json", "--data", str(tmp_path / "moscow")).stdout)
        assert moscow["calls"][-1]["sas"] == call["sas"]
    finally:
        if ui_url:
            await browser_cm.__aexit__(None, None, None)
