"""The relay benchmark's baselines: bare aiohttp WebSocket servers that echo each frame.

Same framework, same WebSocket settings (message size limit, heartbeat) and
same path as the line server, and nothing else: no login, no parsing, no
validation, no routing. The plain echo answers message for message; the
batching echo (``batch``) writes its replies as the line server does, several
to a message when they come together -- the best a bare echo does. Run as its
own process; prints ``ready: URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from parley.core import wire
from parley.outbox import Outbox
from parley.server.app import MAX_WS_MESSAGE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
    return ws


async def batching_echo(request: web.Request) -> web.WebSocketResponse:
    """The echo with the line server's batching: replies written in one turn of the loop
    leave as one message (`wire.BATCH_SUBPROTOCOL`, through the line server's `Outbox`)."""
    ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0,
                               protocols=(wire.BATCH_SUBPROTOCOL,))
    await ws.prepare(request)
    out = Outbox(ws.send_str, batched=ws.ws_protocol == wire.BATCH_SUBPROTOCOL)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            for frame in msg.data.split("\n") if out.batched else (msg.data,):
                out.put(frame)
    out.close()
    return ws


async def serve(handler: Handler, host: str = "127.0.0.1") -> None:
    """Serve `handler` at /v1/ws on a free port of `host`, say where, and run until stopped."""
    app = web.Application()
    app.add_routes([web.get("/v1/ws", handler)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready: http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    # python -m bench.echo_server [batch]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(batching_echo if sys.argv[1:] == ["batch"] else echo))
