"""Token buckets on a clock that is handed in (milliseconds), as everything in the core."""

from __future__ import annotations


class TokenBucket:
    """`rate_per_s` tokens a second, holding at most `burst`.

    A take succeeds while any token is left and may leave the bucket in debt
    (a 300 KiB frame against a bucket of bytes), so that a limit below one
    item's size slows its sender down instead of refusing it for ever.
    """

    __slots__ = ("_per_ms", "at_ms", "burst", "tokens")

    def __init__(self, rate_per_s: float, burst: float, now_ms: int) -> None:
        self._per_ms = rate_per_s / 1000.0
        self.burst = burst
        self.tokens = burst
        self.at_ms = now_ms

    def _refill(self, now_ms: int) -> None:
        elapsed = now_ms - self.at_ms
        if elapsed > 0:  # a clock stepped back refills nothing and takes nothing
            self.tokens = min(self.burst, self.tokens + elapsed * self._per_ms)
            self.at_ms = now_ms

    def take(self, now_ms: int, amount: float = 1.0) -> bool:
        self._refill(now_ms)
        if self.tokens <= 0:
            return False
        self.tokens -= amount
        return True

    def spend(self, now_ms: int, amount: float) -> None:
        """Take what was spent elsewhere (another node), into debt of at most a burst."""
        self._refill(now_ms)
        self.tokens = max(-self.burst, self.tokens - amount)

    def wait_ms(self, now_ms: int) -> float:
        """How long until a take would succeed (0: now)."""
        self._refill(now_ms)
        return 0.0 if self.tokens > 0 else (1 - self.tokens) / self._per_ms

    def full(self, now_ms: int) -> bool:
        """Would a fresh bucket be the same? (Then forgetting this one gives nobody more.)"""
        self._refill(now_ms)
        return self.tokens >= self.burst
