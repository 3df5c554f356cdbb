"""A lossy, jittery link for the benchmarks' calls: netfilter's queue, in a namespace.

``python -m bench.impair '{"loss": 5, "model": "bursty", ...}'`` run inside a
network namespace (the quality benchmark's, `bench.quality`) puts every UDP
packet that arrives there (``iptables -A INPUT -p udp -j NFQUEUE``: the media;
signaling is TCP) through this process, which drops some RTP packets and
holds others back before letting them through (STUN, DTLS and RTCP pass). The
kernel here has no netem; this does the part of it the benchmarks need. Each
packet's fate comes from its place in its flow and a pattern drawn from the
seed (`Link`), so that two calls (say, with two jitter buffers) meet the same
network, packet for packet. SRTP leaves the RTP header in the clear.

* ``model: random``: each packet is lost with probability ``loss`` %.
* ``model: bursty``: a two-state Gilbert-Elliott chain: in the good state
  nothing is lost, in the bad state everything; it enters the bad state with
  probability p and leaves it with r = 1 / ``burst`` (mean burst length,
  packets), p chosen so that the share
  of time in the bad state, p / (p + r), is ``loss`` %. Real links lose
  packets in bursts like this (queues overflowing, radio fades), which is the
  hard case for Opus in-band FEC: each packet carries a copy of only the one
  before it.
* ``jitter_ms``: each packet that is not lost is held for a uniform 0 to
  2 x ``jitter_ms`` (netem's ``delay J J``), so packets are reordered.

On SIGTERM or end of stdin it removes its rule and prints ``json: {...}``: the
packets seen and dropped.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass

QUEUE = 7


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0  # percent
    model: str = "random"  # or "bursty"
    burst: float = 3.0  # mean burst length in packets (bursty)
    jitter_ms: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.model not in ("random", "bursty"):
            raise ValueError(f"loss model {self.model!r}: random or bursty")
        if not 0 <= self.loss < 100 or self.burst < 1 or self.jitter_ms < 0:
            raise ValueError(f"impairment out of range: {self}")

    @property
    def label(self) -> str:
        parts = [f"{self.loss:g}% {self.model}" if self.loss else "no loss"]
        if self.model == "bursty" and self.loss:
            parts[0] += f" (mean burst {self.burst:g})"
        if self.jitter_ms:
            parts.append(f"{self.jitter_ms:g} ms jitter")
        return ", ".join(parts)


class GilbertElliott:
    """Good: nothing lost; bad: all lost. p = P(good -> bad), r = P(bad -> good)."""

    def __init__(self, loss: float, burst: float, rng: random.Random) -> None:
        self.r = 1.0 / burst
        self.p = loss * self.r / (1.0 - loss) if loss else 0.0
        self.bad = False
        self.rng = rng

    def lose(self) -> bool:
        self.bad = self.rng.random() >= self.r if self.bad else self.rng.random() < self.p
        return self.bad


PATTERN = 1 << 16  # packets in a flow's pattern; a call of 20 min at 50 packets a second


class Link:
    """Each RTP packet's fate -- lost, or held how long -- from its place in its flow.

    The n-th packet of a flow (counted from the first RTP sequence number seen in it)
    meets the n-th entry of a pattern drawn once from the seed, so two calls on links
    with the same seed meet the same losses and delays, packet for packet, whatever
    else happens. Packets that are not RTP (STUN, DTLS, RTCP) pass untouched.
    """

    def __init__(self, impairment: Impairment) -> None:
        self.impairment = impairment
        rng = random.Random(impairment.seed)
        loss = impairment.loss / 100
        if impairment.model == "bursty":
            chain = GilbertElliott(loss, impairment.burst, rng)
            self.lost = [chain.lose() for _ in range(PATTERN)]
        else:
            self.lost = [rng.random() < loss for _ in range(PATTERN)]
        jitter_s = impairment.jitter_ms / 1000
        self.delays = [rng.uniform(0, 2 * jitter_s) for _ in range(PATTERN)] if jitter_s \
            else None
        self.first: dict[tuple[int, int], int] = {}
        self.seen = 0
        self.dropped = 0

    def fate(self, ip: bytes) -> tuple[bool, float]:
        """(lost, seconds to hold) for one IPv4 packet."""
        place = rtp_place(ip, self.first)
        if place is None:
            return False, 0.0
        return self.lost[place], self.delays[place] if self.delays else 0.0


def rtp_place(ip: bytes, first: dict[tuple[int, int], int]) -> int | None:
    """The place of an IPv4 UDP packet carrying RTP in its flow (source and destination
    port); None if it carries something else (RTP version 2, and not RTCP's packet types
    under RFC 5761's demultiplexing)."""
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    at = (ip[0] & 0x0F) * 4
    udp = ip[at:at + 12]
    if len(udp) < 12 or udp[8] >> 6 != 2 or 64 <= (udp[9] & 0x7F) <= 95:
        return None
    flow = (int.from_bytes(udp[0:2], "big"), int.from_bytes(udp[2:4], "big"))
    seq = int.from_bytes(udp[10:12], "big")
    start = first.setdefault(flow, seq)
    return (seq - start) % PATTERN


def rule(action: str) -> list[str]:
    return ["iptables", action, "INPUT", "-p", "udp", "-j", "NFQUEUE", "--queue-num", str(QUEUE)]


async def serve(impairment: Impairment) -> dict[str, int]:
    from netfilterqueue import COPY_PACKET, NetfilterQueue  # bench extra (bench/packages.txt)

    loop = asyncio.get_running_loop()
    link = Link(impairment)
    held: set[asyncio.TimerHandle] = set()

    def verdict(packet: object) -> None:
        link.seen += 1
        lost, delay = link.fate(packet.get_payload())  # type: ignore[attr-defined]
        if lost:
            link.dropped += 1
            packet.drop()  # type: ignore[attr-defined]
            return
        if delay <= 0:
            packet.accept()  # type: ignore[attr-defined]
            return

        def release() -> None:
            held.discard(handle)
            packet.accept()  # type: ignore[attr-defined]

        handle = loop.call_later(delay, release)
        held.add(handle)

    queue = NetfilterQueue()
    queue.bind(QUEUE, verdict, max_len=8192, mode=COPY_PACKET, range=64)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.readline() or stop.set())
    loop.add_reader(queue.get_fd(), queue.run, False)
    try:
        print("ready", flush=True)
        await stop.wait()
    finally:
        loop.remove_reader(queue.get_fd())
        for handle in list(held):
            handle.cancel()
        queue.unbind()
    return {"seen": link.seen, "dropped": link.dropped}


def main() -> None:
    impairment = Impairment(**json.loads(sys.argv[1]))
    subprocess.run(rule("-A"), check=True)  # UDP waits for the queue's verdicts from now
    try:
        counts = asyncio.run(serve(impairment))
    finally:
        subprocess.run(rule("-D"), check=False)
    print("json: " + json.dumps({**asdict(impairment), **counts}), flush=True)


if __name__ == "__main__":
    main()
