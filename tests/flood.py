"""A local flood against a line server: junk WebSockets that never read, and half-open requests.

    python -m tests.flood --url http://127.0.0.1:PORT [--sockets 100] [--half-open 300]
                          [--seconds 10] [--reconnect-ms 0]

One process, as an attacker on the same machine would run it (and on
127.0.0.1 only): `--sockets` WebSockets that complete the upgrade (offering
the batch subprotocol) and then send batches of junk frames without ever
reading what comes back, and `--half-open` TCP connections that send part of
an HTTP request and then nothing. Whatever the server closes or refuses is
opened again after `--reconnect-ms`, for `--seconds`. The WebSocket framing
is written by hand (RFC 6455: masked text frames) so that nothing here reads
from the socket. It prints ``json: {...}`` with what happened, last.

Used by tests/integration/test_flood.py and by ``bench/run flood``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

JUNK_FRAMES = 100  # per message: a full batch
BATCH_SUBPROTOCOL = "parley.batch.v1"


def ws_frame(text: str) -> bytes:
    """One masked, final text frame (what a client must send)."""
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


@dataclass
class Tally:
    ws_opened: int = 0
    ws_upgrade_refused: int = 0
    ws_closed: int = 0  # by the server: a write failed, or it hung up
    ws_messages: int = 0
    half_opened: int = 0
    half_closed: int = 0
    connect_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def junk_socket(host: str, port: int, tally: Tally, stop: float, pause: float) -> None:
    junk = ws_frame("\n".join(["{\"t\":\"junk\"," + "x" * 40] * JUNK_FRAMES))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /v1/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {BATCH_SUBPROTOCOL}\r\n"
               "\r\n").encode()
    while time.monotonic() < stop:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            # The response head is the only thing ever read: it says whether we are in.
            status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if b" 101 " not in status.split(b"\r\n", 1)[0]:
                tally.ws_upgrade_refused += 1
            else:
                tally.ws_opened += 1
                while time.monotonic() < stop:
                    writer.write(junk)
                    tally.ws_messages += 1
                    await writer.drain()  # blocks once the server stops reading us
                    if writer.is_closing() or reader.at_eof():
                        break
                    await asyncio.sleep(0)
                tally.ws_closed += time.monotonic() < stop
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            tally.ws_closed += 1
            tally.error(exc)
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(pause)


async def half_open(host: str, port: int, tally: Tally, stop: float, pause: float) -> None:
    partial = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nX-Slow: ".encode()
    while time.monotonic() < stop:
        writer = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            tally.half_opened += 1
            writer.write(partial)
            # Wait for the server to give up on us (or the flood to end).
            await asyncio.wait_for(reader.read(65536), max(0.0, stop - time.monotonic()))
            tally.half_closed += 1
        except TimeoutError:
            pass
        except (ConnectionError, OSError) as exc:
            tally.connect_failed += 1
            tally.error(exc)
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(pause)


async def flood(url: str, sockets: int, half: int, seconds: float, pause_ms: float) -> Tally:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    if host != "127.0.0.1":
        raise SystemExit("the flood runs against 127.0.0.1 only")
    tally = Tally()
    stop = time.monotonic() + seconds
    pause = pause_ms / 1000
    tasks = [asyncio.ensure_future(junk_socket(host, port, tally, stop, pause))
             for _ in range(sockets)]
    tasks += [asyncio.ensure_future(half_open(host, port, tally, stop, pause))
              for _ in range(half)]
    print("flood: started", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.flood", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--half-open", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--reconnect-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    tally = asyncio.run(flood(args.url, args.sockets, args.half_open, args.seconds,
                              args.reconnect_ms))
    print("json: " + json.dumps(tally.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
