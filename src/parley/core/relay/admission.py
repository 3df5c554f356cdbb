"""Who may hold a connection to the line server: counts per address and in all.

The server's listener asks `Admission.open` for every TCP connection it
accepts, before a byte of it is read, and says when one logs in
(`authenticated`) and when one is gone (`closed`). Handles are the listener's
own objects; nothing here touches them but to hand some back for eviction.

Connections that have not logged in are the cheap ones to open and the ones
a flood is made of, and they may share their address with a genuine terminal
(on loopback, or behind one NAT). So when they are too many -- from one
address, or in all -- the newest is let in and the *oldest* not logged in is
pushed out (from the address that holds the most of them, when the total is
what is full), and of those, one that has not sent a byte goes before one
that has: whoever holds connections open without logging in loses them to
whoever comes next, and a terminal, which sends its request the moment it
connects and logs in a few milliseconds later, always gets through -- even
among thousands of connections opened to say nothing. Only the hard caps on all
connections refuse outright, and only when nothing unauthenticated is left to
push out.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .limits import Limits

H = TypeVar("H", bound=Hashable)


@dataclass
class Verdict(Generic[H]):
    admitted: bool
    evict: list[H] = field(default_factory=list)  # close these now (not logged in, oldest)
    reason: str = ""  # why it was refused


class Admission(Generic[H]):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._source: dict[H, str] = {}
        self._per_source: dict[str, int] = {}
        # Per address, those not logged in, oldest first (dicts keep insertion order);
        # and of those, the ones that have sent nothing yet.
        self._unauth: dict[str, dict[H, None]] = {}
        self._silent: dict[str, dict[H, None]] = {}
        self._unauth_total = 0
        self.refused = 0
        self.evicted = 0

    @property
    def connections(self) -> int:
        return len(self._source)

    @property
    def unauthenticated(self) -> int:
        return self._unauth_total

    def unauthenticated_from(self, source: str) -> int:
        return len(self._unauth.get(source, ()))

    def open(self, handle: H, source: str) -> Verdict[H]:
        """A new connection from `source`: admit it (perhaps pushing others out) or refuse."""
        limits = self.limits
        evict: list[H] = []
        if self._per_source.get(source, 0) >= limits.max_connections_per_source:
            if not self._unauth.get(source):
                return self._refuse(f"too many connections from {source}"
                                    f" ({limits.max_connections_per_source})")
            evict.append(self._push_out(source))
        if len(self._source) >= limits.max_connections:
            # (A push-out above freed a place here too: this is reached with none made.)
            victim = self._largest_unauthenticated()
            if victim is None:
                return self._refuse(f"the server holds its limit of {limits.max_connections}"
                                    " connections")
            evict.append(self._push_out(victim))
        if len(self._unauth.get(source, ())) >= limits.max_unauthenticated_per_source:
            evict.append(self._push_out(source))
        if self._unauth_total >= limits.max_unauthenticated:
            victim = self._largest_unauthenticated()
            assert victim is not None  # the total counts at least one
            evict.append(self._push_out(victim))
        self._source[handle] = source
        self._per_source[source] = self._per_source.get(source, 0) + 1
        self._unauth.setdefault(source, {})[handle] = None
        self._silent.setdefault(source, {})[handle] = None
        self._unauth_total += 1
        return Verdict(True, evict)

    def spoke(self, handle: H) -> None:
        """It sent its first bytes: pushed out now only after those that have not."""
        source = self._source.get(handle)
        silent = self._silent.get(source) if source is not None else None
        if source is not None and silent is not None and handle in silent:
            del silent[handle]
            if not silent:
                del self._silent[source]

    def authenticated(self, handle: H) -> None:
        """It logged in: it no longer counts as, or can be pushed out as, unauthenticated."""
        source = self._source.get(handle)
        if source is not None:
            self._forget_unauthenticated(source, handle)

    def closed(self, handle: H) -> None:
        source = self._source.pop(handle, None)
        if source is None:
            return  # pushed out already, or never admitted
        self._forget_unauthenticated(source, handle)
        count = self._per_source[source] - 1
        if count:
            self._per_source[source] = count
        else:
            del self._per_source[source]

    def _forget_unauthenticated(self, source: str, handle: H) -> None:
        pending = self._unauth.get(source)
        if pending is not None and handle in pending:
            del pending[handle]
            self._unauth_total -= 1
            if not pending:
                del self._unauth[source]
        silent = self._silent.get(source)
        if silent is not None and handle in silent:
            del silent[handle]
            if not silent:
                del self._silent[source]

    def _refuse(self, reason: str) -> Verdict[H]:
        self.refused += 1
        return Verdict(False, reason=reason)

    def _largest_unauthenticated(self) -> str | None:
        if not self._unauth:
            return None
        return max(self._unauth, key=lambda source: len(self._unauth[source]))

    def _push_out(self, source: str) -> H:
        """Forget the oldest unauthenticated connection from `source` (of those, one that
        has said nothing first); the caller closes it."""
        handle = next(iter(self._silent.get(source) or self._unauth[source]))
        self.evicted += 1
        self.closed(handle)
        return handle
