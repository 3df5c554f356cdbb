"""A long call gives the C heap's free memory back (glibc's malloc_trim), while calls last."""

from __future__ import annotations

import asyncio
import ctypes
import os

import pytest

from parley.media import robot


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trimming_gives_freed_memory_back() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # Many small blocks freed, with one kept at the top: the heap cannot shrink by itself.
    blocks = [libc.malloc(4096) for _ in range(20_000)]
    keep = libc.malloc(64)
    for block in blocks:
        libc.free(block)
    before = rss_kib()
    assert robot.trim_heap() is True
    assert rss_kib() < before - 20_000  # most of the 80 MiB freed went back
    libc.free(keep)


async def test_robot_media_trims_while_a_call_lasts(monkeypatch: pytest.MonkeyPatch) -> None:
    trimmed: list[bool] = []
    monkeypatch.setattr(robot, "TRIM_EVERY_S", 0.05)
    monkeypatch.setattr(robot, "trim_heap", lambda: trimmed.append(True) or True)
    media = robot.RobotMedia(robot.RobotOptions())

    class Events:
        def media_connected(self, *_: object) -> None: ...
        def media_failed(self, *_: object) -> None: ...
        def local_ice(self, *_: object) -> None: ...

    session = media.open("c1", robot.MediaKind.AUDIO, Events())  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert trimmed
    await session.close()
    count = len(trimmed)
    await asyncio.sleep(0.3)
    assert len(trimmed) <= count + 1  # it stops once no call is left
