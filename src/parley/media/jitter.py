"""The robot's audio jitter buffer: a delay set from the jitter measured, as NetEQ does.

aiortc (1.16) holds every audio frame until the packet four places after it
has arrived: 80 ms at 20 ms a frame, on a clean link as on a bad one, and of a
robot's ~107 ms mouth-to-ear on loopback that is most of it (``bench/run
latency``). `AudioJitterBuffer` releases a frame when the packet `prefetch`
places after it has arrived (and gives up a frame still missing then: only
what the network lost, or delivered too late, is lost), with `prefetch` set
from what arrives:

* each packet's *transit* is its arrival time minus its RTP timestamp in
  seconds; over the last `WINDOW_S` the spread of transits (latest minus
  earliest) is how far the link moves a packet from its place;
* a frame can only be missed when a packet sent after it overtakes it, which
  takes a spread of more than one frame per place of prefetch; so with a
  spread under one frame (less `MARGIN_S`) the prefetch is 0, a frame leaves
  as it arrives, and otherwise it is the number of frames that covers the
  spread and the margin (one is never chosen: a frame one place behind is
  missed exactly when it is with none);
* the delay rises at once when a later packet shows more jitter, and comes
  down only when the window has seen less for all of its length; when it
  comes down, the frames then due leave together (`JitterFrames`).

Until `WARMUP` packets have been seen the prefetch is `INITIAL_PREFETCH`. A
fixed `prefetch` (aiortc's 4, for a comparison) can still be asked for.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

RATE = 48_000  # Opus's RTP clock (RFC 7587)
WINDOW_S = 5.0
MARGIN_S = 0.005
WARMUP = 25  # packets: half a second of 20 ms frames
INITIAL_PREFETCH = 2
DEFAULT_FRAME = 960  # 20 ms at 48 kHz, until consecutive packets say otherwise


class DelaySpread:
    """The spread of packet transit times (arrival minus media time) over a sliding window."""

    def __init__(self, window_s: float = WINDOW_S, rate: int = RATE) -> None:
        self.window_s = window_s
        self.rate = rate
        self.count = 0
        self._low: deque[tuple[float, float]] = deque()  # (arrival, transit), rising
        self._high: deque[tuple[float, float]] = deque()  # (arrival, transit), falling
        self._raw: int | None = None
        self._timestamp = 0  # the last RTP timestamp, unwrapped

    def reset(self) -> None:
        self.count = 0
        self._low.clear()
        self._high.clear()
        self._raw = None

    def add(self, arrival: float, timestamp: int) -> None:
        if self._raw is None:
            self._timestamp = timestamp
        else:
            step = (timestamp - self._raw) % 2**32
            self._timestamp += step - 2**32 if step >= 2**31 else step
        self._raw = timestamp
        transit = arrival - self._timestamp / self.rate
        while self._low and self._low[-1][1] >= transit:
            self._low.pop()
        self._low.append((arrival, transit))
        while self._high and self._high[-1][1] <= transit:
            self._high.pop()
        self._high.append((arrival, transit))
        for side in (self._low, self._high):
            while side[0][0] < arrival - self.window_s:
                side.popleft()
        self.count += 1

    @property
    def seconds(self) -> float:
        """Latest transit minus earliest in the window: how far packets move from their place."""
        if not self._low:
            return 0.0
        return self._high[0][1] - self._low[0][1]


def prefetch_for(spread_s: float, frame_s: float, most: int) -> int:
    """Frames of prefetch for a transit spread (module docstring: 0, or 2 and up)."""
    need = spread_s + MARGIN_S
    if need <= frame_s:
        return 0
    return max(2, min(most, math.ceil(need / frame_s)))


class JitterFrames(JitterFrame):
    """Several frames due at once: this one, and `more` after it, in order.

    aiortc maps the first frame's timestamp onto its own timeline; `parts` puts
    the others on the same timeline.
    """

    def __init__(self, frames: list[tuple[bytes, int]]) -> None:
        super().__init__(data=frames[0][0], timestamp=frames[0][1])
        self.first = frames[0][1]
        self.more = frames[1:]


def parts(frame: JitterFrame) -> list[JitterFrame]:
    """The frames a released JitterFrame (or JitterFrames) carries, timestamps as aiortc's."""
    if not isinstance(frame, JitterFrames):
        return [frame]
    # aiortc's mapped timestamps are not taken modulo 2**32 (they pass it after a day):
    # only the step from the first frame is.
    return [frame] + [JitterFrame(data=data, timestamp=frame.timestamp + (ts - frame.first)
                                  % 2**32) for data, ts in frame.more]


