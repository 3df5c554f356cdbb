"""The terminal's link to the line server: log in, stay connected, request, deliver.

`ServerLink.run()` keeps one WebSocket up for as long as the terminal runs:
it answers the server's challenge with a signature, then reads frames until the
connection drops, and reconnects with exponential backoff (0.5 s doubling to
5 s, with jitter so that many terminals do not return in lockstep after a
server restart). Given several URLs (the nodes of one line host: `servers`),
it stays on the one that answers and, when that one cannot be reached, tries
the next at once, backing off only once every one of them failed. Requests
(`send`, `directory`, `ping`) carry a ``ref`` and wait for the reply that
names it. Every frame from the server is validated by
`core.wire` first; a bad one is logged and dropped.

The link offers the server batches (`wire.BATCH_SUBPROTOCOL`): what it sends
within one event-loop turn (a burst of ICE candidates, the acks for a mailbox
delivered at login) goes out through an `Outbox` as one message, and it reads
messages of several frames, each handled as if it had come alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from parley.clock import now_ms
from parley.core import wire
from parley.core.encoding import b64e, random_id
from parley.core.envelope import Envelope, seal_envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.keys import DeviceKeys, DevicePublicKeys
from parley.core.turn import Grant, parse_grant
from parley.outbox import Outbox

log = logging.getLogger("parley.link")

REQUEST_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0  # a hotline is back within seconds of its network, not half a minute
# A connection whose network went away is noticed within HEARTBEAT_S and a half (a ping
# unanswered), and a connection attempt into a dead network gives up after CONNECT_S: the
# next one, on a fresh socket, is what finds the network back (a stalled TCP connection or
# a SYN waiting out its retransmissions would take many seconds longer).
HEARTBEAT_S = 5.0
CONNECT_S = 3.0


def server_origin(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise LocalError(f"invalid server URL {url!r}", code=ErrorCode.BAD_CONFIG,
                         hint="use http://HOST:PORT (or https://)")
    return f"{parts.scheme}://{parts.netloc}"


def websocket_url(url: str) -> str:
    origin = server_origin(url)
    return ("wss" if origin.startswith("https") else "ws") + origin[origin.index(":"):] + "/v1/ws"


class ServerLink:
    def __init__(
        self,
        server_url: str | Sequence[str],
        device_id: str,
        keys: DeviceKeys,
        *,
        receive: bool = True,
        on_deliver: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        on_presence: Callable[[str, bool], None] | None = None,
        on_state: Callable[[bool, str], None] | None = None,
        on_roster: Callable[[str], None] | None = None,
        on_acked: Callable[[list[str]], None] | None = None,
    ) -> None:
        urls = [server_url] if isinstance(server_url, str) else list(server_url)
        if not urls:
            raise LocalError("no server URL", code=ErrorCode.BAD_CONFIG)
        # The line host's nodes, in the order given, each once; `origin` is the current one.
        self.servers = list(dict.fromkeys(server_origin(url) for url in urls))
        self.origin = self.servers[0]
        self.device_id = device_id
        self._keys = keys
        self._receive = receive
        self._on_deliver = on_deliver
        self._on_presence = on_presence
        self._on_state = on_state
        self._on_roster = on_roster
        self._on_acked = on_acked
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: Outbox | None = None  # for self._ws
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.connected = asyncio.Event()
        # party -> (display name, IANA time zone), as the server registered them: shown
        # beside a party, never used to decide anything.
        self.principals: dict[str, tuple[str, str]] = {}
        self.peers: list[str] = []
        self.last_error: ParleyError | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._inbox_task: asyncio.Task[None] | None = None
        self._served = False  # the current attempt was logged in by its node

    # -- lifecycle -------------------------------------------------------------------

    def _next_server(self) -> None:
        at = self.servers.index(self.origin)
        self.origin = self.servers[(at + 1) % len(self.servers)]
        log.warning("trying the line server's next node, %s", self.origin)

    async def run(self) -> None:
        """Stay connected until cancelled."""
        delay = BACKOFF_FIRST_S
        misses = 0  # attempts in a row that were not logged in
        while True:
            try:
                self._served = False
                await self._connect_and_serve()
                delay = BACKOFF_FIRST_S  # a clean session resets the backoff
            except asyncio.CancelledError:
                raise
            except ParleyError as exc:
                self.last_error = exc
                log.error("the line server closed the session: %s", exc)
                delay = max(delay, 5.0)
            except aiohttp.WSServerHandshakeError as exc:
                self.last_error = RemoteError(
                    f"the line server at {self.origin} refused the connection (HTTP"
                    f" {exc.status}{': too many connections' if exc.status == 503 else ''})",
                    code=ErrorCode.TOO_MANY_CONNECTIONS if exc.status == 503 else
                    ErrorCode.SERVER_ERROR, hint="it is tried again shortly")
                log.warning("%s", self.last_error)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot reach the line server at %s: %s", self.origin,
                            exc or type(exc).__name__)
            except Exception:  # a defect here must not leave the terminal offline for good
                log.exception("the link to %s failed unexpectedly", self.origin)
            self._set_connected(False, "disconnected")
            # An attempt that failed before the welcome (refused, a proxy's 502 for a
            # dead node, a node that cannot log anyone in): the next node at once; only
            # a whole round of them backs off. A session that ended tries its node again.
            misses = 0 if self._served else misses + 1
            if misses and len(self.servers) > 1:
                self._next_server()
                if misses % len(self.servers):
                    continue
            wait = delay * random.uniform(0.8, 1.2)
            log.info("reconnecting in %.1f s", wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, BACKOFF_MAX_S)

    async def connect_once(self) -> None:
        """Connect and log in, then serve in the background (for one-shot tools)."""
        ready = asyncio.get_running_loop().create_future()
        self._ready_future = ready
        task = asyncio.ensure_future(self._connect_and_serve())
        self._serve_task = task
        done, _ = await asyncio.wait({ready, task}, timeout=REQUEST_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # raises the reason
            raise RemoteError("the server closed the connection during login")
        if not done:
            task.cancel()
            raise RemoteError(f"no answer from the line server at {self.origin}",
                              hint="is 'parley server' running there?")

    async def close(self) -> None:
        if self._inbox_task is not None:
            self._inbox_task.cancel()
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, OSError):  # reset by the server
                await self._ws.close()
        task = getattr(self, "_serve_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _connect_and_serve(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=None, connect=CONNECT_S + 2, sock_connect=CONNECT_S))
        async with self._session.ws_connect(websocket_url(self.origin), heartbeat=HEARTBEAT_S,
                                            max_msg_size=2 * wire.MAX_FRAME,
                                            protocols=(wire.BATCH_SUBPROTOCOL,)) as ws:
            outbox = Outbox(ws.send_str, batched=ws.protocol == wire.BATCH_SUBPROTOCOL)
            self._ws, self._outbox = ws, outbox
            try:
                frames = await self._login(ws, outbox.batched)
                self._served = True  # this node logged us in: after a drop, it comes first
                for frame in frames:
                    await self._on_frame(frame)
                async for msg in ws:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        for frame in self._frames(msg.data, outbox.batched):
                            await self._on_frame(frame)
                    elif msg.type == aiohttp.WSMsgType.ERROR:
                        break
            finally:
                outbox.close()
                self._ws = self._outbox = None
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(RemoteError("the connection to the server dropped",
                                                      code=ErrorCode.SERVER_ERROR))
                self._pending.clear()
        closed = _CLOSED.get(ws.close_code or 0)
        if closed is not None:
            raise closed

    async def _login(self, ws: aiohttp.ClientWebSocketResponse, batched: bool) -> list[str]:
        """Answer the challenge; return the frames that came after the welcome."""
        first = await asyncio.wait_for(ws.receive(), REQUEST_TIMEOUT_S)
        if first.type != aiohttp.WSMsgType.TEXT:
            raise RemoteError("the server did not send a login challenge")
        challenge = wire.parse_message(_split(first.data, batched)[0],
                                       wire.SERVER_MESSAGES, what="server message")
        if challenge["t"] != "challenge":
            raise RemoteError(f"expected a challenge, got {challenge['t']}")
        if challenge["server"].rstrip("/") != self.origin:
            raise RemoteError(
                f"the server calls itself {challenge['server']}, but we connected to"
                f" {self.origin}", code=ErrorCode.AUTH_FAILED,
                hint="set the server's --public-url to the URL terminals use")
        sig = self._keys.sign(wire.auth_statement(challenge["nonce"], self.device_id,
                                                  self.origin))
        await ws.send_str(json.dumps({"t": "hello", "device": self.device_id, "sig": b64e(sig),
                                      "receive": self._receive}))
        reply = await asyncio.wait_for(ws.receive(), REQUEST_TIMEOUT_S)
        if reply.type != aiohttp.WSMsgType.TEXT:
            raise RemoteError("the server closed the connection during login",
                              code=ErrorCode.AUTH_FAILED)
        # The welcome may share its message with what follows it (presence, the mailbox).
        welcome_frame, *rest = _split(reply.data, batched)
        welcome = wire.parse_message(welcome_frame, wire.SERVER_MESSAGES,
                                     what="server message")
        if welcome["t"] == "error":
            raise RemoteError(welcome["message"], code=ErrorCode.from_wire(welcome["code"]),
                              hint=welcome.get("hint", ""))
        if welcome["t"] != "welcome":
            raise RemoteError(f"expected welcome, got {welcome['t']}")
        self.peers = [p for p in welcome["peers"] if isinstance(p, str)]
        self.last_error = None
        self._set_connected(True, "connected")
        ready = getattr(self, "_ready_future", None)
        if ready is not None and not ready.done():
            ready.set_result(None)
        return rest

    def _set_connected(self, up: bool, why: str) -> None:
        was = self.connected.is_set()
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if was != up:
            log.info("line server %s: %s", self.origin, why)
            if self._on_state is not None:
                self._on_state(up, why)

    # -- frames --------------------------------------------------------------------------

    @staticmethod
    def _frames(raw: str, batched: bool) -> list[str]:
        try:
            return _split(raw, batched)
        except RemoteError as exc:
            log.warning("dropped a bad message from the server: %s", exc)
            return []

    async def _on_frame(self, raw: str) -> None:
        try:
            msg = wire.parse_message(raw, wire.SERVER_MESSAGES, what="server message")
        except RemoteError as exc:
            log.warning("dropped a bad frame from the server: %s", exc)
            return
        kind = msg["t"]
        ref = msg.get("ref")
        if ref is not None and ref in self._pending:
            fut = self._pending.pop(ref)
            if not fut.done():
                if kind == "error":
                    fut.set_exception(RemoteError(msg["message"],
                                                  code=ErrorCode.from_wire(msg["code"]),
                                                  hint=msg.get("hint", "")))
                else:
                    fut.set_result(msg)
            return
        if kind == "deliver" and self._on_deliver is not None:
            # Processed by another task, in order: opening an envelope may need a
            # directory request, whose reply this read loop must stay free to read.
            self._inbox.put_nowait(msg["env"])
            if self._inbox_task is None or self._inbox_task.done():
                self._inbox_task = asyncio.ensure_future(self._drain_inbox())
        elif kind == "presence" and self._on_presence is not None:
            self._on_presence(msg["device"], msg["online"])
        elif kind == "roster" and self._on_roster is not None:
            self._on_roster(msg["party"])
        elif kind == "acked" and self._on_acked is not None:
            self._on_acked([i for i in msg["ids"] if isinstance(i, str) and len(i) <= 32])
        elif kind == "error":
            log.warning("server error: %s (%s)", msg["message"], msg["code"])

    async def _drain_inbox(self) -> None:
        assert self._on_deliver is not None
        while not self._inbox.empty():
            envelope = self._inbox.get_nowait()
            try:
                await self._on_deliver(envelope)
            except Exception:
                log.exception("failed to process an envelope from the server")

    async def request(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT_S
                      ) -> dict[str, Any]:
        outbox = self._outbox
        if outbox is None or not self.connected.is_set():
            raise RemoteError("not connected to the line server", code=ErrorCode.SERVER_ERROR,
                              hint=f"check that the server at {self.origin} is running")
        ref = random_id(9)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = fut
        try:
            if outbox.full:
                await outbox.room()
            outbox.put(wire.encode_frame({**message, "ref": ref}))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RemoteError(f"the line server did not answer within {timeout:.0f} s",
                              code=ErrorCode.SERVER_ERROR) from None
        finally:
            self._pending.pop(ref, None)

    async def send_envelope(self, envelope: Envelope, *, ephemeral: bool) -> str:
        reply = await self.request({"t": "send", "env": envelope.to_json(),
                                    "ephemeral": ephemeral})
        return str(reply["status"])

    async def send_sealed(self, to: DevicePublicKeys, type_: str, payload: dict[str, Any]
                          ) -> str:
        """Seal `payload` to `to`, sign it as this device, and have the server store it."""
        envelope = seal_envelope(self._keys, self.device_id, to, type_, payload, now_ms(),
                                 random_id())
        return await self.send_envelope(envelope, ephemeral=False)

    async def ack(self, envelope_id: str) -> None:
        if self._outbox is not None:
            self._outbox.put(wire.encode_frame({"t": "ack", "id": envelope_id}))

    async def file_linetest(self, record: dict[str, Any]) -> dict[str, Any]:
        """File a line test's record, signed by both ends; the server's verdict."""
        return await self.request({"t": "linetest", "record": record})

    async def turn(self, party: str, timeout: float = REQUEST_TIMEOUT_S) -> Grant:
        """TURN credentials for a call with `party`, and its line's media policy."""
        reply = await self.request({"t": "turn", "party": party}, timeout)
        if reply.get("t") != "turn":
            raise RemoteError(f"the server answered a TURN request with {reply.get('t')!r}")
        return parse_grant(reply)

    async def lines(self) -> list[Any]:
        """This device's lines as the server shows them, each with its last record."""
        return list((await self.request({"t": "lines"}))["lines"])

    async def directory(self, party: str) -> tuple[list[DevicePublicKeys], set[str]]:
        reply = await self.request({"t": "directory", "party": party})
        self.principals[party] = (reply.get("display") or party, reply.get("timezone") or "")
        devices = []
        for entry in reply["devices"]:
            try:
                keys = DevicePublicKeys.from_json(entry)
            except ParleyError as exc:
                log.warning("directory entry for %s rejected: %s", party, exc)
                continue
            if keys.party == party:
                devices.append(keys)
        return devices, {d for d in reply["online"] if isinstance(d, str)}


# Why the server closed a session, by its close code (see wire.CloseCode).
_CLOSED = {
    wire.CloseCode.LOGIN_REFUSED: RemoteError(
        "the server closed the session: login refused", code=ErrorCode.AUTH_FAILED),
    wire.CloseCode.DEVICE_REVOKED: RemoteError(
        "the server's operator revoked this device, or replaced its keys",
        code=ErrorCode.DEVICE_REVOKED,
        hint="ask the operator; a replacement is enrolled with a code from 'parley server"
             " device replace'"),
    wire.CloseCode.REPLACED: RemoteError(
        "a newer session of this same device took this one's place",
        code=ErrorCode.TOO_MANY_CONNECTIONS,
        hint="is another terminal running with this device's data directory?"),
    wire.CloseCode.BAD_FRAMES: RemoteError(
        "the server closed the session after too many malformed frames",
        code=ErrorCode.BAD_FRAMES),
    wire.CloseCode.LOGIN_TIMEOUT: RemoteError(
        "the server closed the session: the login took too long",
        code=ErrorCode.LOGIN_TIMEOUT),
}


def _split(raw: str, batched: bool) -> list[str]:
    """The frames of a server message (a RemoteError for a malformed batch)."""
    return wire.split_batch(raw) if batched else [raw]
