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

Each open ``/api/events`` WebSocket is a `Page`: it receives every terminal
event, and may send typed messages back (``{"t": ...}``) to handlers that other
parts register in `page_handlers` -- browser media (terminal/browser.py) does
its signaling with the page this way, and learns through `page_closed` when
the page that holds a call's peer connection goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import itertools
import logging
import secrets
import unicodedata
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import WSCloseCode, WSMsgType, web

from parley.clock import now_ms
from parley.core.call import MediaKind
from parley.core.encoding import canonical_json
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.messages import MAX_FILE
from parley.core.schema import parse_json
from parley.core.trust import Trust, party_trust, party_warning
from parley.terminal.app import Terminal

log = logging.getLogger("parley.control")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_PAGE_MESSAGE = 128 * 1024  # an SDP (32 KiB at most) with room to spare
PAGE_QUEUE = 1000
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
                ".svg": "image/svg+xml", ".png": "image/png"}


def _int_query(request: web.Request, name: str, default: int | None, lo: int, hi: int
               ) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LocalError(f"{name} must be a whole number", code=ErrorCode.BAD_MESSAGE) from None
    if not lo <= value <= hi:
        raise LocalError(f"{name} must be from {lo} to {hi}", code=ErrorCode.BAD_MESSAGE)
    return value


def _error(exc: ParleyError, status: int = 400) -> web.Response:
    return web.json_response({"error": exc.as_dict()}, status=status)


def safety_qr(me: str, peer: str, number: str) -> str:
    """The safety number as a QR code (an SVG data URI), drawn here: the page has no QR code.

    It names both devices, so a code scanned at the wrong pair of terminals
    does not look like a match.
    """
    import segno

    first, second = sorted((me, peer))
    text = f"parley-safety:v1:{first}:{second}:{number.replace(' ', '')}"
    return str(segno.make(text, error="m").svg_data_uri(scale=6, border=4, dark="#000",
                                                       light="#fff"))


