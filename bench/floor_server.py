"""A diagnostic for the relay benchmark: the least a relay with Parley's protocol must do.

Speaks just enough of the line server's protocol for the load client: a
challenge, any hello accepted, then for each ``send``: parse the JSON, forward
the envelope as ``deliver`` to its recipient and answer ``sent``. No
signature, schema, sender, line or rate check, no store. Same framework,
WebSocket settings, JSON library (orjson) and batching (`wire.BATCH_SUBPROTOCOL`,
frames written through the line server's `Outbox`) as the line server. Its
throughput is the ceiling for any relay that parses, re-encodes and sends two
frames per envelope in Python on aiohttp -- what separates the line server
from the echo server that is not Parley's checks. Never a server to run: it
checks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import WSMsgType, web

from bench.echo_server import serve
from parley.core import wire
from parley.outbox import Outbox
from parley.server.app import MAX_WS_MESSAGE

_encode = wire.encode_frame


class Floor:
    def __init__(self) -> None:
        self.online: dict[str, Outbox] = {}

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=20.0,
                                   protocols=(wire.BATCH_SUBPROTOCOL,))
        await ws.prepare(request)
        out = Outbox(ws.send_str, batched=ws.ws_protocol == wire.BATCH_SUBPROTOCOL)
        out.put(_encode({"t": "challenge", "nonce": "-", "server": "-"}))
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            for raw in msg.data.split("\n") if out.batched else (msg.data,):
                frame = orjson.loads(raw)
                if frame.get("t") == "send":
                    env = frame["env"]
                    target = self.online.get(env["to"])
                    if target is not None:
                        target.put(_encode({"t": "deliver", "env": env}))
                    out.put(_encode({"t": "sent", "id": env["id"], "status": "delivered",
                                     "ref": frame.get("ref")}))
                elif frame.get("t") == "hello":
                    self.online[frame["device"]] = out
                    out.put(_encode({"t": "welcome", "device": frame["device"],
                                     "party": "-", "peers": []}))
        out.close()
        return ws


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Floor().ws))
