"""The terminal's local API and web UI, on 127.0.0.1 only.

The person's browser, the `parley` CLI and the demo all drive a running
terminal through this small HTTP + WebSocket API. It is served by the terminal
itself (never by the line server, so a hostile server cannot ship code to the
page) and guarded three ways:

* a random token, new at every start, required on every API call (the URL the
  terminal prints carries it; `control.json` in the data directory, mode 0600,
  gives it to the CLI);
* the Host header must name this loopback address (defeats DNS rebinding);
* a browser's Origin header, when present, must be this very origin (defeats
  other web pages on the same machine).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import WSMsgType, web

from parley.core.call import MediaKind
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.schema import parse_json
from parley.terminal.app import Terminal, now_ms

log = logging.getLogger("parley.control")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml", ".png": "image/png"}


def _error(exc: ParleyError, status: int = 400) -> web.Response:
    return web.json_response({"error": exc.as_dict()}, status=status)


class ControlServer:
    def __init__(self, terminal: Terminal, host: str = "127.0.0.1", port: int = 0) -> None:
        self.terminal = terminal
        self.host, self.port = host, port
        self.token = secrets.token_urlsafe(24)
        self.app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        self.extra_ws_handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {}
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/api/status", self.status),
            web.get("/api/peers/{party}", self.peer),
            web.post("/api/verify", self.verify),
            web.post("/api/call", self.call),
            web.get("/api/calls/{call_id}", self.call_info),
            web.post("/api/calls/{call_id}/{op}", self.call_op),
            web.get("/api/events", self.events),
        ])
        self._runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.origin}/?token={self.token}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.terminal.store.write_control({"url": self.origin, "token": self.token})

    async def stop(self) -> None:
        self.terminal.store.remove_control()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- guard ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        allowed_hosts = {f"{self.host}:{self.port}", f"localhost:{self.port}"}
        if request.host not in allowed_hosts:
            return web.Response(status=421, text="wrong Host for this terminal")
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (self.origin, f"http://localhost:{self.port}"):
            log.warning("refused a request from origin %s", origin)
            return web.Response(status=403, text="cross-origin requests are refused")
        if request.path.startswith("/api/"):
            given = request.query.get("token") or request.headers.get(
                "Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return _error(LocalError("missing or wrong token", code=ErrorCode.AUTH_FAILED,
                                         hint="open the URL the terminal printed"), 401)
        try:
            return await handler(request)
        except LocalError as exc:
            return _error(exc, 409 if exc.code is ErrorCode.INVALID_STATE else 400)
        except RemoteError as exc:
            return _error(exc, 502)

    # -- pages ---------------------------------------------------------------------------

    async def index(self, _request: web.Request) -> web.StreamResponse:
        return self._static_file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._static_file(request.match_info["name"])

    def _static_file(self, name: str) -> web.StreamResponse:
        suffix = name[name.rfind("."):] if "." in name else ""
        if "/" in name or name.startswith(".") or suffix not in STATIC_TYPES:
            raise web.HTTPNotFound()
        resource = resources.files("parley.web").joinpath(name)
        if not resource.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=resource.read_bytes(), content_type=STATIC_TYPES[suffix],
            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                     "Content-Security-Policy": "default-src 'self'; img-src 'self' data:;"
                     " media-src 'self' blob: mediastream:; connect-src 'self';"
                     " style-src 'self'; script-src 'self'; frame-ancestors 'none'",
                     "Referrer-Policy": "no-referrer"})

    # -- API -----------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            data = parse_json(await request.read(), max_bytes=64 * 1024, what="request body")
        except RemoteError as exc:  # the caller of this API is at fault, not a peer
            raise LocalError(exc.message, code=exc.code) from None
        if not isinstance(data, dict):
            raise LocalError("the request body must be a JSON object", code=ErrorCode.BAD_MESSAGE)
        return data

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(self.terminal.status())

    async def peer(self, request: web.Request) -> web.Response:
        party = request.match_info["party"]
        return web.json_response({"party": party,
                                  "devices": await self.terminal.peers.describe(party)})

    async def verify(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        target = body.get("target")
        number = body.get("safety_number")
        if not isinstance(target, str) or not (number is None or isinstance(number, str)):
            raise LocalError("give target (a party or party/device) and optionally"
                             " safety_number", code=ErrorCode.BAD_MESSAGE)
        device = await self.terminal.peers.verify(target, number, now_ms())
        self.terminal.notify_verified(device.device_id)
        return web.json_response({"verified": device.device_id,
                                  "fingerprint": device.fingerprint})

    async def call(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        target = body.get("target")
        media = body.get("media", "video")
        if not isinstance(target, str) or media not in ("video", "audio"):
            raise LocalError("give target (a party) and media ('video' or 'audio')",
                             code=ErrorCode.BAD_MESSAGE)
        info = await self.terminal.place_call(target, MediaKind(media))
        return web.json_response(info.to_json())

    async def call_info(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        info = self.terminal.book.info(call_id).to_json()
        info["stats"] = await self.terminal.call_stats(call_id)
        return web.json_response(info)

    async def call_op(self, request: web.Request) -> web.Response:
        call_id, op = request.match_info["call_id"], request.match_info["op"]
        if op == "accept":
            info = self.terminal.accept(call_id)
        elif op == "decline":
            info = self.terminal.decline(call_id)
        elif op == "hangup":
            info = self.terminal.hangup(call_id)
        elif op == "media":
            body = await self._body(request)
            audio, video = body.get("audio"), body.get("video")
            if not isinstance(audio, bool) or not isinstance(video, bool):
                raise LocalError("give audio and video as true or false",
                                 code=ErrorCode.BAD_MESSAGE)
            info = self.terminal.set_media(call_id, audio=audio, video=video)
        else:
            raise web.HTTPNotFound()
        return web.json_response(info.to_json())

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=256 * 1024)
        await ws.prepare(request)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

        def listener(event: dict[str, Any]) -> None:
            if queue.full():
                queue.get_nowait()  # drop the oldest; the snapshot below repairs the view
            queue.put_nowait(event)

        unsubscribe = self.terminal.subscribe(listener)
        await ws.send_json({"t": "status", "status": self.terminal.status()})

        async def pump() -> None:
            while True:
                await ws.send_json(await queue.get())

        pump_task = asyncio.ensure_future(pump())
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                    handler = self.extra_ws_handlers.get(data.get("t")) \
                        if isinstance(data, dict) else None
                    if handler is None:
                        raise LocalError("unknown message", code=ErrorCode.UNKNOWN_TYPE)
                    await handler(data)
                except (ValueError, ParleyError) as exc:
                    await ws.send_json({"t": "error", "message": str(exc)})
        finally:
            pump_task.cancel()
            unsubscribe()
        return ws
