"""The relay benchmark's load: logged-in devices sending real sealed envelopes.

Runs as its own process (``python -m bench.relay_client JOB.json``), so that
the server under test has a core to itself. Against the line server each
connection logs in as an enrolled device -- the real challenge-response of
`core.wire`, signed with the device's own key -- and sends envelopes sealed
(HPKE) and signed by that device to its partner on a line. Against the echo
server the same connections send the very same frames, without the login.
Both get one WebSocket message per frame from the client; the line server is
offered batches (`wire.BATCH_SUBPROTOCOL`), so its replies may come several
to a message, and the client reads them like a terminal's link does.

Jobs (one per process run), results printed as ``json: {...}``:

* ``throughput``: every device keeps `window` envelopes in flight to its
  partner; counts the server's replies (``sent``, or the echo) per second.
* ``latency``: envelopes at a fixed total rate; the time from sending one to
  its partner receiving it (``deliver``; for the echo server: the echo).
* ``idle``: log in `n` devices, report, hold them until stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from bench.rawws import RawWebSocket, client_frame
from parley.core import wire
from parley.core.encoding import b64e, random_id
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys

SENT, ECHO, DELIVER, ERROR = b'{"t":"sent"', b'{"t":"send"', b'{"t":"deliver"', b'{"t":"error"'
ID_MARK = b'"id":"'


def emit(obj: dict[str, Any]) -> None:
    print("json: " + json.dumps(obj), flush=True)


def split_batches(handler: Any) -> Any:
    """Hand each frame of a message to `handler`, as if it had come alone."""

    def on_message(payload: bytes) -> None:
        for frame in payload.split(b"\n"):
            handler(frame)

    return on_message


def envelope_id(payload: bytes) -> bytes:
    i = payload.find(ID_MARK, 0, 200)
    return payload[i + 6:i + 28] if i >= 0 else b""


@dataclass
class Device:
    ident: str
    keys: DeviceKeys
    node: int = 0  # which of the job's urls it logs in to
    ws: RawWebSocket | None = None
    frames: list[tuple[bytes, bytes]] = field(default_factory=list)  # (envelope id, frame)
    next_frame: int = 0
    completions: int = 0
    deliveries: int = 0
    errors: int = 0
    in_flight: int = 0
    last_error: str = ""

    # Stored envelopes are each sent once under a new id (the pool's sealed ones, their id
    # replaced): sent again, one would be answered as a duplicate, never stored.
    unique: bool = False
    prefix: bytes = b""
    sent: int = 0

    def frame(self) -> tuple[bytes, bytes]:
        ident, frame = self.frames[self.next_frame]
        self.next_frame = (self.next_frame + 1) % len(self.frames)
        if self.unique:
            self.sent += 1
            at = frame.find(ID_MARK) + len(ID_MARK)  # the envelope's id comes first
            new = self.prefix + b"%014d" % self.sent
            frame = frame[:at] + new + frame[at + len(new):]
            ident = new
        return ident, frame


class Load:
    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.mode: str = job["mode"]
        # Several nodes of one line server: device i logs in to node i mod n (so partners,
        # listed next to each other, are on different nodes).
        self.nodes: list[tuple[str, int, str]] = []
        for url in job.get("urls") or [job["url"]]:
            parts = urlsplit(url)
            self.nodes.append((parts.hostname or "127.0.0.1", parts.port or 80,
                               f"{parts.scheme}://{parts.netloc}"))
        self.devices = [Device(d["id"], DeviceKeys.from_private_bytes(d["key"].encode()),
                               node=i % len(self.nodes)) for i, d in enumerate(job["devices"])]
        self.running = False
        self.stored = not job.get("ephemeral", True)
        self.sent_at: dict[bytes, float] = {}
        self.latencies: list[float] = []

    # -- connecting ----------------------------------------------------------------

    async def connect(self, device: Device, handler: Any) -> None:
        host, port, origin = self.nodes[device.node]
        if self.mode == "echo":
            device.ws = await RawWebSocket.connect(host, port, on_text=handler)
            return
        if self.mode == "batch-echo":
            ws = await RawWebSocket.connect(host, port, on_text=handler,
                                            protocols=(wire.BATCH_SUBPROTOCOL,))
            if ws.protocol == wire.BATCH_SUBPROTOCOL:
                ws.on_text = split_batches(handler)
            device.ws = ws
            return
        login: asyncio.Queue[bytes] = asyncio.Queue()
        ws = await RawWebSocket.connect(host, port, on_text=login.put_nowait,
                                        protocols=(wire.BATCH_SUBPROTOCOL,))
        batched = ws.protocol == wire.BATCH_SUBPROTOCOL
        challenge = json.loads(await asyncio.wait_for(login.get(), 30))
        sig = device.keys.sign(wire.auth_statement(challenge["nonce"], device.ident, origin))
        ws.send_text(json.dumps({"t": "hello", "device": device.ident, "sig": b64e(sig),
                                 "receive": True}))
        welcome, *rest = (await asyncio.wait_for(login.get(), 30)).split(b"\n") if batched \
            else [await asyncio.wait_for(login.get(), 30)]
        if json.loads(welcome).get("t") != "welcome":
            raise RuntimeError(f"login refused for {device.ident}: {welcome!r}")
        device.ws = ws
        ws.on_text = split_batches(handler) if batched else handler
        for frame in rest:  # what came with the welcome (the mailbox)
            handler(frame)

    async def connect_all(self, make_handler: Any, concurrency: int = 64) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(device: Device) -> None:
            async with gate:
                await self.connect(device, make_handler(device))

        await asyncio.gather(*(one(d) for d in self.devices))

    def seal_pool(self, sender: Device, recipient: Device, count: int) -> None:
        kind = "msg.text" if self.stored else "call.ice"
        public = recipient.keys.public(recipient.ident)
        for k in range(count):
            payload: dict[str, Any] = (
                {"conversation": "bench", "text": "The parties agree to meet at 15:00 UTC. " * 4}
                if self.stored else
                {"call_id": random_id(), "mid": "0", "mline": 0,
                 "candidate": f"candidate:{k} 1 udp 2130706431 127.0.0.1 {50000 + k} typ host"})
            env = seal_envelope(sender.keys, sender.ident, public, kind, payload,
                                time.time_ns() // 1_000_000)
            msg: dict[str, Any] = {"t": "send", "env": env.to_json(), "ref": f"r{k}"}
            if not self.stored:
                msg["ephemeral"] = True
            text = json.dumps(msg, separators=(",", ":")).encode()
            assert text.find(ID_MARK) == text.find(b'"id":"' + env.id.encode()) \
                and len(env.id) == 22, "the envelope's id is the frame's first"
            sender.frames.append((env.id.encode(), client_frame(text)))
        if self.stored:
            sender.unique, sender.prefix = True, random_id()[:8].encode()

    def pairs(self) -> list[tuple[Device, Device]]:
        return [(self.devices[a], self.devices[b]) for a, b in self.job["pairs"]]

    # -- frames received ---------------------------------------------------------------

    def handler(self, device: Device) -> Any:
        echo = self.mode in ("echo", "batch-echo")
        reply = ECHO if echo else SENT

        def on_text(payload: bytes) -> None:
            if payload.startswith(reply):
                device.completions += 1
                device.in_flight -= 1
                if echo:
                    device.deliveries += 1
                    self._latency(payload)
                self._refill(device)
            elif payload.startswith(DELIVER):
                device.deliveries += 1
                self._latency(payload)
                if self.stored and device.ws is not None:
                    ident = envelope_id(payload)
                    device.ws.send(client_frame(b'{"t":"ack","id":"' + ident + b'"}'))
            elif payload.startswith(ERROR):
                device.errors += 1
                device.in_flight -= 1
                device.last_error = payload[:300].decode(errors="replace")
                self._refill(device)

        return on_text

    def _latency(self, payload: bytes) -> None:
        if self.sent_at:
            sent = self.sent_at.pop(envelope_id(payload), None)
            if sent is not None:
                self.latencies.append((time.perf_counter() - sent) * 1000)

    def _refill(self, device: Device) -> None:
        window = self.job.get("window", 0)
        if self.running and window and device.frames and device.ws is not None:
            while device.in_flight < window:
                device.in_flight += 1
                device.ws.send(device.frame()[1])

    # -- jobs ------------------------------------------------------------------------

    async def prepare(self) -> None:
        await self.connect_all(self.handler)
        for sender, recipient in self.pairs():
            self.seal_pool(sender, recipient, self.job.get("pool", 100))

    def totals(self) -> dict[str, int]:
        return {"completions": sum(d.completions for d in self.devices),
                "deliveries": sum(d.deliveries for d in self.devices),
                "errors": sum(d.errors for d in self.devices)}

    async def throughput(self) -> None:
        await self.prepare()
        self.running = True
        for sender, _ in self.pairs():
            self._refill(sender)
        await asyncio.sleep(self.job.get("warmup_s", 1.0))
        start, t0 = self.totals(), time.perf_counter()
        print("mark: start", flush=True)
        await asyncio.sleep(self.job["seconds"])
        end, t1 = self.totals(), time.perf_counter()
        print("mark: end", flush=True)
        self.running = False
        await asyncio.sleep(0.5)
        seconds = t1 - t0
        emit({"seconds": seconds,
              "per_s": (end["completions"] - start["completions"]) / seconds,
              "delivered_per_s": (end["deliveries"] - start["deliveries"]) / seconds,
              "errors": end["errors"],
              "last_error": next((d.last_error for d in self.devices if d.last_error), "")})

    async def latency(self) -> None:
        await self.prepare()
        senders = [s for s, _ in self.pairs()]
        interval = len(senders) / self.job["rate"]
        self.running = True
        self.sent_at[b""] = 0.0  # non-empty: latencies are being taken
        count = int(self.job["seconds"] * self.job["rate"] / len(senders))
        warmup = int(self.job.get("warmup_s", 0.5) / interval)
        t0 = time.perf_counter()
        for k in range(warmup + count):
            if k == warmup:
                self.latencies.clear()
            due = t0 + k * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            for sender in senders:
                assert sender.ws is not None
                ident, frame = sender.frame()
                self.sent_at[ident] = time.perf_counter()
                sender.ws.send(frame)
        # The rate is what was sent while sending: the drain below is not part of it.
        achieved = len(senders) * (warmup + count) / (time.perf_counter() - t0)
        await asyncio.sleep(0.5)
        self.running = False
        emit({"latencies_ms": self.latencies, "sent": count * len(senders),
              "errors": sum(d.errors for d in self.devices),
              "last_error": next((d.last_error for d in self.devices if d.last_error), ""),
              "achieved_rate": achieved})

    async def idle(self) -> None:
        started = time.perf_counter()
        await self.connect_all(lambda _device: (lambda _payload: None))
        emit({"connected": len(self.devices), "seconds": time.perf_counter() - started})
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for device in self.devices:
            if device.ws is not None:
                device.ws.close()


async def main(job: dict[str, Any]) -> None:
    load = Load(job)
    await getattr(load, job["job"])()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
