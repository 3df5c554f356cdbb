"""A real line for the call benchmarks: the server in its own process, terminals here.

Provisioning is what operators do (parties, the line, one-time enrollment codes,
safety numbers compared and pinned: `parley.lab`), so every call measured is a
verified call with `require_verified` on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Child, start_server_process
from parley.core.call import CallInfo, CallState, MediaKind
from parley.lab import provision_line
from parley.media.engine import MediaEvents
from parley.media.ice import IceConfig
from parley.media.robot import RobotMedia, RobotMediaSession, RobotOptions
from parley.terminal.app import Terminal, TerminalConfig


class TimedRobotMedia(RobotMedia):
    """Robot media that notes when each call's session opened (monotonic seconds).

    `RobotMediaSession.received[kind].first_ms` counts from the session's opening;
    with the opening time it gives the absolute time of the first decoded frame.
    """

    def __init__(self, options: RobotOptions | None = None) -> None:
        super().__init__(options)
        self.opened: dict[str, float] = {}

    def open(self, call_id: str, media: MediaKind, events: MediaEvents,
             ice: IceConfig | None = None) -> RobotMediaSession:
        opened = time.monotonic()
        session = super().open(call_id, media, events, ice)
        self.opened[call_id] = opened
        return session

    def first_frames(self, call_id: str, kinds: tuple[str, ...]) -> float | None:
        """When every kind in `kinds` had its first decoded frame (monotonic s)."""
        session = self.sessions.get(call_id)
        if session is None or call_id not in self.opened:
            return None
        firsts = [session.received[k].first_ms for k in kinds]
        if any(f is None for f in firsts):
            return None
        return self.opened[call_id] + max(f for f in firsts if f is not None) / 1000


class BenchLine:
    """Server process plus provisioned, verified terminals in this event loop."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: Child | None = None
        self.url = ""
        self.terminals: dict[str, Terminal] = {}
        self.engines: dict[str, TimedRobotMedia] = {}

    async def start(self) -> None:
        self.server, self.url = await start_server_process(self.root / "server",
                                                           self.root / "logs")
        await provision_line(self.root / "server", self.url, self.root)

    async def terminal(self, name: str, robot: RobotOptions | None = None, *,
                       engine: TimedRobotMedia | None = None, **config: Any) -> Terminal:
        engine = engine or TimedRobotMedia(robot or RobotOptions())
        terminal = Terminal(TerminalConfig(data_dir=self.root / name, robot=engine.options,
                                           **config), engine=engine)
        await terminal.start()
        await asyncio.wait_for(terminal.link.connected.wait(), 10)
        self.terminals[name], self.engines[name] = terminal, engine
        return terminal

    async def stop(self) -> None:
        for terminal in self.terminals.values():
            with contextlib.suppress(Exception):
                await terminal.stop()
        if self.server is not None:
            await self.server.stop()


async def active_call(caller: Terminal, callee: Terminal, target: str = "moscow",
                      media: MediaKind = MediaKind.VIDEO, timeout: float = 20.0
                      ) -> CallInfo:
    placed = await caller.place_call(target, media)
    info = await caller.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state in (CallState.ACTIVE, CallState.ENDED),
        timeout)
    if info.state is not CallState.ACTIVE:
        raise RuntimeError(f"the call did not connect: {info.end_reason} {info.alarm}")
    await callee.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, timeout)
    return info


async def hang_up(caller: Terminal, callee: Terminal, call_id: str) -> None:
    caller.hangup(call_id)
    for t in (caller, callee):
        await t.wait_for_call(lambda c: c.call_id == call_id and c.state is CallState.ENDED, 10)
    await wait_until(lambda: not (caller.sessions or callee.sessions), 10,
                     f"call {call_id}: both terminals' media sessions to close")


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` every 10 ms until it is true; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        await asyncio.sleep(0.01)
