"""A real line in the test's own event loop: server on 127.0.0.1:0, terminals, relay.

Nothing here is a stand-in: the server is the real `LineServer` with its SQLite
store, terminals are real `Terminal`s with real aiortc media, and the relay is a
real WebSocket man-in-the-middle that the tests make hostile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from parley.core import wire
from parley.core.call import CallInfo, CallState
from parley.core.encoding import b64e
from parley.core.keys import DeviceKeys
from parley.core.relay.limits import Limits
from parley.lab import provision_line
from parley.media.robot import RobotOptions
from parley.server.app import LineServer, ServerConfig, start_server
from parley.terminal.app import Terminal, TerminalConfig
from parley.terminal.store import TerminalStore

T = TypeVar("T")

# (direction, device or None, frame) -> frame to forward, or None to drop it
Tamper = Callable[[str, str | None, dict[str, Any]], Awaitable[dict[str, Any] | None]]


async def wait_for(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool],
                   timeout: float = 10.0, what: str = "condition") -> T:
    """Await `probe()` until `ok` holds for what it returns, and return that value.

    Fails with `what` and the last value seen if `timeout` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await probe()
        if ok(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what};"
                                 f" last saw {value!r}")
        await asyncio.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    async def probe() -> bool:
        return predicate()

    await wait_for(probe, bool, timeout, what)


