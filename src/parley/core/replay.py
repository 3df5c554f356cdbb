"""Replay protection for envelopes.

A hostile server can record an envelope and deliver it again later. Every
envelope has a random 128-bit id and a signed send time; the guard drops an id
it has seen and a time outside the window allowed for that kind of payload.

Call signaling is only meaningful for a short while, so ``call.*`` envelopes
older than two minutes are stale; the ids of live envelopes are remembered for
as long as they could still be accepted, which bounds memory. Kinds that are
stored and forwarded (messages) have no age limit; their ids are remembered by
the terminal's store, which also keeps the live ids across a restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from .envelope import Envelope
from .errors import ErrorCode, SecurityAlarm

CALL_MAX_AGE_MS = 120_000
MAX_FUTURE_SKEW_MS = 60_000
DEFAULT_MAX_AGE: Mapping[str, int | None] = {"call.": CALL_MAX_AGE_MS, "test.": CALL_MAX_AGE_MS}


class ReplayGuard:
    def __init__(
        self,
        max_age: Mapping[str, int | None] = DEFAULT_MAX_AGE,
        max_future_skew_ms: int = MAX_FUTURE_SKEW_MS,
        seen: Mapping[str, int | None] | None = None,
    ) -> None:
        self._max_age = dict(max_age)
        self._skew = max_future_skew_ms
        # id -> time after which it may be forgotten (None: never). The terminal
        # persists this, so a replay is caught across a restart too.
        self._seen: dict[str, int | None] = dict(seen or {})

    def max_age_ms(self, type_: str) -> int | None:
        for prefix, age in self._max_age.items():
            if type_.startswith(prefix):
                return age
        return None

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

    def remember(self, envelope: Envelope) -> int | None:
        """Remember the id; return until when it must be kept (None: for good)."""
        age = self.max_age_ms(envelope.type)
        until = None if age is None else envelope.time_ms + age + self._skew
        self._seen[envelope.id] = until
        return until

    def _expire(self, now_ms: int) -> None:
        if len(self._seen) < 1024:
            return
        for key in [k for k, until in self._seen.items() if until is not None and until < now_ms]:
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)
