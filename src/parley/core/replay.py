"""Replay protection for envelopes.

A hostile server can record an envelope and deliver it again later. Every
envelope has a random 128-bit id and a signed send time; the guard drops an id
it has seen and a time outside the window allowed for that kind of payload.

How old an envelope may be depends on its kind (`kinds.max_age_ms`): call
signaling is only meaningful for seconds, so a held offer or a stale tamper
notice is refused; messages wait on the server for a month at most. The id of
every envelope accepted is remembered for as long as it could still be
accepted, which bounds memory, and is forgotten then (cheaply: the next to
expire is always at hand). The terminal's store keeps the ids across a restart.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

from . import kinds
from .envelope import Envelope
from .errors import ErrorCode, SecurityAlarm

MAX_FUTURE_SKEW_MS = 60_000


class ReplayGuard:
    def __init__(
        self,
        max_age: Callable[[str], int | None] = kinds.max_age_ms,
        max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
        seen: Mapping[str, int | None] | None = None,
    ) -> None:
        self.max_age_ms = max_age
        self._skew = max_future_skew_ms
        # id -> time after which it may be forgotten (None: never). The terminal
        # persists this, so a replay is caught across a restart too.
        self._seen: dict[str, int | None] = dict(seen or {})
        self._expiry = [(until, key) for key, until in self._seen.items() if until is not None]
        heapq.heapify(self._expiry)

    def check(self, envelope: Envelope, now_ms: int) -> None:
        """Raise a SecurityAlarm for a replayed or out-of-window envelope."""
        self._expire(now_ms)
        if envelope.id in self._seen:
            raise SecurityAlarm(
                f"envelope {envelope.id} ({envelope.type} from {envelope.sender}) was delivered"
                " again",
                code=ErrorCode.REPLAY,
                hint="a replay was dropped; the server or the network repeated an old envelope",
            )
        if envelope.time_ms > now_ms + self._skew:
            raise SecurityAlarm(
                f"{envelope.type} from {envelope.sender} is dated"
                f" {(envelope.time_ms - now_ms) // 1000} s in the future",
                code=ErrorCode.STALE,
                hint="check both machines' clocks (NTP)",
            )
        age = self.max_age_ms(envelope.type)
        if age is not None and envelope.time_ms < now_ms - age:
            raise SecurityAlarm(
                f"{envelope.type} from {envelope.sender} is {(now_ms - envelope.time_ms) // 1000}"
                f" s old (limit {age // 1000} s)",
                code=ErrorCode.STALE,
                hint="a delayed or replayed envelope was dropped; check the clocks if this repeats",
            )

    def seen(self, envelope_id: str) -> bool:
        """Was an envelope with this id accepted before (and is it still remembered)?"""
        return envelope_id in self._seen

    def remember(self, envelope: Envelope) -> int | None:
        """Remember the id; return until when it must be kept (None: for good)."""
        age = self.max_age_ms(envelope.type)
        until = None if age is None else envelope.time_ms + age + self._skew
        self._seen[envelope.id] = until
        if until is not None:
            heapq.heappush(self._expiry, (until, envelope.id))
        return until

    def _expire(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms:
            until, key = heapq.heappop(self._expiry)
            if self._seen.get(key) == until:
                del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
