"""What one server node tells the others, and how it reads what they tell it.

Several nodes may serve one line (one PostgreSQL database, `server/cluster.py`).
The database stays the system of record; nodes only tell each other *that*
something happened, so that each can act at once instead of polling: an
envelope was stored for a device (the doorbell), an envelope was acknowledged
(its sender's and recipient's quota shrink), a device logged in or out
somewhere (presence, and a newer session replacing the oldest across nodes),
a device spent some of its rate on another node, a call-signaling envelope
waits in transit for a device connected here, a line test was filed.

An event is one line of text: a letter, the node that says it, then ids and
numbers -- never an envelope's body (that stays in the database: the mailbox,
or the transit table for call signaling). `parse_event` checks each field;
what does not parse is an error for the caller to log and skip, never a
reason to stop.

PostgreSQL lets any role that may connect to a database NOTIFY on it, and
LISTEN: so each notification is sealed (`Seal`) with HMAC-SHA256 under a key
that only the line's own role can read (a table), and carries its node, the
time and a counter that only grows. A node refuses a notification whose MAC
is wrong (forged), one whose counter it has seen (replayed), one sealed before
it started listening (replayed to a node that had not heard it) and one whose
time is more than `SEAL_WINDOW_MS` away from its own clock (the nodes' clocks
must agree, as for TLS, within `SEAL_SKEW_MS` to be heard at once).

`Peers` is what the relay calls when it does something the other nodes must
hear of; on one node (SQLite, or PostgreSQL alone) it is `NO_PEERS`, which
does nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

from ..errors import RemoteError


class Peers(Protocol):
    """The other nodes, as the relay sees them."""

    def stored(self, seq: int, recipient: str, sender: str, size: int) -> None:
        """An envelope was stored (in the open group): ring the recipient's doorbell."""

    def acked(self, recipient: str, sender: str, size: int, envelope_id: str) -> None:
        """An envelope was acknowledged and deleted (in the open group)."""

    def logged_in(self, sid: str, device: str, receive: bool) -> None:
        """A session of this node logged in."""

    def logged_out(self, sid: str, device: str) -> None:
        """A logged-in session of this node ended."""

    def forward(self, recipient: str, body: str) -> None:
        """Call signaling for a device that has a receiving session on another node."""

    def line_filed(self, line: str) -> None:
        """A line test was filed here: the others forget what they cached of the line."""


class _NoPeers:
    """One node: nobody to tell."""

    def stored(self, seq: int, recipient: str, sender: str, size: int) -> None:
        pass

    def acked(self, recipient: str, sender: str, size: int, envelope_id: str) -> None:
        pass

    def logged_in(self, sid: str, device: str, receive: bool) -> None:
        pass

    def logged_out(self, sid: str, device: str) -> None:
        pass

    def forward(self, recipient: str, body: str) -> None:
        pass

    def line_filed(self, line: str) -> None:
        pass


NO_PEERS: Peers = _NoPeers()

# Events, one per line. (Field names as in the dataclass below.)
STORED = "m"  # node seq recipient sender size
ACKED = "a"  # node recipient sender size ident (the envelope's id, base64url)
SESSION_IN = "s"  # node seq sid device receive(0|1)
SESSION_OUT = "x"  # node sid device
TRANSIT = "e"  # node transit-id recipient
SPENT = "r"  # node device frames bytes
LINE_FILED = "l"  # node line

_FIELDS = {STORED: ("seq", "recipient", "sender", "size"),
           ACKED: ("recipient", "sender", "size", "ident"),
           SESSION_IN: ("seq", "sid", "device", "receive"),
           SESSION_OUT: ("sid", "device"),
           TRANSIT: ("seq", "recipient"),
           SPENT: ("device", "frames", "size"),
           LINE_FILED: ("line",)}
_NUMBERS = frozenset({"seq", "size", "frames", "receive"})
# Device ids, party names and line names are made of these (core.keys.check_name, plus
# the separators); a session id is URL-safe base64.
_TOKEN = re.compile(r"[A-Za-z0-9_./~:-]{1,200}")
MAX_NUMBER = 2**63 - 1
MAX_EVENT = 1024


@dataclass(frozen=True)
class Event:
    kind: str
    node: int
    seq: int = 0
    recipient: str = ""
    sender: str = ""
    size: int = 0
    sid: str = ""
    device: str = ""
    receive: int = 0
    frames: int = 0
    line: str = ""
    ident: str = ""  # decoded


def encode_event(kind: str, node: int, *fields: object) -> str:
    """One event line; its fields in the order `_FIELDS` gives."""
    names = _FIELDS[kind]
    if len(fields) != len(names):
        raise ValueError(f"event {kind} takes {len(names)} fields")
    return " ".join([kind, str(node), *(str(int(f)) if isinstance(f, bool) else str(f)
                                        for f in fields)])