class LocalLine:
    """A line server and its terminals, all in this process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: LineServer | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.terminals: list[Terminal] = []

    async def start(self, public_url: str | None = None, port: int = 0,
                    limits: Limits | None = None, **server_options: Any) -> None:
        """Start the server (again); `server_options` are `ServerConfig` fields, kept for
        a restart."""
        self._limits = limits or getattr(self, "_limits", None) or Limits()
        self._server_options = server_options or getattr(self, "_server_options", {})
        config = ServerConfig(data_dir=self.root / "server", port=port, public_url=public_url,
                              limits=self._limits, **self._server_options)
        self.server, self._runner = await start_server(config)
        self.url = f"http://127.0.0.1:{config.port}"
        self.port = config.port
        self._public_url = public_url

    async def stop_server(self) -> None:
        """Stop the server, dropping every session; `start(port=line.port)` brings it back."""
        assert self._runner is not None
        await self._runner.cleanup()
        self._runner = None

    async def restart_server(self) -> None:
        """Stop the server (dropping every session) and start it again on the same port."""
        await self.stop_server()
        await self.start(self._public_url, self.port)

    async def provision(self, *, verify: bool = True, via: str | None = None,
                        test_sets: bool = False) -> dict[str, Path]:
        return await provision_line(self.root / "server", via or self.url, self.root,
                                    verify=verify, test_sets=test_sets,
                                    database=self._server_options.get("database"))

    async def terminal(self, name: str, *, server_url: str | None = None,
                       connect: bool = True, **options: Any) -> Terminal:
        robot = options.pop("robot", RobotOptions())
        config = TerminalConfig(data_dir=self.root / name, server_url=server_url, robot=robot,
                                **options)
        terminal = Terminal(config)
        await terminal.start()
        self.terminals.append(terminal)
        if connect:
            await asyncio.wait_for(terminal.link.connected.wait(), 10)
        return terminal

    async def stop(self) -> None:
        hung: list[AssertionError] = []
        for terminal in self.terminals:
            try:
                await _bounded(terminal.stop(), f"stopping the terminal {terminal.config.data_dir}")
            except AssertionError as exc:
                hung.append(exc)
            except Exception:  # a terminal a test broke on purpose
                pass
        if self._runner is not None:
            await _bounded(self._runner.cleanup(), "stopping the line server")
        if hung:
            raise hung[0]


STOP_TIMEOUT_S = 30.0


async def _bounded(step: Awaitable[None], what: str) -> None:
    """Await one step of a teardown; one that hangs fails naming itself and what it awaits."""
    try:
        await asyncio.wait_for(step, STOP_TIMEOUT_S)
    except TimeoutError:
        stacks = []
        for task in asyncio.all_tasks():
            frames = task.get_stack(limit=8)
            where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
            stacks.append(f"  {task.get_name()}: {where}")
        raise AssertionError(f"{what} took over {STOP_TIMEOUT_S:.0f} s; tasks:\n"
                             + "\n".join(stacks)) from None


@contextlib.asynccontextmanager
async def local_line(root: Path, limits: Limits) -> AsyncIterator[LocalLine]:
    """A line whose server has these limits, stopped at the end."""
    line = LocalLine(root)
    await line.start(limits=limits)
    try:
        yield line
    finally:
        await line.stop()


async def active_call(caller: Terminal, callee: Terminal, target: str = "moscow",
                      timeout: float = 20.0) -> tuple[CallInfo, CallInfo]:
    """Place a call and wait until both sides are ACTIVE (or fail loudly)."""
    placed = await caller.place_call(target)
    info = await caller.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state in (CallState.ACTIVE, CallState.ENDED),
        timeout)
    assert info.state is CallState.ACTIVE, f"call ended: {info.end_reason} {info.alarm}"
    other = await callee.wait_for_call(
        lambda c: c.call_id == placed.call_id and c.state is CallState.ACTIVE, timeout)
    return info, other


async def frames(terminal: Terminal, call_id: str) -> dict[str, int]:
    stats = await terminal.call_stats(call_id)
    return {kind: stats.get(kind, {}).get("frames", 0) for kind in ("audio", "video")}


class WireClient:
    """One WebSocket to the line server, as a device holds it.

    Frames are read one at a time, whatever the packaging: with the batching
    subprotocol a message may carry several, one per line. `challenge` is the
    server's first frame, read by `connect`.
    """

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.batched = ws.protocol == wire.BATCH_SUBPROTOCOL
        self.challenge: dict[str, Any] = {}
        self.frames: deque[str] = deque()
        self.messages: list[str] = []  # every message received, as received
        self.acked: list[str] = []  # the envelope ids the server confirmed acknowledged

    async def send(self, *frames: dict[str, Any] | str) -> None:
        """All `frames` in one message (a batch, if more than one)."""
        await self.ws.send_str("\n".join(f if isinstance(f, str) else json.dumps(f)
                                         for f in frames))

    async def recv(self) -> dict[str, Any]:
        """The next frame, but for the server's confirmations of acks (kept in `acked`)."""
        while True:
            while not self.frames:
                msg = await asyncio.wait_for(self.ws.receive(), 5)
                assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a frame, got {msg.type}"
                self.messages.append(msg.data)
                self.frames.extend(msg.data.split("\n") if self.batched else [msg.data])
            frame = dict(json.loads(self.frames.popleft()))
            if frame.get("t") != "acked":
                return frame
            self.acked += frame["ids"]

    async def recv_n(self, n: int) -> list[dict[str, Any]]:
        return [await self.recv() for _ in range(n)]

    async def login(self, device: str, keys: DeviceKeys, origin: str) -> dict[str, Any]:
        """Answer the challenge as `device`, signed for `origin`; the server's reply."""
        sig = keys.sign(wire.auth_statement(self.challenge["nonce"], device, origin))
        await self.send({"t": "hello", "device": device, "sig": b64e(sig)})
        return await self.recv()


# The WebSockets each test session opened, closed with it (tests/conftest.py's `http`):
# one left open is an unclosed connection whenever the garbage collector finds it.
_OPENED: weakref.WeakKeyDictionary[aiohttp.ClientSession,
                                   list[aiohttp.ClientWebSocketResponse]] = \
    weakref.WeakKeyDictionary()


async def close_websockets(http: aiohttp.ClientSession) -> None:
    for ws in _OPENED.pop(http, []):
        await ws.close()


