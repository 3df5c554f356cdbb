"""The SFrame layer in the page: RFC 9605's vectors in Chromium, and calls with it on.

The page's layer (web/sframe.js in the media worker, RTCRtpScriptTransform) must be
the robot's (core/sframe.py) byte for byte: the RFC's vectors run in the page, frames
sealed by one open in the other, and calls browser <-> robot and browser <-> browser
play with every frame opened and none dropped. A robot gone hostile mid-call (its
frames stripped of the layer) is dropped by the page and the terminal raises the alarm.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from parley.core.call import CallInfo, CallState
from parley.core.sframe import FrameOpener, FrameSealer, Kind, StreamKeys
from parley.terminal.app import Terminal
from tests.browser import (
    PersonFactory,
    audio_decoded,
    call_button,
    chromium,
    open_ui,
    people,
    video_decoded,
    wait_remote_video_plays,
    wait_stats,
)
from tests.harness import LocalLine, wait_until

pytestmark = pytest.mark.browser
__all__ = ["chromium", "people"]  # fixtures used below
VECTORS = json.loads((Path(__file__).parent.parent / "core" / "data" / "rfc9605.json")
                     .read_text())


def _for_js(vectors: dict[str, Any]) -> dict[str, Any]:
    """KIDs and CTRs up to 2**64 - 1 as hex: JSON numbers in JavaScript stop at 2**53."""
    header = [{**v, "kid_hex": hex(v["kid"]), "ctr_hex": hex(v["ctr"]), "kid": 0, "ctr": 0}
              for v in vectors["header"]]
    return {"header": header, "sframe": vectors["sframe"]}


async def _page(chromium: Browser, people: PersonFactory) -> Page:
    return await open_ui(chromium, await people("washington"))


async def test_the_rfc_vectors_pass_in_the_page(line: LocalLine, people: PersonFactory,
                                                chromium: Browser) -> None:
    await line.provision()
    page = await _page(chromium, people)
    failures = await page.evaluate(
        "async (v) => (await import('/static/sframe.js')).checkVectors(v)", _for_js(VECTORS))
    assert failures == []
    # And the check can fail: a vector changed is caught.
    broken = _for_js(VECTORS)
    broken["sframe"] = [{**broken["sframe"][0], "ct": "00" + broken["sframe"][0]["ct"][2:]}]
    broken["header"] = broken["header"][:1]
    assert await page.evaluate(
        "async (v) => (await import('/static/sframe.js')).checkVectors(v)", broken) != []


async def test_frames_sealed_in_python_open_in_the_page_and_back(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    await line.provision()
    page = await _page(chromium, people)
    keys = StreamKeys(3, os.urandom(16), os.urandom(16))
    frames = {"audio": [b"\x78" + os.urandom(90) for _ in range(5)],
              "video": [b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01" + os.urandom(300),
                        b"\x31\x02\x00" + os.urandom(200)]}
    sealed = {}
    for kind, plain in frames.items():
        sealer = FrameSealer(Kind(kind))
        sealer.use(keys)
        sealed[kind] = [sealer.seal(f).hex() for f in plain]
    result = await page.evaluate("""async ({keys, sealed, frames}) => {
        const m = await import('/static/sframe.js');
        const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
        const bytes = (h) => Uint8Array.from(h.match(/../g), (x) => parseInt(x, 16));
        const out = {opened: {}, sealed: {}};
        for (const kind of ['audio', 'video']) {
          const opener = new m.FrameOpener(kind);
          await opener.add(keys);
          out.opened[kind] = [];
          for (const f of sealed[kind]) out.opened[kind].push(hex(await opener.open(bytes(f))));
          const sealer = new m.FrameSealer(kind);
          await sealer.use(keys);
          out.sealed[kind] = [];
          for (const f of frames[kind]) out.sealed[kind].push(hex(await sealer.seal(bytes(f))));
        }
        return out;
    }""", {"keys": keys.as_json(), "sealed": sealed,
           "frames": {k: [f.hex() for f in v] for k, v in frames.items()}})
    for kind, plain in frames.items():
        assert result["opened"][kind] == [f.hex() for f in plain]
        opener = FrameOpener(Kind(kind))
        opener.add(keys)
        assert [opener.open(bytes.fromhex(f)) for f in result["sealed"][kind]] == plain
        assert result["sealed"][kind] == sealed[kind]  # same keys, same counters: same bytes


def _drops(stats: dict[str, Any], kind: str) -> dict[str, int]:
    text = stats.get(kind, {}).get("sframe_drops", "")
    return {why: int(n) for why, n in (item.split(":") for item in text.split())}


def _refused(stats: dict[str, Any], kind: str) -> int:
    """Frames dropped for anything but being a second copy of one already opened.

    Chromium hands its receive transform an occasional video frame twice in a
    browser-to-browser call; the replay window drops the copy, as it must.
    """
    return sum(n for why, n in _drops(stats, kind).items() if why != "replay")


def _layer_ok(stats: dict[str, Any], refused: int = 0) -> bool:
    return all(stats.get(kind, {}).get("sframe_opened", 0) > 20
               and stats.get(kind, {}).get("sframe_sealed", 0) > 20
               and _refused(stats, kind) <= refused for kind in ("audio", "video"))


async def _browser_calls_robot(line: LocalLine, people: PersonFactory, chromium: Browser
                               ) -> tuple[Any, Terminal, Page, CallInfo]:
    """washington's page calls moscow's robot, which answers: both active."""
    await line.provision()
    washington = await people("washington")
    robot = await line.terminal("moscow", auto_answer=True)
    page = await open_ui(chromium, washington)
    await call_button(page, "moscow").click()
    await expect(page.get_by_test_id("call-state")).to_have_attribute("data-state", "active")
    call = await robot.wait_for_call(lambda c: c.state is CallState.ACTIVE, 20)
    return washington, robot, page, call


async def test_browser_and_robot_talk_with_the_layer_on(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    washington, robot, page, call = await _browser_calls_robot(line, people, chromium)
    await expect(page.get_by_test_id("media-protection")).to_have_attribute(
        "data-protection", "sframe+dtls-srtp")
    await expect(page.get_by_test_id("media-protection")).to_contain_text("end to end")
    await wait_remote_video_plays(page)
    stats = await wait_stats(washington, call.call_id,
                             lambda s: video_decoded(s) and audio_decoded(s) and _layer_ok(s))
    assert stats["video"]["frame_width"] > 0
    await expect(page.get_by_test_id("q-layer")).to_have_text(re.compile(r"^\d+ / 0$"))
    layer = (await robot.call_stats(call.call_id))["frame_layer"]
    assert layer["audio"]["opened"] > 20 and layer["video"]["opened"] > 20
    assert layer["audio"]["dropped"] == layer["video"]["dropped"] == {}
    await page.get_by_test_id("hangup").click()
    await robot.wait_for_call(lambda c: c.state is CallState.ENDED, 10)


async def test_two_browsers_talk_with_the_layer_on(line: LocalLine, people: PersonFactory,
                                                   chromium: Browser) -> None:
    await line.provision()
    # Keys renewed every 2 s: the pages take each new key, and lose no frame over it.
    washington = await people("washington", media_rekey_s=2.0)
    moscow = await people("moscow", media_rekey_s=2.0)
    caller, callee = await open_ui(chromium, washington), await open_ui(chromium, moscow)
    await call_button(caller, "moscow").click()
    await expect(callee.get_by_test_id("incoming")).to_be_visible()
    await callee.get_by_test_id("incoming-accept").click()
    for page in (caller, callee):
        await expect(page.get_by_test_id("verified-badge")).to_be_visible()
        await expect(page.get_by_test_id("media-protection")).to_have_attribute(
            "data-protection", "sframe+dtls-srtp")
    call_id = washington.terminal.book.calls()[-1].call_id
    for person, page in ((washington, caller), (moscow, callee)):
        await wait_remote_video_plays(page)
        # The first frame or so may beat its key to the worker (the key is posted first,
        # but a frame and a message are different queues there): at most that is dropped.
        await wait_stats(person, call_id, lambda s: video_decoded(s) and audio_decoded(s)
                         and _layer_ok(s, refused=2))
    await wait_until(lambda: min(p.terminal.book.get(call_id).send_epoch
                                 for p in (washington, moscow)) >= 3, 20,
                     what="three re-keys each way")
    for person in (washington, moscow):
        before = await person.terminal.call_stats(call_id)
        opened = before["audio"]["sframe_opened"]
        after = await wait_stats(person, call_id,
                                 lambda s, n=opened: s["audio"]["sframe_opened"] > n + 50)
        for kind in ("audio", "video"):
            assert _refused(after, kind) == _refused(before, kind), (kind, before, after)
        assert _drops(after, "audio").get("replay", 0) == 0
        assert person.terminal.book.info(call_id).verified


async def test_a_robot_that_strips_the_layer_is_dropped_by_the_page_and_alarmed(
        line: LocalLine, people: PersonFactory, chromium: Browser) -> None:
    washington, robot, page, call = await _browser_calls_robot(line, people, chromium)
    await wait_stats(washington, call.call_id, _layer_ok)
    for sealer in robot.sessions[call.call_id].sealers.values():  # type: ignore[attr-defined]
        sealer.seal = lambda frame: frame  # type: ignore[method-assign]
    await expect(page.get_by_test_id("media-protection")).to_have_attribute(
        "data-protection", "dtls-srtp")
    await expect(page.get_by_test_id("verified-badge")).to_be_hidden()
    info = washington.terminal.book.info(call.call_id)
    assert not info.verified and "were dropped" in (info.alarm or "")
    before = await wait_stats(washington, call.call_id,
                              lambda s: s["audio"].get("sframe_dropped", 0) > 50)
    assert before["audio"]["sframe_last_drop"] in ("malformed", "auth", "wrong_stream",
                                                   "unknown_key")
