"""The line server's composition root: HTTP + WebSocket over aiohttp, and nothing more.

What the server decides lives in the pure relay (`core.relay`): who may
connect (`Admission`), who logs in, what each frame means, rates, quotas,
routing, mailbox paging and presence (`Relay`). This module moves bytes
between sockets and those objects: `Listener` admits each TCP connection
before aiohttp reads it, each WebSocket becomes a relay `Session` whose
`Port` is a `Connection` here, every message goes to `Relay.receive` with
the time, and a ticker calls `Relay.tick` a few times a second. Enrollment
(``POST /v1/enroll``) spends a code in the store; the status page, ``/healthz``
and ``/metrics`` (Prometheus, from the official client) read what the relay
counts.

Nothing is written to a socket directly: frames go to the connection's
`Outbox`, which writes what a turn of the event loop produced for that socket
together (in batches, where the connection negotiated them; see `core.wire`),
after committing the store's open group, so that nothing leaves that speaks
of what is not on disk yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from parley.clock import now_ms
from parley.core import linetest, schema, wire
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError
from parley.core.relay.admission import Admission
from parley.core.relay.limits import Limits
from parley.core.relay.lines import LineBoard
from parley.core.relay.relay import Relay, Session
from parley.core.turn import TurnConfig
from parley.files import DataLock, check_private, private_dir, write_private_file
from parley.outbox import Outbox
from parley.server.alerts import Alerter, load_alert_key
from parley.server.cluster import Cluster
from parley.server.listener import Guard, Listener
from parley.server.status import line_summaries, render_status
from parley.server.store import open_store

log = logging.getLogger("parley.server")

MAX_WS_MESSAGE = 1024 * 1024  # messages above this are cut off by aiohttp (close 1009)
TICK_S = 0.25
CLOSE_FLUSH_S = 2.0  # how long a closing connection may take to write its last frames
LINES_TICK_MS = 1000  # how often the lines' states are looked at (a result aging out)
LINETEST_SWEEP_MS = 3_600_000


@dataclass
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8800
    public_url: str | None = None  # the origin devices sign in their login; default http://host:port
    limits: Limits = field(default_factory=Limits)
    thresholds: linetest.Thresholds = field(default_factory=linetest.Thresholds)
    # A line whose result has no interval of its own (a test run by hand) is red this
    # long after twice this.
    linetest_interval_s: int = linetest.DEFAULT_INTERVAL_S
    alert_webhooks: list[str] = field(default_factory=list)
    # The status page, /lines.json and /metrics need this token, as ?token= or a bearer
    # header. None: open on loopback; on any other address one is made (admin.token).
    admin_token: str | None = None
    turn: TurnConfig | None = None  # TURN credentials issued to devices (core.turn)
    # None or "sqlite:": server.db in data_dir; "postgresql://...": a shared database.
    database: str | None = None
    # On PostgreSQL: while any other node serves the database, wait for them to stop (and
    # take over) instead of serving beside them.
    standby: bool = False

    @property
    def loopback(self) -> bool:
        """Reached from this machine only: it listens on loopback and no public address is
        given (a proxy in front, on this machine, would make it reachable from elsewhere)."""
        public = urlsplit(self.public_url).hostname if self.public_url else None
        return self.host in _LOOPBACK and (public is None or public in _LOOPBACK)

    @property
    def origin(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class Connection:
    """A WebSocket as the relay's `Port`: frames into its outbox, closes when asked."""

    def __init__(self, ws: web.WebSocketResponse, outbox: Outbox,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Future[Any]],
                 guard: Guard | None, transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.outbox = outbox
        self._spawn = spawn
        self.guard = guard  # its TCP connection, until it logs in (then None)
        self._transport = transport
        self.closing: asyncio.Future[Any] | None = None

    def put(self, frame: str) -> None:
        self.outbox.put(frame)

    @property
    def full(self) -> bool:
        return self.outbox.full

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = self._spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self.outbox.flush(), CLOSE_FLUSH_S)  # the error first
        self.outbox.close()
        if self.guard is not None and code in _HELD:
            # Not logged in: answered once, now held unread (see server.listener), so that
            # a flood of junk cannot come straight back.
            self.guard.hold()
            return
        await self._close_or_cut(code, reason[:120])

    def abort(self, code: int, reason: str) -> None:
        """Close without writing what is queued (it may speak of what was never stored)."""
        self.outbox.close()
        if self.closing is None:
            self.closing = self._spawn(self._close_or_cut(code, reason))

    def cut(self) -> None:
        """Drop the connection now: a peer that does not read would never see a close."""
        self.outbox.close()
        if self._transport is not None:
            self._transport.abort()

    async def _close_or_cut(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()),
                                   CLOSE_FLUSH_S)
        except (TimeoutError, ConnectionError):
            self.cut()


