"""A long call gives the C heap's free memory back (glibc's malloc_trim), while calls last."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from parley.media import robot

SRC = str(Path(robot.__file__).resolve().parents[2])


TRIM = """
import ctypes, sys
sys.path.insert(0, {src!r})
from parley.media import robot

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "bounded":
    assert robot.bound_heap() is True
# Many small blocks freed, with one kept above them (a size no free list holds, under the
# mmap threshold: from the top of the heap): the heap cannot shrink by itself.
blocks = [libc.malloc(4096) for _ in range(20_000)]
keep = libc.malloc(100_000)
for block in blocks:
    libc.free(block)
before = rss_kib()
assert robot.trim_heap() is True
print(before - rss_kib())
libc.free(keep)
"""


@pytest.mark.parametrize("mode", ["bounded", "default"])
def test_trimming_gives_freed_memory_back(mode: str) -> None:
    """In a fresh process (a long one's heap has holes the blocks would fill), with the
    heap bounded as robot media does and without."""
    done = subprocess.run([sys.executable, "-c", TRIM.format(src=SRC), mode],
                          capture_output=True, text=True, timeout=60, check=True)
    assert int(done.stdout.split()[-1]) > 60_000  # KiB: most of the 80 MiB freed went back


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


ARENAS = """
import ctypes, os, sys, tempfile, threading
sys.path.insert(0, {src!r})
if sys.argv[1] == "bounded":
    from parley.media import robot
    assert robot.bound_heap() is True
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
start, hold = threading.Barrier(8), threading.Barrier(9)

def work():
    start.wait()  # all eight allocate at once, as codec threads under load do
    blocks = [libc.malloc(2048) for _ in range(2000)]
    hold.wait()
    for block in blocks:
        libc.free(block)

threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
hold.wait()
path = os.path.join(tempfile.mkdtemp(), "info.xml")
out = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, out)
libc.fclose(out)
for thread in threads:
    thread.join()
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.parametrize("mode", ["bounded", "default"])
def test_bounded_heap_keeps_threads_to_two_arenas(mode: str) -> None:
    """With `bound_heap`, eight threads allocating at once share two arenas; without it
    (the control) glibc gives them more."""
    done = subprocess.run([sys.executable, "-c", ARENAS.format(src=SRC), mode],
                          capture_output=True, text=True, timeout=60, check=True)
    arenas = int(done.stdout.split()[-1])
    if mode == "bounded":
        assert arenas <= robot.ARENA_MAX
    else:
        assert arenas > robot.ARENA_MAX