class Page:
    """One open events WebSocket: a browser tab, or the demo and CLI following events."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.closed = False
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=PAGE_QUEUE)

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        if self._queue.full():
            # A page this far behind is stuck; the status snapshot it gets when it
            # reconnects repairs its view.
            self._queue.get_nowait()
        self._queue.put_nowait(message)

    async def next(self) -> dict[str, Any]:
        return await self._queue.get()

    def __repr__(self) -> str:
        return f"<page {self.number}>"


PageHandler = Callable[[Page, dict[str, Any]], Awaitable[None]]


class ControlServer:
    def __init__(self, terminal: Terminal, host: str = "127.0.0.1", port: int = 0) -> None:
        self.terminal = terminal
        self.host, self.port = host, port
        self.token = secrets.token_urlsafe(24)
        self.app = web.Application(middlewares=[self._guard], client_max_size=256 * 1024)
        self.page_handlers: dict[str, PageHandler] = {}
        self.page_closed: list[Callable[[Page], None]] = []
        self._page_numbers = itertools.count(1)
        self._sockets: set[web.WebSocketResponse] = set()
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/static/{name}", self.static),
            web.get("/api/status", self.status),
            web.get("/api/peers/{party}", self.peer),
            web.post("/api/verify", self.verify),
            web.post("/api/call", self.call),
            web.get("/api/calls/{call_id}", self.call_info),
            web.post("/api/calls/{call_id}/{op}", self.call_op),
            web.get("/api/messages", self.messages),
            web.post("/api/messages", self.send_message),
            web.post("/api/messages/file", self.send_file),
            web.post("/api/messages/read", self.read_messages),
            web.get("/api/messages/search", self.search_messages),
            web.get("/api/files/{msg_id}", self.download),
            web.get("/api/lines", self.lines),
            web.get("/api/schedule", self.schedule),
            web.post("/api/schedule", self.schedule_request),
            web.post("/api/schedule/{talk_id}/{op}", self.schedule_act),
            web.get("/api/schedule.ics", self.schedule_ics),
            web.post("/api/schedule/import", self.schedule_import),
            web.post("/api/linetest", self.run_linetest),
            web.get("/api/alarms", self.alarms),
            web.post("/api/alarms/ack", self.acknowledge_alarms),
            web.get("/api/record", self.record),
            web.post("/api/record/note", self.record_note),
            web.post("/api/record/exchange", self.record_exchange),
            web.get("/api/record/export", self.record_export),
            web.get("/api/statements", self.statements),
            web.post("/api/statements", self.statement_draft),
            web.get("/api/statements/{statement_id}", self.statement),
            web.post("/api/statements/{statement_id}/edit", self.statement_edit),
            web.post("/api/statements/{statement_id}/sign", self.statement_sign),
            web.get("/api/statements/{statement_id}/bundle", self.statement_bundle),
            web.get("/api/statements/{statement_id}/pdf", self.statement_pdf),
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
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise LocalError(f"the UI port {self.port} on {self.host} is in use (another"
                                 " terminal?)", code=ErrorCode.BAD_CONFIG,
                                 hint="stop the other process, or choose another --ui-port"
                                      " (0: any free port)") from None
            raise LocalError(f"cannot serve the UI on {self.host}:{self.port}:"
                             f" {exc.strerror}", code=ErrorCode.BAD_CONFIG,
                             hint="check --ui-port") from None
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self.terminal.store.write_control({"url": self.origin, "token": self.token})

    async def stop(self) -> None:
        self.terminal.store.remove_control()
        # Open pages would otherwise hold the shutdown until the server gives up on them.
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"terminal stopping")
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
        devices = await self.terminal.peers.describe(party)
        for device in devices:
            device["safety_qr"] = safety_qr(self.terminal.device_id, device["device"],
                                            device["safety_number"])
        trust = party_trust(Trust(d["trust"]) for d in devices)
        display, zone = self.terminal.link.principals.get(party, (party, ""))
        # The server's words: shown as a name, never as a mark or a direction override.
        display = "".join(ch for ch in display if unicodedata.category(ch)[0] not in "CZ"
                          or ch == " ")[:100].strip() or party
        return web.json_response({"party": party, "trust": trust,
                                  "warning": party_warning(party, trust), "devices": devices,
                                  "display": display, "timezone": _known_zone(zone)})

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

    async def messages(self, request: web.Request) -> web.Response:
        party = request.query.get("party") or None
        limit = _int_query(request, "limit", 200, 1, 1000) or 200
        before = _int_query(request, "before", None, 1, 2**62)
        messenger = self.terminal.messages
        return web.json_response({"messages": messenger.conversation(party, limit, before),
                                  "unread": messenger.unread()})

    async def send_message(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        to, text = body.get("to"), body.get("text")
        if not isinstance(to, str) or not isinstance(text, str):
            raise LocalError("give to (a party) and text", code=ErrorCode.BAD_MESSAGE)
        return web.json_response(await self.terminal.messages.send_text(to, text))

    async def send_file(self, request: web.Request) -> web.Response:
        to, name = request.query.get("to"), request.query.get("name")
        if not to or not name:
            raise LocalError("give ?to=PARTY&name=FILENAME, and the file as the body",
                             code=ErrorCode.BAD_MESSAGE)
        data = bytearray()
        async for block in request.content.iter_chunked(1 << 20):
            data += block
            if len(data) > MAX_FILE:
                raise LocalError(f"a file may be {MAX_FILE / 1e6:.0f} MB at most",
                                 code=ErrorCode.TOO_LARGE)
        kind = request.query.get("type") or request.content_type or "application/octet-stream"
        return web.json_response(await self.terminal.messages.send_file(
            to, bytes(data), name, kind, request.query.get("caption", "")))

    async def read_messages(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        party, upto = body.get("party"), body.get("upto")
        if not isinstance(party, str):
            raise LocalError("give party", code=ErrorCode.BAD_MESSAGE)
        if upto is not None and (type(upto) is not int or upto < 0):
            raise LocalError("upto is the order of the last message read (a whole number)",
                             code=ErrorCode.BAD_MESSAGE)
        return web.json_response({"read": self.terminal.messages.mark_read(party, upto)})

    async def search_messages(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "")
        if len(query) > 500:
            raise LocalError("a search is 500 characters at most", code=ErrorCode.TOO_LARGE)
        return web.json_response({"messages": self.terminal.messages.search(query)})

    async def download(self, request: web.Request) -> web.StreamResponse:
        path, message = self.terminal.messages.file(request.match_info["msg_id"])
        name = message.file_name or "file"
        # Plain ASCII for every browser, and the name as it was (RFC 6266 / 5987) for
        # those that read filename*: never a quote or a line break of the sender's.
        plain = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._- ") else "_"
                        for ch in name) or "file"
        return web.FileResponse(path, headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f"attachment; filename=\"{plain}\";"
                                   f" filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})

    async def lines(self, request: web.Request) -> web.Response:
        """This site's lines as this terminal sees them (``refresh``: ask the server now)."""
        tester = self.terminal.linetests
        if request.query.get("refresh") in ("1", "true", "yes") \
                and self.terminal.link.connected.is_set():
            try:
                await tester.check_server()
            except ParleyError as exc:
                log.info("could not ask the server about the lines: %s", exc)
        return web.json_response({"test_set": self.terminal.book.test_set,
                                  "lines": tester.view()})

    async def schedule(self, _request: web.Request) -> web.Response:
        talks = self.terminal.talks
        if self.terminal.link.connected.is_set():
            with contextlib.suppress(ParleyError):
                await talks.learn_zones()
        parties = [self.terminal.party, *self.terminal.link.peers]
        return web.json_response({"talks": talks.all(),
                                  "zones": [talks.zone_of(p) for p in parties]})

    async def schedule_request(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        party, title, at = body.get("party"), body.get("title"), body.get("at")
        duration, media = body.get("duration_s", 3600), body.get("media", "video")
        agenda, note = body.get("agenda", ""), body.get("note", "")
        if not (isinstance(party, str) and isinstance(title, str) and title.strip()
                and (at is None or isinstance(at, str)) and type(duration) is int
                and media in ("video", "audio") and isinstance(agenda, str)
                and isinstance(note, str)):
            raise LocalError("give party, title, at ('2021-12-07 15:00 UTC', or null: as"
                             " soon as possible), duration_s, media ('video' or 'audio')",
                             code=ErrorCode.INVALID_INPUT)
        return web.json_response(await self.terminal.talks.request(
            party, title=title.strip(), at=at, duration_s=duration, media=media,
            agenda=agenda, note=note))

    async def schedule_act(self, request: web.Request) -> web.Response:
        body = await self._body(request) if request.can_read_body else {}
        at, duration, note = body.get("at"), body.get("duration_s"), body.get("note", "")
        if not ((at is None or isinstance(at, str)) and (duration is None or type(duration)
                                                         is int) and isinstance(note, str)):
            raise LocalError("at is a time, duration_s seconds, note text",
                             code=ErrorCode.INVALID_INPUT)
        return web.json_response(await self.terminal.talks.act(
            request.match_info["op"], request.match_info["talk_id"], at=at,
            duration_s=duration, note=note))

    async def schedule_ics(self, request: web.Request) -> web.Response:
        data = self.terminal.talks.export(request.query.get("talk") or None)
        return web.Response(body=data, content_type="text/calendar", headers={
            "Content-Disposition": "attachment; filename=\"parley-talks.ics\""})

    async def schedule_import(self, request: web.Request) -> web.Response:
        data = await request.read()
        if len(data) > 256 * 1024:
            raise LocalError("a calendar file of at most 256 KiB", code=ErrorCode.TOO_LARGE)
        return web.json_response({"talks": await self.terminal.talks.import_ics(data)})

    # -- the record and joint statements ------------------------------------------------

    async def record(self, request: web.Request) -> web.Response:
        limit = _int_query(request, "limit", 200, 1, 100_000)
        kind = request.query.get("type")
        rec = self.terminal.record
        return web.json_response({"record": rec.state(), "entries": rec.view(
            limit or 200, {kind} if kind else None)})

    async def record_note(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        text, by = body.get("text"), body.get("by")
        if not isinstance(text, str) or not (by is None or isinstance(by, str)):
            raise LocalError("give the note's text (and who writes it, 'by')",
                             code=ErrorCode.INVALID_INPUT)
        return web.json_response(self.terminal.record.note(text, (by or "")[:80] or None))

    async def record_exchange(self, _request: web.Request) -> web.Response:
        sent = await self.terminal.record.exchange()
        return web.json_response({"sent_to": sent, "record": self.terminal.record.state()})

    async def record_export(self, request: web.Request) -> web.Response:
        kind = request.query.get("type")
        everything = request.query.get("all") == "1"
        last = None if everything else _int_query(request, "last", 100, 1, 10_000_000)
        bundle = self.terminal.record.export(last=last, types={kind} if kind else None)
        return _bundle_response(bundle, "parley-record.json")

    async def statements(self, _request: web.Request) -> web.Response:
        return web.json_response({"statements": self.terminal.statements.all()})

    async def statement(self, request: web.Request) -> web.Response:
        return web.json_response(self.terminal.statements.get(
            request.match_info["statement_id"]))

    async def statement_draft(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        party, title, text = body.get("party"), body.get("title"), body.get("text")
        if not (isinstance(party, str) and isinstance(title, str) and isinstance(text, str)):
            raise LocalError("give party, title and text", code=ErrorCode.INVALID_INPUT)
        return web.json_response(await self.terminal.statements.draft(
            party, title=title, text=text, attachments=_attachments(body)))

    async def statement_edit(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        text, title = body.get("text"), body.get("title")
        if not isinstance(text, str) or not (title is None or isinstance(title, str)):
            raise LocalError("give the edited text (and title)", code=ErrorCode.INVALID_INPUT)
        return web.json_response(await self.terminal.statements.edit(
            request.match_info["statement_id"], text=text, title=title,
            attachments=_attachments(body)))

    async def statement_sign(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        version, sha = body.get("version"), body.get("sha256")
        if type(version) is not int or not isinstance(sha, str):
            raise LocalError("give the version shown and its sha256",
                             code=ErrorCode.INVALID_INPUT,
                             hint="only the version shown is signed: name it and its hash")
        return web.json_response(await self.terminal.statements.sign(
            request.match_info["statement_id"], version=version, sha256=sha))

    async def statement_bundle(self, request: web.Request) -> web.Response:
        ident = request.match_info["statement_id"]
        paper = request.query.get("paper") == "1"
        return _bundle_response(self.terminal.statements.export(ident, paper=paper),
                                f"parley-statement-{ident}.json")

    async def statement_pdf(self, request: web.Request) -> web.Response:
        ident = request.match_info["statement_id"]
        data = await self.terminal.statements.pdf(ident)
        return web.Response(body=data, content_type="application/pdf", headers={
            "Content-Disposition": f"attachment; filename=\"parley-statement-{ident}.pdf\""})

    async def run_linetest(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        line, callee, duration = body.get("line"), body.get("callee"), body.get("duration_s")
        if not (line is None or isinstance(line, str)) or \
                not (callee is None or isinstance(callee, str)) or \
                not (duration is None or (isinstance(duration, int | float)
                                          and not isinstance(duration, bool)
                                          and 0 < duration <= 600)):
            raise LocalError("give line ('A:B'), and optionally callee (party/device) and"
                             " duration_s (0-600)", code=ErrorCode.BAD_MESSAGE)
        result = await self.terminal.linetests.run(line, callee=callee, duration_s=duration)
        return web.json_response(result)

    async def alarms(self, request: web.Request) -> web.Response:
        everything = request.query.get("all") in ("1", "true", "yes")
        records = self.terminal.store.alarms(include_acknowledged=everything)
        return web.json_response({"alarms": [a.to_json() for a in records]})

    async def acknowledge_alarms(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ids, note = body.get("ids"), body.get("note", "")
        if body.get("all") is True and ids is None:
            chosen = None
        elif isinstance(ids, list) and ids and all(type(i) is int for i in ids):
            chosen = list(ids)
        else:
            raise LocalError("give ids (a list of alarm numbers) or all: true",
                             code=ErrorCode.BAD_MESSAGE)
        if not isinstance(note, str) or len(note) > 500:
            raise LocalError("note must be text of at most 500 characters",
                             code=ErrorCode.BAD_MESSAGE)
        done = self.terminal.acknowledge_alarms(chosen, note)
        return web.json_response({"acknowledged": done})

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_PAGE_MESSAGE)
        await ws.prepare(request)
        self._sockets.add(ws)
        page = Page(next(self._page_numbers))
        unsubscribe = self.terminal.subscribe(page.send)

        async def pump() -> None:
            with contextlib.suppress(ConnectionError):  # the page went away: the loop below ends
                while True:
                    await ws.send_json(await page.next())

        pump_task: asyncio.Future[None] | None = None
        try:
            await ws.send_json({"t": "status", "status": self.terminal.status()})
            pump_task = asyncio.ensure_future(pump())
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._page_message(page, msg.data)
        except ConnectionError:
            log.info("%r went away", page)
        finally:
            self._sockets.discard(ws)
            page.closed = True
            if pump_task is not None:
                pump_task.cancel()
            unsubscribe()
            for hook in list(self.page_closed):
                try:
                    hook(page)
                except Exception:
                    log.exception("a page-closed hook failed")
        return ws

    async def _page_message(self, page: Page, raw: str) -> None:
        try:
            data = parse_json(raw, max_bytes=MAX_PAGE_MESSAGE, what="page message")
            kind = data.get("t") if isinstance(data, dict) else None
            handler = self.page_handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise RemoteError(f"unknown page message {kind!r}", code=ErrorCode.UNKNOWN_TYPE)
            await handler(page, data)
        except ParleyError as exc:
            log.warning("%r sent a bad message: %s", page, exc)
            page.send({"t": "error", "error": exc.as_dict()})


def _bundle_response(bundle: dict[str, Any], name: str) -> web.Response:
    return web.Response(body=canonical_json(bundle) + b"\n", content_type="application/json",
                        headers={"Content-Disposition": f"attachment; filename=\"{name}\""})


def _attachments(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Attachments named by hash: [{"name", "sha256", "size"}] (checked by core.statement)."""
    items = body.get("attachments")
    if items is None:
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise LocalError("attachments: a list of {name, sha256, size}",
                         code=ErrorCode.INVALID_INPUT)
    return items


def _known_zone(name: str) -> str | None:
    """An IANA time zone this machine knows (the page shows its local time), else None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not name or len(name) > 64:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name