class LineServer:
    """Owns the store, the relay and the listener. One per process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        private_dir(config.data_dir)  # its keys and token, whichever store it uses
        self.store = open_store(config.database, config.data_dir, node=True,
                                standby=config.standby)
        self._store_closed = False
        self.started_ms = now_ms()
        self.lines = LineBoard(self.store, config.thresholds, config.linetest_interval_s)
        self.relay = Relay(self.store, config.limits, config.origin, self.started_ms,
                           lines=self.lines, turn=config.turn)
        # Other nodes on the same (PostgreSQL) database: see server.cluster.
        self.cluster = Cluster(self.store, self.relay, self.lines, self._commit_soon) \
            if self.store.backend.name == "postgresql" else None
        self._rejoining: asyncio.Future[Any] | None = None
        self.alerter = Alerter(self.store, load_alert_key(config.data_dir),
                               config.alert_webhooks, config.origin,
                               active=lambda: self.relay.housekeeping)
        self._alerts_task: asyncio.Task[None] | None = None
        self._next_lines_ms = 0
        self._next_linetest_sweep_ms = 0
        self.admission: Admission[Guard] = Admission(config.limits)
        self._tasks: set[asyncio.Future[Any]] = set()
        self._commit_scheduled = False
        self._committing: asyncio.Future[bool] | None = None  # a COMMIT in flight
        self._connections: set[Connection] = set()
        self._store_shut = False
        self._quota_stale = False  # a failed commit could not count the quotas again
        self._after: asyncio.Future[bool] | None = None  # ...and the group after it
        self._ticker: asyncio.Task[None] | None = None
        self.listener: Listener | None = None  # set by start_server
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Metrics(self))
        self.admin_token = config.admin_token or (
            None if config.loopback else load_admin_token(config.data_dir))
        if self.admin_token is not None and len(self.admin_token) < MIN_ADMIN_TOKEN:
            raise LocalError(f"the admin token is too short ({len(self.admin_token)}"
                             f" characters; at least {MIN_ADMIN_TOKEN})",
                             code=ErrorCode.BAD_CONFIG,
                             hint=f"delete {config.data_dir / ADMIN_TOKEN_FILE} to have a new"
                                  " one made, or give a longer --admin-token")
        self.app = web.Application(client_max_size=64 * 1024,
                                   middlewares=[self._admin_only])
        self.app.add_routes([
            web.get("/", self.status_page),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
            web.get("/lines.json", self.lines_json),
            web.post("/v1/enroll", self.enroll),
            web.get("/v1/ws", self.websocket),
        ])
        self.app.on_startup.append(self._start_ticker)
        self.app.on_shutdown.append(self._close_sessions)
        self.app.on_cleanup.append(lambda _app: self._close_store())

    @property
    def online(self) -> dict[str, list[Session]]:
        return self.relay.online

    async def _start_ticker(self, _app: web.Application) -> None:
        if self.cluster is not None:
            await self.cluster.start()
        self._ticker = asyncio.ensure_future(self._tick())
        self._alerts_task = asyncio.ensure_future(self.alerter.run())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self._committing is not None:  # what follows would wait for it, holding the loop
                await asyncio.shield(self._committing)
            try:
                if self._quota_stale:
                    self.relay.reload_quota()
                    self._quota_stale = False
                self.relay.tick(now_ms())
            except Exception:
                log.exception("the relay's timers failed; they run again shortly")
            try:
                self._tick_lines(now_ms())
            except Exception:
                log.exception("the lines' states could not be updated; tried again shortly")
            if self.cluster is not None:
                self._tick_cluster(now_ms())
            if self.store.group_open or self.relay.has_writes or self.store.lost:
                try:
                    self._make_durable()
                except Exception:  # (it handles its own failures; the ticker must go on)
                    log.exception("the mailbox could not be committed; tried again shortly")

    def _tick_cluster(self, now: int) -> None:
        cluster = self.cluster
        assert cluster is not None
        if self._rejoining is not None and not self._rejoining.done():
            return
        if cluster.broken:
            # What it knew of the other nodes may be stale, and they may have forgotten
            # its sessions: they are closed (the terminals fail over or come back) and
            # the node joins again, as if it had just started.
            log.error("this node lost its connection to %s, or a commit failed: closing"
                      " its sessions and joining the other nodes again", self.store.where)
            # What its sessions were told goes out only once committed (under the old id;
            # failing, they are cut off instead).
            self._make_durable_now()
            self.relay.close_all(WSCloseCode.GOING_AWAY, "the server lost its database;"
                                 " connect again")
            self.relay.housekeeping = False  # until it is the leader again
            cluster.leave()  # (a new node id at once: logins from now on are under it)
            self._rejoining = self._background(self._rejoin())
            return
        try:
            cluster.tick(now)
        except self.store.Error as exc:
            log.warning("could not reach the other nodes through the database: %s", exc)

    async def _rejoin(self) -> None:
        assert self.cluster is not None
        try:
            self.store.check()  # connects again (its own locks, a new node id)
            await self.cluster.rejoin()
        except Exception as exc:
            log.warning("not joined again yet (%s); trying again shortly", exc)
            await asyncio.sleep(1)

    def _tick_lines(self, now: int) -> None:
        if now < self._next_lines_ms or not self.relay.housekeeping:
            return  # (of several nodes, one judges the lines and sends the alerts)
        self._next_lines_ms = now + LINES_TICK_MS
        changes = self.lines.tick(now)
        if changes:
            # The alerts queued and the changes marked announced together: a crash between
            # the two neither loses an alert nor sends one twice.
            self._make_durable_now()
            with self.store.transaction():
                self.alerter.announce(changes)
                self.lines.mark(changes, now)
            self.alerter.wake()
        if now >= self._next_linetest_sweep_ms:
            self._next_linetest_sweep_ms = now + LINETEST_SWEEP_MS
            self.lines.forget_old(now)

    async def _close_store(self) -> None:
        if self._store_closed:  # a runner cleaned up twice
            return
        self._store_closed = True
        for task in (self._ticker, self._alerts_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self.cluster is not None:
            await self.cluster.stop()
        self._make_durable_now()
        self._store_shut = True  # (a commit's callback coming late does nothing more)
        self.store.close()

    async def _close_sessions(self, _app: web.Application) -> None:
        if self.listener is not None:  # no new connections
            await self.listener.stop()
        # Every connection: receiving devices, send-only ones and those not logged in.
        self.relay.close_all(WSCloseCode.GOING_AWAY, "server shutting down")
        pending = [t for t in list(self._tasks) if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_FLUSH_S + 1)

    # -- HTTP ---------------------------------------------------------------------

    @web.middleware
    async def _admin_only(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """The pages that show who is on the server, to its operator only (when not on
        loopback, or when a token is set)."""
        if request.path in _ADMIN_PAGES and not self._is_admin(request):
            return web.Response(status=401, text="this page needs the server's admin"
                                    " token (?token=... or Authorization: Bearer ...):"
                                    " 'parley server admin-token' prints it\n")
        response: web.StreamResponse = await handler(request)
        return response

    def _is_admin(self, request: web.Request) -> bool:
        given = request.query.get("token") or request.headers.get(
            "Authorization", "").removeprefix("Bearer ")
        return self.admin_token is None or hmac.compare_digest(given.encode(),
                                                               self.admin_token.encode())

    async def healthz(self, request: web.Request) -> web.Response:
        if not self._is_admin(request):
            return web.json_response({"ok": True})  # nothing of who is connected
        return web.json_response({"ok": True, "online": len(self.relay.online)})

    async def readyz(self, _request: web.Request) -> web.Response:
        """For a load balancer: 200 while this server's database answers a read of its
        devices, 503 (with why) when it does not (closed, missing, locked, corrupt).
        (Shutting down, it stops listening first: the connection is refused.)"""
        why = ""
        if self._store_closed:
            why = "shutting down"
        else:
            try:
                self.store.check()
            except self.store.Error as exc:
                why = f"the store does not answer: {exc}"
        if why:
            return web.json_response({"ready": False, "why": why}, status=503)
        return web.json_response({"ready": True})

    async def status_page(self, _request: web.Request) -> web.Response:
        html = render_status(self.store, self.lines,
                             set(self.relay.online) | set(self.relay.elsewhere),
                             self.relay.counters.__dict__, now_ms() - self.started_ms, now_ms(),
                             node=self.cluster.describe() if self.cluster else "")
        return web.Response(text=html, content_type="text/html")

    async def lines_json(self, _request: web.Request) -> web.Response:
        """The status page's lines, for tools: state, reasons, last result's figures."""
        return web.json_response({"lines": line_summaries(self.lines, now_ms())})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def enroll(self, request: web.Request) -> web.Response:
        try:
            try:
                raw = await asyncio.wait_for(request.read(), self.config.limits.read_timeout)
            except TimeoutError:
                raise RemoteError("the enrollment request took too long to arrive",
                                  code=ErrorCode.BAD_MESSAGE) from None
            data = schema.parse_json(raw, max_bytes=16 * 1024, what="enrollment request")
            schema.validate(data, wire.ENROLL_REQUEST, what="enrollment request")
            self._make_durable_now()  # the mailbox group first, where a failed commit is handled
            try:
                public = self.store.enroll(data["code"], data["device"], data["keys"], now_ms(),
                                           source=str(request.remote))
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
        self.relay.directory_changed()
        return web.json_response({"device": public.device_id, "party": public.party,
                                  "fingerprint": public.fingerprint})

    # -- WebSocket ------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0,
                                   protocols=(wire.BATCH_SUBPROTOCOL,))
        await ws.prepare(request)
        batched = ws.ws_protocol == wire.BATCH_SUBPROTOCOL
        guard = self._listener_guard(request)
        conn = Connection(ws, Outbox(ws.send_str, batched=batched,
                                     before_write=self._make_durable), self._background, guard,
                          request.transport)
        relay = self.relay
        session = relay.connect(conn, str(request.remote), now_ms(), batched=batched)
        self._connections.add(conn)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        relay.receive(session, msg.data, now_ms())
                    except self.store.Error as exc:
                        if self.store.group_open or relay.has_writes:
                            self._commit_failed(exc)  # the turn's group is lost with it
                        else:  # a read: this session's, alone
                            log.warning("closing %s: the store failed (%s)", session.who, exc)
                            conn.abort(WSCloseCode.INTERNAL_ERROR, "server storage failure")
                        break
                    if conn.guard is not None and session.device is not None:
                        conn.guard.authenticated()
                        conn.guard = None
                    if self.store.group_open or relay.has_writes:
                        self._commit_soon()
                    while session.congested:  # a recipient that does not keep up slows us
                        await self._wait_for_reader(session.congested.pop())
                    pause = relay.pause_for(session, now_ms())
                    if pause > 0:  # over its rate: read nothing until it may send again
                        await asyncio.sleep(pause)
                elif msg.type == WSMsgType.BINARY:
                    relay.binary(session, now_ms())
                elif msg.type == WSMsgType.ERROR:
                    log.info("websocket from %s closed with error: %s", session.who,
                             ws.exception())
                if session.closed:
                    break
                if conn.outbox.full:  # a client that does not read its replies waits
                    await conn.outbox.room()
        finally:
            self._connections.discard(conn)
            relay.disconnect(session)
            if conn.closing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.closing)
            conn.outbox.close()
            if conn.guard is not None and conn.guard.held:
                # Returning would have aiohttp send a close frame: stay until it is let go.
                await conn.guard.gone.wait()
        return ws

    async def _wait_for_reader(self, port: Any) -> None:
        """Wait (a while) for a recipient's outbox to drain; one that never reads is closed."""
        assert isinstance(port, Connection)
        try:
            await asyncio.wait_for(port.outbox.room(), CONGESTED_S)
        except TimeoutError:
            log.warning("dropping a connection that read nothing for %.0f s", CONGESTED_S)
            port.cut()

    def _listener_guard(self, request: web.Request) -> Guard | None:
        listener = self.listener
        return listener.guard(request.transport) if listener is not None else None

    def _commit_soon(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._make_durable)

    def _make_durable(self) -> asyncio.Future[bool] | None:
        """Write and commit the mailbox writes made so far: before any frame leaves, and
        once a turn. None: they are committed; otherwise a future, True once they are,
        False if the commit failed (every connection was cut off with it: nothing that
        waited for it may leave).

        On PostgreSQL the COMMIT itself runs on the store's thread (`commit_group_soon`)
        while this loop goes on reading frames; what they write waits in the relay, to
        be written and committed, together, the moment that COMMIT is over."""
        self._commit_scheduled = False
        if self._lost_meanwhile():
            return _settled(False)
        pending = self.store.group_open or self.relay.has_writes
        if self._committing is not None:  # one at a time: the next follows it
            if not pending:
                return self._committing
            if self._after is None:
                self._after = asyncio.get_running_loop().create_future()
            return self._after
        if not pending:
            return None
        try:
            self.relay.flush()  # the turn's stored envelopes and acks, one statement each
            commit = self.store.commit_group_soon()
        except Exception as exc:
            self._commit_failed(exc)
            return _settled(False)
        if commit is None:
            return None
        self._committing = done = asyncio.get_running_loop().create_future()
        asyncio.wrap_future(commit).add_done_callback(lambda f: self._committed(f, done))
        return done

    def _make_durable_now(self) -> bool:
        """Write and commit the mailbox writes made so far, before returning (for what
        follows with the store: a directory transaction, closing it); False if that
        failed (and every connection was cut off)."""
        self.store.settle()
        if self._lost_meanwhile():
            return False
        if not (self.store.group_open or self.relay.has_writes):
            return True
        try:
            self.relay.flush()
            self.store.commit_group()
        except Exception as exc:
            self._commit_failed(exc)
            return False
        return True

    def _lost_meanwhile(self) -> bool:
        """Did a group committed early, in the middle of a turn, fail where its caller did
        not say so (`ServerStore.lost`)? Then as any failed commit."""
        lost = self.store.take_lost()
        if lost is not None:
            self._commit_failed(lost)
        return lost is not None

    def _committed(self, commit: asyncio.Future[None], done: asyncio.Future[bool]) -> None:
        self._committing = None
        after, self._after = self._after, None
        ok, following = True, None
        try:
            if commit.cancelled() or commit.exception() is not None:
                ok = False
                self._commit_failed(commit.exception() if not commit.cancelled() else None)
            if not self._store_shut:
                following = self._make_durable()  # what was written meanwhile
        finally:  # whatever happened, nobody waits for ever
            done.set_result(ok)
            if after is not None:
                if following is None or not ok:
                    _resolve(after, ok)
                else:
                    following.add_done_callback(lambda f: _resolve(after, f.result()))

    def _commit_failed(self, exc: BaseException | None = None) -> None:
        # Frames may speak of what is now lost ("sent ... stored"): none may leave.
        # Every terminal is cut off and, reconnecting, sends again what was not
        # acknowledged; acks lost with it mean envelopes delivered twice, which
        # terminals drop as replays.
        log.error("could not commit the mailbox; closing every connection",
                  exc_info=exc or True)
        for session in list(self.relay.sessions):
            session.closed = True
        # Every connection, also those the relay let go of whose last frames wait.
        for conn in list(self._connections):
            conn.abort(WSCloseCode.INTERNAL_ERROR, "server storage failure")
        if self.cluster is not None:  # logins and logouts the others were not told of
            self.cluster.lost()
        self.relay.drop_writes()  # what waited to be written after it
        self.lines.forget_cached()  # line tests filed in it
        self.store.take_lost()
        if self._store_shut:
            return
        try:
            self.store.abandon_group()  # (the turn's writes may have failed before it)
            self.relay.reload_quota()  # what the failed group added and removed is undone
        except self.store.Error as again:  # the database is gone: counted once it is back
            log.warning("the mailbox quotas are counted again once the database answers"
                        " (%s)", again)
            self._quota_stale = True

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _resolve(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


def _settled(ok: bool) -> asyncio.Future[bool]:
    future = asyncio.get_running_loop().create_future()
    future.set_result(ok)
    return future


_ADMIN_PAGES = frozenset({"/", "/metrics", "/lines.json"})
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
ADMIN_TOKEN_FILE = "admin.token"
MIN_ADMIN_TOKEN = 16


def load_admin_token(data_dir: Path) -> str:
    """The server's admin token for its own pages, made on first use (0600)."""
    path = data_dir / ADMIN_TOKEN_FILE
    if not path.exists():
        private_dir(data_dir)
        write_private_file(path, secrets.token_urlsafe(24).encode())
    check_private([path], what="the server's admin token", secret=True)
    return path.read_text().strip()


# Connections closed for junk before login, a refused login or not logging in are held,
# not closed (see _close): the error has been sent and read, and what a flood of them
# would cost is a connection each, not a login each. (A terminal whose key is wrong reads
# its error at login, before any close.)
_HELD = frozenset({wire.CloseCode.NOT_LOGGED_IN, wire.CloseCode.LOGIN_TIMEOUT,
                   wire.CloseCode.LOGIN_REFUSED})
CONGESTED_S = 10.0  # a recipient that does not read for this long is closed, not waited for


class _Metrics:
    """The relay's and the admission's counters, read at scrape time (nothing on the hot path)."""

    def __init__(self, server: LineServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        relay, admission, listener = server.relay, server.admission, server.listener
        waiting = relay.quota.waiting()
        gauges = [
            ("devices_online", "Devices with a receiving session.", len(relay.online)),
            ("sessions", "WebSocket sessions, logged in or not.", len(relay.sessions)),
            ("connections", "TCP connections admitted.", admission.connections),
            ("connections_unauthenticated", "Connections not logged in.",
             admission.unauthenticated),
            ("connections_held", "Refused or pushed-out connections held before closing.",
             listener.held if listener else 0),
            ("mailbox_envelopes", "Envelopes stored awaiting delivery.", waiting[0]),
            ("mailbox_bytes", "Bytes stored awaiting delivery.", waiting[1]),
        ]
        counters = [(name, f"Relay: {name.replace('_', ' ')}.", value)
                    for name, value in relay.counters.__dict__.items()] + [
            ("connections_refused", "Connections refused by the connection limits.",
             admission.refused),
            ("connections_evicted", "Connections not logged in, pushed out for newer ones.",
             admission.evicted),
            ("connections_held", "Connections held unread before closing, in all.",
             listener.held_total if listener else 0),
        ]
        gauges.append(("alerts_waiting", "Alert deliveries waiting to be taken.",
                       server.store.alerts_waiting()))
        cluster = server.cluster
        if cluster is not None:
            gauges += [("nodes_serving", "Server nodes serving this database (this one too).",
                        len(cluster.live | {cluster.node})),
                       ("node_leader", "1 if this node judges the lines and sends the alerts.",
                        int(cluster.leader))]
            counters += [("node_events", "Events heard from the nodes (this one too).",
                          cluster.events),
                         ("node_events_refused", "Notifications and events refused: not sealed by a"
                          " node of this line, heard already, or not parsed.",
                          cluster.refused)]
        counters += [
            ("linetests_filed", "Line test results accepted, signed by both ends.",
             server.lines.filed),
            ("alerts_delivered", "Alert webhook deliveries taken (2xx).",
             server.alerter.delivered),
            ("alerts_failed", "Alert webhook delivery attempts that failed.",
             server.alerter.failed),
        ]
        for name, help_, value in gauges:
            yield GaugeMetricFamily(f"parley_{name}", help_, value=value)
        for name, help_, value in counters:
            yield CounterMetricFamily(f"parley_{name}", help_, value=value)
        refused = CounterMetricFamily(
            "parley_linetests_refused", "Line test results refused, by reason"
            " (a forged or one-side-signed result is bad_signature).", labels=["reason"])
        for reason in sorted(set(server.lines.refused) | {"bad_signature"}):
            refused.add_metric([reason], server.lines.refused[reason])
        yield refused
        yield from _line_metrics(server.lines, now_ms())


def _line_metrics(board: LineBoard, now: int) -> Iterator[Metric]:
    """Per line, named as the blackbox exporter names its probes' figures."""
    def family(name: str, help_: str, labels: tuple[str, ...] = ("line",)) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"parley_{name}", help_, labels=list(labels))

    status = family("line_status", "The line's state: 0 green, 1 amber, 2 red.")
    success = family("linetest_success", "1 if the last line test passed (green or amber)"
                                         " and is recent, else 0.")
    duration = family("linetest_duration_seconds", "How long the last line test took.")
    age = family("linetest_age_seconds", "Seconds since the last line test ended.")
    setup = family("linetest_setup_seconds", "Call setup time, each way.", ("line", "direction"))
    loss = family("linetest_loss_ratio", "Packets lost, each way (0-1).", ("line", "direction"))
    jitter = family("linetest_jitter_seconds", "Audio jitter, each way.", ("line", "direction"))
    rtt = family("linetest_rtt_seconds", "Media round-trip time (RTCP).")
    message_rtt = family("linetest_message_rtt_seconds", "Message round trip through the"
                                                         " server's store and forward.")
    for state in board.states(now):
        line = state.line
        status.add_metric([line], linetest.SEVERITY[state.status])
        last = board.last(line)
        # Red covers a result too old as well: only a recent, passing test is a success.
        success.add_metric([line], 1 if last is not None and state.status != linetest.RED
                           else 0)
        if last is None:
            continue
        record = last[0]
        duration.add_metric([line], (record["ended_ms"] - record["started_ms"]) / 1000)
        age.add_metric([line], max(0, now - record["ended_ms"]) / 1000)
        shown = linetest.figures(record)
        for way, figures in shown["ways"].items():
            if figures["setup_ms"] is not None:
                setup.add_metric([line, way], figures["setup_ms"] / 1000)
            loss.add_metric([line, way], figures["loss_pct"] / 100)
            jitter.add_metric([line, way], figures["jitter_ms"] / 1000)
        rtts = [f["rtt_ms"] for f in shown["ways"].values() if f["rtt_ms"] is not None]
        if rtts:
            rtt.add_metric([line], max(rtts) / 1000)
        if shown["message_rtt_ms"] is not None:
            message_rtt.add_metric([line], shown["message_rtt_ms"] / 1000)
    yield from (status, success, duration, age, setup, loss, jitter, rtt, message_rtt)


async def start_server(config: ServerConfig) -> tuple[LineServer, web.AppRunner]:
    """Bind and start serving; with port 0, `config.port` is updated to the real port."""
    server = LineServer(config)
    runner = web.AppRunner(server.app, access_log=None,
                           keepalive_timeout=config.limits.header_timeout)
    await runner.setup()
    assert runner.server is not None
    server.listener = Listener(runner.server, server.admission)
    try:
        config.port = await server.listener.start(config.host, config.port)
    except BaseException:
        await runner.cleanup()
        raise
    server.relay.origin = config.origin  # with port 0, known only now
    log.info("line server listening on %s (data in %s; store %s)", config.origin,
             config.data_dir, server.store.where)
    return server, runner


async def run_server(config: ServerConfig, *, on_ready: Callable[[str], None] | None = None,
                     on_standby: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled (one process per data directory: see `DataLock`); a standby
    says why it waits (`on_standby`) before it serves."""
    with DataLock(config.data_dir, "a line server", secret=False):
        await _serve(config, on_ready, on_standby)


STANDBY_POLL_S = 1.0


async def _serve(config: ServerConfig, on_ready: Callable[[str], None] | None,
                 on_standby: Callable[[str], None] | None = None) -> None:
    _server, runner = await _start_or_stand_by(config, on_standby)
    if on_ready is not None:
        on_ready(f"http://{config.host}:{config.port}")
    try:
        await asyncio.Future()  # until cancelled
    finally:
        await runner.cleanup()


async def _start_or_stand_by(config: ServerConfig, on_standby: Callable[[str], None] | None
                             ) -> tuple[LineServer, web.AppRunner]:
    """Start serving; a --standby node waits while another node serves the database or
    while the database does not answer."""
    waited = False
    while True:
        try:
            started = await start_server(config)
        except LocalError as exc:
            if not config.standby or exc.code not in (ErrorCode.BUSY, ErrorCode.SERVER_ERROR):
                raise
            if not waited:
                log.warning("standby: %s; taking over when it stops", exc.message)
                if on_standby is not None:
                    on_standby(exc.message)
                waited = True
            await asyncio.sleep(STANDBY_POLL_S)
            continue
        if waited:
            log.warning("standby: the other node is gone; this one serves the line now")
        return started