def parse_event(line: str) -> Event:
    """An event line, each field checked; `RemoteError` says what is wrong with it."""
    if len(line) > MAX_EVENT:
        raise RemoteError(f"event of {len(line)} characters (at most {MAX_EVENT})")
    parts = line.split(" ")
    names = _FIELDS.get(parts[0])
    if names is None:
        raise RemoteError(f"unknown event kind {parts[0][:20]!r}")
    if len(parts) != 2 + len(names):
        raise RemoteError(f"event {parts[0]} has {len(parts) - 2} fields, not {len(names)}")
    values: dict[str, object] = {"kind": parts[0], "node": _number(parts[1], "node")}
    for name, text in zip(names, parts[2:], strict=True):
        if name in _NUMBERS:
            values[name] = _number(text, name)
        elif name == "ident":
            values[name] = _ident(text)
        elif _TOKEN.fullmatch(text):
            values[name] = text
        else:
            raise RemoteError(f"event {parts[0]}: bad {name} {text[:40]!r}")
    if parts[0] == SESSION_IN and values["receive"] not in (0, 1):
        raise RemoteError("event s: receive is 0 or 1")
    return Event(**values)  # type: ignore[arg-type]


def encode_ident(envelope_id: str) -> str:
    """An envelope id (any text, from the network) as one event field."""
    return base64.urlsafe_b64encode(envelope_id.encode()).decode().rstrip("=") or "="


def _ident(text: str) -> str:
    if text == "=":
        return ""
    if len(text) > 200 or not _TOKEN.fullmatch(text) or not set(text) <= _B64URL:
        raise RemoteError("event: bad envelope id")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise RemoteError("event: bad envelope id") from None


_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _number(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_NUMBER:
        raise RemoteError(f"event: {name} {text[:40]!r} is not a count")
    return int(text)


SEAL = "#1"  # a sealed notification's first line: #1 node time-ms counter mac
MAC_BYTES = 16
SEAL_WINDOW_MS = 60_000
SEAL_SKEW_MS = 5_000  # sealed this long before a node listened, it is still heard
SEAL_HEAD_MAX = 80  # the first line's length at most (with its newline)
KEY_BYTES = 32


class Seal:
    """Seals this node's notifications, and opens the others' (forged and replayed ones
    refused with `RemoteError`)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError("the nodes' key is too short")
        self._key = key
        self._counter = 0
        self._last: dict[int, tuple[int, int]] = {}  # node -> (counter, time) last opened
        self._since_ms = 0  # what was sealed before then (listening since) is not heard

    def listening(self, now_ms: int) -> None:
        """This node (again) hears the others from now: it heard nothing before, so what
        was sealed before is a replay, or was missed (costing a delay, never data)."""
        self._since_ms = now_ms - SEAL_SKEW_MS

    def seal(self, node: int, body: str, now_ms: int) -> str:
        self._counter += 1
        head = f"{node} {now_ms} {self._counter}"
        return f"{SEAL} {head} {self._mac(head, body)}\n{body}"

    def open(self, payload: str, now_ms: int) -> tuple[int, str]:
        """The node that sealed `payload`, and its events."""
        first, _, body = payload.partition("\n")
        parts = first.split(" ")
        if len(first) >= SEAL_HEAD_MAX or len(parts) != 5 or parts[0] != SEAL:
            raise RemoteError("a notification not sealed by a node of this line")
        node, stamp, counter = (_number(t, n) for t, n in zip(
            parts[1:4], ("node", "time", "counter"), strict=True))
        if not hmac.compare_digest(parts[4].encode(errors="surrogatepass"),
                                   self._mac(" ".join(parts[1:4]), body).encode()):
            raise RemoteError("a notification with a wrong seal (not from a node of this"
                              " line)")
        if stamp < self._since_ms:
            raise RemoteError(f"a notification from node {node} sealed before this node"
                              " listened (replayed, or the nodes' clocks disagree)")
        if abs(now_ms - stamp) > SEAL_WINDOW_MS:
            raise RemoteError(f"a notification from node {node} sealed"
                              f" {(now_ms - stamp) / 1000:.0f} s from this node's time"
                              " (replayed, or the nodes' clocks disagree)")
        last = self._last.get(node)
        if last is not None and counter <= last[0]:
            raise RemoteError(f"a notification from node {node} heard already (replayed)")
        self._last[node] = (counter, stamp)
        if len(self._last) > 64:  # the nodes that have not spoken within the window
            self._last = {n: v for n, v in self._last.items()
                          if v[1] >= now_ms - SEAL_WINDOW_MS}
        return node, body

    def _mac(self, head: str, body: str) -> str:
        digest = hmac.new(self._key, f"{head}\n{body}".encode(errors="surrogatepass"),
                          hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:MAC_BYTES]).decode().rstrip("=")
