"""The line server's listening socket: each connection admitted before aiohttp reads a byte.

aiohttp serves HTTP and WebSockets well but has no notion of how many
connections one address may hold. So the server listens itself
(`loop.create_server`) and wraps each connection's aiohttp protocol in a
`Guard`, which asks the pure `Admission` first. Only public interfaces of
aiohttp are used: the runner's `server` (the protocol factory) and the
protocol methods asyncio calls, which the guard passes on unchanged.

A connection refused (it gets a short ``503``), pushed out to make room (the
oldest not logged in), or closed by the relay for junk before login is *held*
first (`Guard.hold`): nothing more it sends is read or answered, and it is
closed only after ``hold_refused`` seconds. Closed at once, a flood's
connections come straight back -- measured here, tens of thousands a second,
which is the server's whole time spent accepting them; held, a flood of N
connections comes back at most N times per hold. At most ``max_held`` are held
at once; past that they are closed at once.

Connections that never send a whole request are closed by aiohttp itself
after its keep-alive timeout, armed from the moment a connection is made (the
server sets it to ``header_timeout``); a WebSocket that does not log in is
closed by the relay after ``login_timeout``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from parley.core.errors import ErrorCode, LocalError
from parley.core.relay.admission import Admission

log = logging.getLogger("parley.server")
LOG_EVERY_S = 10.0
RELEASE_GRACE_S = 1.0


def _refusal(reason: str) -> bytes:
    body = (f'{{"code":"too_many_connections","message":"{reason}",'
            '"hint":"try again in a moment"}').encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


FDS_BESIDE = 256  # files the server needs beside its connections (its database, logs...)


def ensure_fds(wanted: int) -> int:
    """Raise this process's limit on open files towards `wanted`; what it is now.

    Typical defaults (1024) are below what the connection limits need; past the
    limit, accept fails and nobody, genuine or not, gets in.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        log.warning("this process may open %d files, fewer than the %d the connection limits"
                    " need: past it, nobody gets in. Raise it (ulimit -n %d, or LimitNOFILE="
                    "%d for systemd), or lower --max-connections and --max-held", soft, wanted,
                    wanted, wanted)
    return soft


class Guard(asyncio.Protocol):
    """One accepted connection: admitted or refused, then aiohttp's protocol inside."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self.held = False
        self._release: asyncio.TimerHandle | None = None
        self.gone = asyncio.Event()  # set once the connection is closed
        self.received = 0  # bytes, until it logs in (then None)
        self.logged_in = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        peer = transport.get_extra_info("peername")
        self.source = str(peer[0]) if peer else "unknown"
        listener = self._listener
        verdict = listener.admission.open(self, self.source)
        self.transport = transport
        for victim in verdict.evict:
            listener.note("pushed out a connection that had not logged in", victim.source)
            victim.hold()
        if not verdict.admitted:
            listener.note(f"refused a connection: {verdict.reason}", self.source)
            self.hold(_refusal(verdict.reason))
            return
        listener.guards[transport] = self
        self._inner = listener.factory()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None or self.held:
            return
        if not self.logged_in:
            if not self.received:
                self._listener.admission.spoke(self)
            self.received += len(data)
            if self.received > self._listener.unauthenticated_bytes:
                self._listener.note("held a connection that sent too much before logging in",
                                    self.source)
                self.hold()
                return
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self._listener
        if self.transport is not None:
            listener.guards.pop(self.transport, None)
            listener.admission.closed(self)
        if self.held:
            listener.held -= 1
            listener.holding.discard(self)
            if self._release is not None:
                self._release.cancel()
        self.gone.set()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def hold(self, last_words: bytes = b"") -> None:
        """Read and answer nothing more; close after the hold time (then say `last_words`)."""
        transport, listener = self.transport, self._listener
        if self.held or transport is None or transport.is_closing():
            return
        listener.admission.closed(self)  # it no longer counts as anyone's connection
        if listener.held >= listener.max_held:
            transport.abort()
            return
        self.held = True
        listener.held += 1
        listener.held_total += 1
        listener.holding.add(self)
        transport.pause_reading()

        def release() -> None:
            if last_words:
                transport.write(last_words)
            # A close waits for the write buffer, which a client that does not read keeps
            # full: the last words have a moment, then the connection goes regardless.
            transport.close()
            self._release = asyncio.get_running_loop().call_later(RELEASE_GRACE_S,
                                                                  transport.abort)

        self._release = asyncio.get_running_loop().call_later(listener.hold_s, release)

    def authenticated(self) -> None:
        self.logged_in = True
        self._listener.admission.authenticated(self)


class Listener:
    def __init__(self, factory: Callable[[], asyncio.Protocol], admission: Admission[Guard]
                 ) -> None:
        self.factory = factory
        self.admission = admission
        self.hold_s = admission.limits.hold_refused
        self.max_held = admission.limits.max_held
        self.unauthenticated_bytes = int(admission.limits.unauthenticated_kib * 1024)
        self.held = 0  # connections held now
        self.held_total = 0
        self.holding: set[Guard] = set()
        self.guards: dict[Any, Guard] = {}  # transport -> its guard
        self._server: asyncio.Server | None = None
        self._noted: dict[str, tuple[float, int]] = {}  # message -> (last logged, since)

    async def start(self, host: str, port: int) -> int:
        """Listen; the port actually bound (for port 0)."""
        limits = self.admission.limits
        ensure_fds(limits.max_connections + limits.max_held + FDS_BESIDE)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: Guard(self), host, port,
                                                    reuse_address=True, backlog=1024)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LocalError(f"port {port} on {host} is in use (another parley server?)",
                                 code=ErrorCode.BAD_CONFIG,
                                 hint="stop the other process, or choose another --port"
                                 ) from None
            raise LocalError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             code=ErrorCode.BAD_CONFIG, hint="check --host and --port") from None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Accept no more, and let go of the connections held (the server is stopping)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for guard in list(self.holding):
            if guard.transport is not None:
                guard.transport.abort()

    def guard(self, transport: Any) -> Guard | None:
        return self.guards.get(transport)

    def note(self, what: str, source: str) -> None:
        """Log what a flood makes happen thousands of times: once per kind per 10 s."""
        key = f"{what} ({source})"
        now = time.monotonic()
        last, since = self._noted.get(key, (0.0, 0))
        if now - last >= LOG_EVERY_S:
            log.warning("%s%s", key, f"; {since} more like it since the last" if since else "")
            self._noted[key] = (now, 0)
            if len(self._noted) > 1000:
                self._noted.clear()
        else:
            self._noted[key] = (last, since + 1)