@dataclass
class BufferStats:
    released: int = 0  # frames handed to the decoder
    given_up: int = 0  # frames missing when due: lost, or late (FEC or concealment fills in)
    late: int = 0  # packets that arrived after their frame was given up
    prefetch: int = 0  # frames held now
    frame_ms: float = 20.0
    spread_ms: float = 0.0  # the transit spread the prefetch covers
    packets: int = 0
    prefetch_sum: int = 0  # the prefetch at each packet, summed: its mean over the call

    def as_dict(self) -> dict[str, float | int | str]:
        mean = self.prefetch_sum / self.packets if self.packets else 0.0
        return {"released": self.released, "given_up": self.given_up, "late": self.late,
                "delay_ms": round(self.prefetch * self.frame_ms, 1),
                "mean_delay_ms": round(mean * self.frame_ms, 1),
                "spread_ms": round(self.spread_ms, 1)}


class AudioJitterBuffer:
    """One packet per frame, released `prefetch` packets late; a frame missing then is lost.

    `prefetch` None: adaptive (module docstring); an int: fixed, as aiortc's.
    Drop-in for aiortc's ``JitterBuffer`` on the audio receiver (`add`).
    """

    def __init__(self, capacity: int, prefetch: int | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = capacity
        self._fixed = prefetch
        self._clock = clock
        self._packets: dict[int, RtpPacket] = {}
        self._next: int | None = None  # sequence number of the next frame to release
        self._newest: int | None = None
        self._spread = DelaySpread()
        self._frame = DEFAULT_FRAME
        self._last: RtpPacket | None = None
        self._stray: int | None = None  # a packet far from the sequence, on probation
        self.stats = BufferStats(prefetch=INITIAL_PREFETCH if prefetch is None else prefetch)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def prefetch(self) -> int:
        return self.stats.prefetch

    def _measure(self, packet: RtpPacket) -> None:
        """Note a packet's transit (late ones too: they are the jitter) and set the delay."""
        self._spread.add(self._clock(), packet.timestamp)
        frame_s = self._frame / RATE
        self.stats.frame_ms = frame_s * 1000
        self.stats.spread_ms = self._spread.seconds * 1000
        if self._fixed is None and self._spread.count >= WARMUP:
            self.stats.prefetch = prefetch_for(self._spread.seconds, frame_s, self._capacity - 2)
        self.stats.packets += 1
        self.stats.prefetch_sum += self.stats.prefetch

    def _frame_length(self, packet: RtpPacket) -> None:
        last = self._last
        if last is not None and packet.sequence_number == uint16_add(last.sequence_number, 1):
            step = (packet.timestamp - last.timestamp) % 2**32
            if 0 < step <= RATE * 120 // 1000:  # up to 120 ms: an Opus packet's longest
                self._frame = step
        self._last = packet

    def _restart(self, seq: int) -> None:
        """The sender restarted its sequence: what is held goes, and the measure starts over."""
        self.stats.given_up += len(self._packets)
        self._packets.clear()
        self._spread.reset()
        self._last = None
        self._stray = None
        self._next = self._newest = seq
        if self._fixed is None:
            self.stats.prefetch = INITIAL_PREFETCH

    def _held(self) -> int:
        """Places from the head to the newest packet (0x8000 and up: the head is past it)."""
        assert self._newest is not None and self._next is not None
        return uint16_add(self._newest, -self._next)

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._next is None or self._newest is None:
            self._next = self._newest = seq
        else:
            ahead = uint16_add(seq, -self._next)  # sequence numbers wrap at 2**16
            if ahead >= 0x8000 and 0x10000 - ahead <= self._capacity * 4:
                self.stats.late += 1
                self._measure(packet)  # how late it came is what the delay must cover
                return False, None  # late: already released or given up
            if ahead >= self._capacity * 4:
                # Far from anything expected: a restarted sender, or one stray packet. As
                # RFC 3550 (A.1) does, a new sequence counts once two packets follow on.
                if self._stray is None or seq != uint16_add(self._stray, 1):
                    self._stray = seq
                    return False, None
                self._restart(seq)
        self._stray = None
        self._frame_length(packet)
        self._measure(packet)
        if uint16_gt(seq, self._newest):
            self._newest = seq
        self._packets[seq] = packet
        while self._capacity <= self._held() < 0x8000:
            # Overrun (a burst): the oldest frames go, as in aiortc's buffer.
            if self._packets.pop(self._next, None) is None:
                self.stats.given_up += 1
            self._next = uint16_add(self._next, 1)
        due: list[tuple[bytes, int]] = []
        while self._packets and self.stats.prefetch <= self._held() < 0x8000:
            # The frame at the head is due. If it never came, give it up and take the next.
            head = self._packets.pop(self._next, None)
            self._next = uint16_add(self._next, 1)
            if head is None:
                self.stats.given_up += 1
            else:
                due.append((head._data, head.timestamp))  # type: ignore[attr-defined]
        self.stats.released += len(due)
        if not due:
            return False, None
        if len(due) == 1:
            return False, JitterFrame(data=due[0][0], timestamp=due[0][1])
        return False, JitterFrames(due)
