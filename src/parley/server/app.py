"""The line server's composition root: HTTP + WebSocket over aiohttp.

The server authenticates devices (challenge-response with their Ed25519 key),
keeps the directory of device public keys and which parties share a line, and
relays envelopes: delivered at once when the recipient is online, otherwise
stored (or, for call signaling, refused as ``recipient_offline``). It can read
envelope headers, never payloads, and nothing a terminal relies on for security
depends on it behaving.

Every frame from the network is parsed and validated by `core.wire` before it is
used; a bad frame gets an ``error`` reply naming what was wrong and the session
carries on (or, for a failed login, is closed). One session's trouble never
touches another's: each runs in its own task and every handler is wrapped.

Nothing is written to a socket directly: frames go to the session's `Outbox`,
which writes what a turn of the event loop produced for that socket together
(in batches, where the connection negotiated them; see `core.wire`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from parley.clock import now_ms
from parley.core import schema, wire
from parley.core.encoding import b64d, b64e
from parley.core.envelope import Envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.keys import split_device_id
from parley.outbox import Outbox
from parley.server.fastpath import Header, quick_send
from parley.server.status import render_status
from parley.server.store import ServerStore

log = logging.getLogger("parley.server")

AUTH_TIMEOUT_S = 10.0
MAX_WS_MESSAGE = 1024 * 1024  # messages above this are cut off by aiohttp (close 1009)
RATE_PER_S = 500.0  # the default of `parley server --rate-limit`
MAILBOX_PAGE = 500  # stored envelopes sent at once; the next page once these are acked


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8800
    public_url: str | None = None  # the origin devices sign in their login; default http://host:port
    rate_per_s: float = RATE_PER_S  # frames each session may send per second, in bursts of 2x

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise LocalError("the rate limit must be a positive number of messages per second",
                             code=ErrorCode.BAD_CONFIG, hint="set --rate-limit (default 500)")

    @property
    def origin(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@dataclass(eq=False)  # each is itself: compared and hashed by identity
class Session:
    ws: web.WebSocketResponse
    outbox: Outbox
    peer: str
    nonce: str = field(default_factory=lambda: b64e(secrets.token_bytes(24)))
    device: str | None = None
    party: str | None = None
    receive: bool = True
    refused: str = ""  # why its login failed, if it did: then it is closed
    congested: list[Outbox] = field(default_factory=list)  # to wait for before reading on
    unacked: set[str] = field(default_factory=set)  # stored envelopes sent here, not acked
    mailbox_more: bool = False  # the last mailbox page was full: more may wait behind it
    rate: float = RATE_PER_S  # frames per second, in bursts of twice that
    tokens: float = field(init=False)
    refilled: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = 2 * self.rate

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(2 * self.rate, self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Counters:
    relayed: int = 0
    stored: int = 0
    refused: int = 0
    bad_input: int = 0
    logins: int = 0
    login_failures: int = 0


class LineServer:
    """Owns the store and the live sessions. One per process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = ServerStore(config.data_dir / "server.db")
        self._store_closed = False
        self.online: dict[str, list[Session]] = defaultdict(list)
        self.counters = Counters()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._commit_scheduled = False
        self.sessions: set[Session] = set()  # every connection, logged in or not
        self.started_ms = now_ms()
        self.app = web.Application(client_max_size=64 * 1024)
        self.app.add_routes([
            web.get("/", self.status_page),
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.metrics),
            web.post("/v1/enroll", self.enroll),
            web.get("/v1/ws", self.websocket),
        ])
        self.app.on_shutdown.append(self._close_sessions)
        self.app.on_cleanup.append(lambda _app: self._close_store())

    async def _close_store(self) -> None:
        if self._store_closed:  # a runner cleaned up twice
            return
        self._store_closed = True
        self._make_durable()
        self.store.close()

    async def _close_sessions(self, _app: web.Application) -> None:
        # Every connection: receiving devices, send-only ones and those not logged in.
        for session in list(self.sessions):
            await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    # -- HTTP ---------------------------------------------------------------------

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "online": len(self.online)})

    async def status_page(self, _request: web.Request) -> web.Response:
        html = render_status(self.store, set(self.online), self.counters.__dict__,
                             now_ms() - self.started_ms)
        return web.Response(text=html, content_type="text/html")

    async def metrics(self, _request: web.Request) -> web.Response:
        lines = [
            "# HELP parley_devices_online Devices with a receiving session.",
            "# TYPE parley_devices_online gauge",
            f"parley_devices_online {len(self.online)}",
            "# HELP parley_mailbox_envelopes Envelopes stored awaiting delivery.",
            "# TYPE parley_mailbox_envelopes gauge",
            f"parley_mailbox_envelopes {self.store.mailbox_size()}",
        ]
        for name, value in self.counters.__dict__.items():
            lines += [f"# TYPE parley_{name}_total counter", f"parley_{name}_total {value}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def enroll(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            data = schema.parse_json(raw, max_bytes=16 * 1024, what="enrollment request")
            schema.validate(data, wire.ENROLL_REQUEST, what="enrollment request")
            self._make_durable()  # the mailbox group first, where a failed commit is handled
            try:
                public = self.store.enroll(data["code"], data["device"], data["keys"], now_ms())
            except LocalError as exc:  # a bad device name is the client's fault here
                raise RemoteError(exc.message, code=ErrorCode.BAD_MESSAGE, hint=exc.hint) from exc
        except ParleyError as exc:
            log.warning("enrollment refused from %s: %s", request.remote, exc)
            status = 413 if exc.code is ErrorCode.TOO_LARGE else 400
            return web.json_response(exc.as_dict(), status=status)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"code": "too_large", "message": "request too large"},
                                     status=413)
        log.info("enrolled %s (fingerprint %s)", public.device_id, public.fingerprint)
        return web.json_response({"device": public.device_id, "party": public.party,
                                  "fingerprint": public.fingerprint})

    # -- WebSocket ------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0,
                                   protocols=(wire.BATCH_SUBPROTOCOL,))
        await ws.prepare(request)
        batched = ws.ws_protocol == wire.BATCH_SUBPROTOCOL
        outbox = Outbox(ws.send_str, batched=batched, before_write=self._make_durable)
        session = Session(ws=ws, outbox=outbox, peer=str(request.remote),
                          rate=self.config.rate_per_s)
        self.sessions.add(session)
        self._send(session, {"t": "challenge", "nonce": session.nonce,
                             "server": self.config.origin})
        timer = asyncio.get_running_loop().call_later(AUTH_TIMEOUT_S, self._auth_timeout, session)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_message(session, msg.data)
                    if session.refused:
                        await session.outbox.flush()  # the error first
                        await ws.close(code=4001, message=session.refused.encode())
                        break
                elif msg.type == WSMsgType.BINARY:
                    self._reply_error(session, RemoteError(
                        "binary frames are not part of the protocol; send JSON text frames"))
                elif msg.type == WSMsgType.ERROR:
                    log.info("websocket from %s closed with error: %s", session.peer,
                             ws.exception())
                if session.outbox.full:  # a client that does not read its replies waits
                    await session.outbox.room()
        finally:
            timer.cancel()
            self._drop(session)
        return ws

    def _auth_timeout(self, session: Session) -> None:
        if session.device is None and not session.ws.closed:
            log.info("closing unauthenticated session from %s after %.0f s", session.peer,
                     AUTH_TIMEOUT_S)
            self._background(session.ws.close(code=WSCloseCode.POLICY_VIOLATION,
                                              message=b"not authenticated"))

    async def _on_message(self, session: Session, raw: str) -> None:
        if not session.outbox.batched:
            frames = [raw]
        else:
            try:
                frames = wire.split_batch(raw)
            except RemoteError as exc:
                self.counters.bad_input += 1
                log.info("bad input from %s (%s): %s", session.device or session.peer, exc.code,
                         exc)
                self._reply_error(session, exc)
                return
        for frame in frames:
            if session.refused:  # the rest of a batch that came with a failed login
                break
            self._on_frame(session, frame)
            while session.congested:  # a recipient that does not keep up slows its senders
                await session.congested.pop().room()

    def _on_frame(self, session: Session, raw: str) -> None:
        ref = None
        try:
            if not session.allow():
                raise RemoteError("too many messages; slow down", code=ErrorCode.RATE_LIMITED)
            quick = quick_send(raw) if session.device is not None else None
            if quick is not None:  # the common case, checked in one go (see fastpath)
                msg, header = quick
                ref = msg.get("ref")
                self._relay(session, msg, header)
                return
            msg = wire.parse_message(raw, wire.CLIENT_MESSAGES, what="message")
            ref = msg.get("ref")
            if msg["t"] == "hello":
                self._on_hello(session, msg)
            elif session.device is None:
                raise RemoteError(
                    f"{msg['t']} before login", code=ErrorCode.NOT_AUTHENTICATED,
                    hint="answer the challenge with a signed hello first")
            elif msg["t"] == "send":
                env = Envelope.from_json(msg["env"])
                self._relay(session, msg, (env.id, env.sender, env.recipient))
            elif msg["t"] == "ack":
                self.store.delivered(session.device, msg["id"])
                self._commit_soon()
                self._acked(session.device, msg["id"])
            elif msg["t"] == "directory":
                self._on_directory(session, msg)
            elif msg["t"] == "ping":
                self._send(session, {"t": "pong", "ref": ref, "time": now_ms()})
        except RemoteError as exc:
            self.counters.bad_input += 1
            log.info("bad input from %s (%s): %s", session.device or session.peer, exc.code, exc)
            self._reply_error(session, exc, ref)
        except Exception:
            log.exception("internal error handling a message from %s",
                          session.device or session.peer)
            self._reply_error(session, RemoteError(
                "internal server error; the message was not processed",
                code=ErrorCode.SERVER_ERROR), ref)

    def _on_hello(self, session: Session, msg: dict[str, Any]) -> None:
        if session.device is not None:
            raise RemoteError("already logged in")
        device = msg["device"]
        keys = self.store.device(device)
        signature = b64d(msg["sig"], what="hello.sig", max_bytes=64)
        ok = keys is not None and keys.verify(
            signature, wire.auth_statement(session.nonce, device, self.config.origin))
        if not ok:
            self.counters.login_failures += 1
            err = RemoteError(f"unknown device {device}", code=ErrorCode.UNKNOWN_DEVICE,
                              hint="enroll it with 'parley terminal enroll'") if keys is None \
                else RemoteError("the login signature does not verify",
                                 code=ErrorCode.AUTH_FAILED,
                                 hint="this device's key is not the one enrolled for "
                                      f"{device}; re-enroll it")
            log.warning("login refused for %s from %s: %s", device, session.peer, err.code)
            self._reply_error(session, err)
            session.refused = str(err.code)
            return
        party, _ = split_device_id(device)
        session.device, session.party = device, party
        session.receive = msg.get("receive", True)
        self.counters.logins += 1
        peers = self.store.line_peers(party)
        self._send(session, {"t": "welcome", "device": device, "party": party, "peers": peers})
        if session.receive:
            first = not self.online.get(device)
            self.online[device].append(session)
            log.info("%s online from %s", device, session.peer)
            if first:
                self._presence(device, True)
            self._flush_mailbox(session)

    def _relay(self, session: Session, msg: dict[str, Any], header: Header) -> None:
        """Deliver or store a checked envelope, if it comes from this device and may go there."""
        assert session.device is not None and session.party is not None
        envelope_id, sender, recipient = header
        if sender != session.device:
            raise RemoteError(f"envelope sender {sender} is not you ({session.device})",
                              hint="sign in as the device that sends")
        if not self.store.may_deliver(session.party, recipient):
            recipient_party, _ = split_device_id(recipient)
            if self.store.device(recipient) is None:
                raise RemoteError(f"no device {recipient}", code=ErrorCode.UNKNOWN_DEVICE)
            self.counters.refused += 1
            raise RemoteError(f"there is no line between {session.party} and {recipient_party}",
                              code=ErrorCode.NO_LINE,
                              hint="the server operator creates lines with"
                                   " 'parley server line add'")
        body = wire.encode_frame({"t": "deliver", "env": msg["env"]})
        targets = self.online.get(recipient, [])
        if msg.get("ephemeral"):
            if not targets:
                self.counters.refused += 1
                raise RemoteError(f"{recipient} is not online",
                                  code=ErrorCode.RECIPIENT_OFFLINE,
                                  hint="call again when the other terminal is connected")
            self._fanout(session, targets, body)
            self.counters.relayed += 1
            self._send(session, {"t": "sent", "id": envelope_id, "status": "delivered",
                                 "ref": msg.get("ref")})
            return
        self.store.store_envelope(envelope_id, sender, recipient, body, now_ms())
        self._commit_soon()
        self.counters.stored += 1
        self._send(session, {"t": "sent", "id": envelope_id,
                             "status": "delivered" if targets else "stored",
                             "ref": msg.get("ref")})
        if targets:
            self.counters.relayed += 1
            for target in targets:
                if target.mailbox_more:  # so that the next page does not send it again
                    target.unacked.add(envelope_id)
            self._fanout(session, targets, body)

    def _commit_soon(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._make_durable)

    def _make_durable(self) -> None:
        """Commit this turn's mailbox writes: before any frame leaves, and once a turn."""
        self._commit_scheduled = False
        if not self.store.group_open:
            return
        try:
            self.store.commit_group()
        except Exception:
            # Frames may speak of what is now lost ("sent ... stored"): none may leave.
            # Every terminal is cut off and, reconnecting, sends again what was not
            # acknowledged; acks lost with it mean envelopes delivered twice, which
            # terminals drop as replays.
            log.exception("could not commit the mailbox; closing every connection")
            for session in list(self.sessions):
                session.outbox.close()
                self._background(session.ws.close(code=WSCloseCode.INTERNAL_ERROR,
                                                  message=b"server storage failure"))

    def _on_directory(self, session: Session, msg: dict[str, Any]) -> None:
        party = msg["party"]
        assert session.party is not None
        if self.store.principal(party) is None:
            raise RemoteError(f"no party named {party!r}", code=ErrorCode.UNKNOWN_PARTY)
        if not self.store.may_talk(session.party, party):
            raise RemoteError(f"there is no line between {session.party} and {party}",
                              code=ErrorCode.NO_LINE)
        devices = self.store.devices(party)
        self._send(session, {
            "t": "directory", "party": party, "ref": msg.get("ref"),
            "devices": [d.to_json() for d in devices],
            "online": [d.device_id for d in devices if self.online.get(d.device_id)],
        })

    def _flush_mailbox(self, session: Session) -> None:
        """The next page of stored envelopes this session has not been sent yet."""
        assert session.device is not None
        rows = self.store.pending(session.device, MAILBOX_PAGE + len(session.unacked))
        page = [(ident, body) for ident, body in rows if ident not in session.unacked]
        page = page[:MAILBOX_PAGE]
        session.mailbox_more = len(page) == MAILBOX_PAGE
        for ident, body in page:
            session.unacked.add(ident)
            session.outbox.put(body)

    def _acked(self, device: str, envelope_id: str) -> None:
        for session in self.online.get(device, []):
            session.unacked.discard(envelope_id)
            if session.mailbox_more and not session.unacked:
                self._flush_mailbox(session)

    def _presence(self, device: str, online: bool) -> None:
        party, _ = split_device_id(device)
        watchers = set(self.store.line_peers(party)) | {party}
        frame = wire.encode_frame({"t": "presence", "device": device, "online": online})
        for dev, sessions in self.online.items():
            if dev != device and dev.split("/", 1)[0] in watchers:
                for target in sessions:
                    target.outbox.put(frame)

    def _fanout(self, sender: Session, targets: list[Session], body: str) -> None:
        for target in targets:
            target.outbox.put(body)
            if target.outbox.full:
                sender.congested.append(target.outbox)

    def _drop(self, session: Session) -> None:
        session.outbox.close()
        self.sessions.discard(session)
        if session.device and session.receive:
            sessions = self.online.get(session.device, [])
            if session in sessions:
                sessions.remove(session)
            if not sessions:
                self.online.pop(session.device, None)
                log.info("%s offline", session.device)
                self._presence(session.device, False)

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, session: Session, message: dict[str, Any]) -> None:
        if message.get("ref", "") is None:
            del message["ref"]
        session.outbox.put(wire.encode_frame(message))

    def _reply_error(self, session: Session, exc: ParleyError, ref: str | None = None) -> None:
        self._send(session, wire.error_message(exc.code, exc.message, exc.hint, ref))


async def start_server(config: ServerConfig) -> tuple[LineServer, web.AppRunner]:
    """Bind and start serving; with port 0, `config.port` is updated to the real port."""
    server = LineServer(config)
    runner = web.AppRunner(server.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    if sockets:
        config.port = sockets[0].getsockname()[1]
    log.info("line server listening on %s (data in %s)", config.origin, config.data_dir)
    return server, runner


async def run_server(config: ServerConfig, *, on_ready: Callable[[str], None] | None = None
                     ) -> None:
    """Serve until cancelled."""
    _server, runner = await start_server(config)
    if on_ready is not None:
        on_ready(f"http://{config.host}:{config.port}")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
