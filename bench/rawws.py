"""A minimal WebSocket client for load generation: cheap enough not to be the bottleneck.

The relay benchmark must load a server on a two-core machine from a client
that needs much less CPU per message than the server does, or it measures the
client. aiohttp's client WebSocket costs about as much per message as the
server side, so this one is stripped to the bone: frames to send are built
once in advance (RFC 6455 client frames, masked with an all-zero key, which
every server must accept and unmask like any other), frames received are cut
out of the byte stream and handed over as bytes, and replies are sent from
the protocol callback without a task switch: whatever is sent while one read
is handled goes out in one socket write, still as separate WebSocket frames.
It speaks to both servers under test -- Parley's line server and the bare
echo server -- identically; only the subprotocol it offers (`protocols`)
differs, and the echo server never chooses one.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Callable

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A final, masked (all-zero key, so the payload bytes are unchanged) client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + b"\x00\x00\x00\x00" + payload


class RawWebSocket(asyncio.Protocol):
    """One client connection; `on_text(payload)` runs for every text frame received."""

    def __init__(self, on_text: Callable[[bytes], None] | None = None) -> None:
        self.on_text = on_text or (lambda _payload: None)
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._corked: list[bytes] | None = None  # frames sent while a read is handled
        self.protocol = ""  # the subprotocol the server chose, if any
        self._upgraded = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/v1/ws",
                      on_text: Callable[[bytes], None] | None = None,
                      protocols: tuple[str, ...] = ()) -> RawWebSocket:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(lambda: cls(on_text), host, port)
        assert proto.transport is not None
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Protocol: {', '.join(protocols)}\r\n" if protocols else ""
        proto.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        await asyncio.wait_for(proto._ready, 30)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(ConnectionError("closed before the upgrade"))

    def send(self, frame: bytes) -> None:
        """Send a frame made by `client_frame` (with the read's others, if handling one)."""
        if self._corked is not None:
            self._corked.append(frame)
            return
        assert self.transport is not None
        self.transport.write(frame)

    def send_text(self, text: str) -> None:
        self.send(client_frame(text.encode()))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(struct.pack("!H", 1000), OP_CLOSE))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self._corked = []
        try:
            self._frames_received(data)
        finally:
            corked, self._corked = self._corked, None
            if corked and self.transport is not None and not self.transport.is_closing():
                self.transport.write(b"".join(corked))

    def _frames_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).decode(errors="replace").split("\r\n")
            del buf[:end + 4]
            if " 101 " not in head[0]:
                self._ready.set_exception(ConnectionError(head[0]))
                return
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "sec-websocket-protocol":
                    self.protocol = value.strip()
            self._upgraded = True
            self._ready.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head:pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                self.on_text(payload)
            elif opcode == OP_PING:
                self.send(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE and self.transport is not None:
                self.transport.close()
        if pos:
            del buf[:pos]