async def connect(url: str, http: aiohttp.ClientSession, *, batch: bool = True) -> WireClient:
    """A WebSocket to the server at `url` (offering batches, unless not), past its challenge."""
    ws = await http.ws_connect(url.replace("http", "ws") + "/v1/ws",
                               protocols=(wire.BATCH_SUBPROTOCOL,) if batch else (),
                               max_msg_size=8 * 1024 * 1024)
    _OPENED.setdefault(http, []).append(ws)
    client = WireClient(ws)
    client.challenge = await client.recv()
    assert client.challenge["t"] == "challenge" and client.challenge["server"] == url, \
        client.challenge
    return client


async def logged_in(line: LocalLine, http: aiohttp.ClientSession, dirs: dict[str, Path],
                    name: str) -> tuple[WireClient, str, DeviceKeys]:
    """A WebSocket logged in as the provisioned terminal `name`'s device."""
    client = await connect(line.url, http)
    device, keys = device_of(dirs, name)
    assert (await client.login(device, keys, line.url))["t"] == "welcome"
    return client, device, keys


def device_of(dirs: dict[str, Path], name: str) -> tuple[str, DeviceKeys]:
    """The device id and keys of a provisioned terminal, read from its store."""
    store = TerminalStore(dirs[name])
    try:
        return store.device_id, store.load_keys()
    finally:
        store.close()


class HostileRelay:
    """A man in the middle between terminals and the real server, rewriting what it likes.

    It fronts the server completely: terminals enroll through it and log in
    through it (the server is configured with the relay's URL as its public
    URL, as a hostile operator would). Each frame passes through `tamper`.
    """

    def __init__(self) -> None:
        self.upstream = ""
        self.url = ""
        self.tamper: Tamper | None = None
        self.clients: dict[str, web.WebSocketResponse] = {}  # device -> its socket to us
        self.log: list[tuple[str, str | None, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None

    async def bind(self) -> str:
        app = web.Application()
        app.add_routes([web.get("/v1/ws", self._ws), web.post("/v1/enroll", self._enroll)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._http = aiohttp.ClientSession()
        return self.url

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def inject(self, device: str, frame: dict[str, Any]) -> None:
        """Send a frame of our choosing to a device, as if from the server."""
        await self.clients[device].send_str(json.dumps(frame))

    async def _enroll(self, request: web.Request) -> web.Response:
        assert self._http is not None
        async with self._http.post(self.upstream + "/v1/enroll", data=await request.read(),
                                   headers={"Content-Type": "application/json"}) as resp:
            return web.Response(body=await resp.read(), status=resp.status,
                                content_type="application/json")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        assert self._http is not None
        client = web.WebSocketResponse()
        await client.prepare(request)
        device: list[str | None] = [None]
        async with self._http.ws_connect(self.upstream.replace("http", "ws") + "/v1/ws") as up:

            async def pump(src: Any, dst: Any, direction: str) -> None:
                async for msg in src:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    frame = json.loads(msg.data)
                    if direction == "up" and frame.get("t") == "hello":
                        device[0] = frame["device"]
                        self.clients[frame["device"]] = client
                    self.log.append((direction, device[0], frame))
                    if self.tamper is not None:
                        frame = await self.tamper(direction, device[0], frame)
                    if frame is not None:
                        await dst.send_str(json.dumps(frame))
                await dst.close()

            tasks = [asyncio.ensure_future(pump(client, up, "up")),
                     asyncio.ensure_future(pump(up, client, "down"))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
        return client


__all__ = ["HostileRelay", "LocalLine", "WireClient", "active_call", "close_websockets",
           "connect", "device_of", "frames", "local_line", "logged_in", "wait_for",
           "wait_until"]


@contextlib.asynccontextmanager
async def impostor(route: web.RouteDef) -> AsyncIterator[str]:
    """Something on 127.0.0.1 that answers `route` in place of a line server (or a node
    of one: a proxy's 502 for a node that is gone); its URL."""
    app = web.Application()
    app.add_routes([route])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
