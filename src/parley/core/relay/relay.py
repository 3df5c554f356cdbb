"""The line server's decisions, with no sockets and no clock: the relay.

`Relay` holds every session and decides everything the server does with
them: who logs in (challenge-response against the enrolled key), what each
frame means, who may send to whom (the parties' lines), how fast (per
device, whichever connection a frame comes on), how much may wait for whom
(`Quota`), what a device is sent of its mailbox and when (a window of
unacknowledged envelopes, topped up as acknowledgements come), who hears of
whose presence, and when a connection must go (a bad frame before login, too
many bad frames after, a login that took too long, a device revoked or
replaced, a newer session of the same device). The aiohttp layer in
`server/app.py` only moves bytes: it hands each WebSocket message to
`receive` with ``now`` and carries out what the relay asked of each `Port`.

The store is behind `RelayStore` (SQLite or PostgreSQL, `server/store.py`); it is the
system of record -- an envelope the relay calls stored is in it, committed
before any frame that says so leaves (the adapter commits the store's open
group before every write; see `parley.outbox`).

Every frame is checked by `core.wire` (the usual ``send`` by `fastpath` in
one go); a bad one gets an ``error`` naming what was wrong and, after login,
the session carries on.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .. import wire
from ..encoding import b64d, b64e
from ..envelope import Envelope
from ..errors import ErrorCode, ParleyError, RemoteError
from ..keys import DevicePublicKeys, split_device_id
from ..kinds import kind_of
from ..messages import MAX_AGE_MS as MESSAGE_MAX_AGE_MS
from ..replay import MAX_FUTURE_SKEW_MS
from ..turn import TurnConfig, grant
from .buckets import TokenBucket
from .fastpath import Header, quick_send
from .limits import BAD_FRAME_BURST, Limits
from .lines import LineBoard
from .peers import NO_PEERS, Peers

# Errors that say the client itself sent something malformed; these spend its budget.
_MALFORMED = frozenset({ErrorCode.BAD_MESSAGE, ErrorCode.TOO_LARGE, ErrorCode.UNKNOWN_TYPE})
BUCKET_SWEEP_MS = 10_000
# An acknowledged envelope's id is kept as long as its recipient would take the same id
# again for a replay: a sender that never heard "sent" may send it again that late.
ACKED_KEPT_MS = MESSAGE_MAX_AGE_MS + MAX_FUTURE_SKEW_MS
ACKED_SWEEP_MS = 3_600_000


class Port(Protocol):
    """One connection, as the relay sees it: the adapter moves its bytes."""

    def put(self, frame: str) -> None:
        """Queue one frame to be written (in this turn's batch)."""

    @property
    def full(self) -> bool:
        """Has it more queued than a reader should be sent before it catches up?"""

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then close with this WebSocket close code."""


class RelayStore(Protocol):
    """What the relay needs of the store. Writes join the store's open group."""

    def device(self, ident: str) -> DevicePublicKeys | None:
        """An enrolled device's public keys; None if unknown or revoked."""

    def revoked(self, ident: str) -> bool: ...

    def devices(self, party: str) -> list[DevicePublicKeys]:
        """The party's enrolled devices that are not revoked."""

    def device_keys(self) -> dict[str, bytes]:
        """Every enrolled, unrevoked device: id -> signing key (to notice changes)."""

    def directory_version(self) -> int:
        """Changes whenever another process changed devices, parties or lines."""

    def principal_exists(self, name: str) -> bool: ...

    def principal(self, name: str) -> Any:
        """The party's display name and time zone (``.display``, ``.timezone``), or None."""

    def line_peers(self, party: str) -> list[str]: ...

    def may_talk(self, a: str, b: str) -> bool: ...

    def line_media(self, a: str, b: str) -> str:
        """The line's media policy: "any" (direct allowed) or "relay" (TURN only)."""

    def store_envelope(self, envelope_id: str, sender: str, recipient: str, body: str,
                       now_ms: int) -> int | None:
        """Store once; its mailbox position, or None if this id was already waiting or was
        acknowledged (within `ACKED_KEPT_MS`): it is never stored, or delivered, twice."""

    def store_envelopes(self, rows: list[tuple[str, str, str, str, int]]
                        ) -> dict[tuple[str, str], int]:
        """Store each once (id, sender, recipient, body, stored_ms): positions by
        (recipient, id) of those stored."""

    def delivered_many(self, acks: list[tuple[str, str]]) -> list[tuple[str, str, str, int]]:
        """Delete the acknowledged (recipient, id): (recipient, id, sender, size) of each."""

    def lock_mailboxes(self, recipients: Iterable[str]) -> None:
        """These recipients' mailboxes are written by this group alone until it commits
        (several nodes on one database; nothing to do for one)."""

    def pending(self, recipient: str, after_seq: int, limit: int
                ) -> list[tuple[int, str, str]]:
        """Up to `limit` stored envelopes after `after_seq`, oldest first: (seq, id, frame)."""

    def delivered(self, recipient: str, envelope_id: str) -> tuple[str, int] | None:
        """Delete an acknowledged envelope: (its sender, its size), or None if not there."""

    def waiting(self, recipient: str, envelope_id: str) -> bool:
        """Is this envelope stored for `recipient` (not yet acknowledged)?"""

    def was_delivered(self, recipient: str, envelope_id: str) -> bool:
        """Was it stored for `recipient`, and acknowledged, within `ACKED_KEPT_MS`?"""

    def forget_acked(self, stored_before_ms: int) -> int:
        """Forget the acknowledged ids stored before then."""

    def mailbox_usage(self) -> Iterable[tuple[str, str, int, int]]:
        """What waits: (recipient, sender, envelopes, bytes) for every pair."""


@dataclass
class Counters:
    relayed: int = 0
    stored: int = 0
    refused: int = 0
    bad_input: int = 0
    logins: int = 0
    login_failures: int = 0
    rate_limited: int = 0
    quota_exceeded: int = 0
    closed_bad_frames: int = 0
    closed_before_login: int = 0
    login_timeouts: int = 0
    sessions_replaced: int = 0
    revoked_sessions_closed: int = 0


@dataclass(eq=False)  # each is itself: compared and hashed by identity
class Session:
    port: Port
    source: str
    opened_ms: int
    batched: bool
    nonce: str = field(default_factory=lambda: b64e(secrets.token_bytes(24)))
    sid: str = field(default_factory=lambda: secrets.token_urlsafe(12))  # across nodes
    device: str | None = None
    party: str | None = None
    receive: bool = True
    login_key: bytes = b""
    closed: bool = False  # the relay closed it: nothing more it sends is read
    congested: list[Port] = field(default_factory=list)  # to wait for before reading on
    # Stored envelopes sent here and not yet acknowledged (id -> size), and how far
    # through the mailbox this session has been sent. `backlog`: more may wait in the
    # store than it was sent (then new ones wait their turn there too, in order).
    inflight: dict[str, int] = field(default_factory=dict)
    inflight_bytes: int = 0
    cursor: int = 0
    backlog: bool = True
    acked: list[str] = field(default_factory=list)  # acks of this message, to confirm

    @property
    def who(self) -> str:
        return self.device or self.source


class Quota:
    """What waits on the server, per recipient and per sender, against the limits."""

    def __init__(self, limits: Limits, usage: Iterable[tuple[str, str, int, int]]) -> None:
        self.limits = limits
        self.recipients: dict[str, list[int]] = {}  # device -> [envelopes, bytes]
        self.senders: dict[str, list[int]] = {}
        self.pairs: dict[str, list[int]] = {}  # "sender recipient" -> [envelopes, bytes]
        for recipient, sender, count, size in usage:
            self._add(self.recipients, recipient, count, size)
            self._add(self.senders, sender, count, size)
            self._add(self.pairs, f"{sender} {recipient}", count, size)

    @staticmethod
    def _add(table: dict[str, list[int]], device: str, count: int, size: int) -> None:
        entry = table.get(device)
        if entry is None:
            entry = table[device] = [0, 0]
        entry[0] += count
        entry[1] += size
        # (Below zero is kept: on several nodes an ack may be heard of before the store
        # it undoes was counted here; it comes to zero when that is.)
        if entry[0] == 0:
            del table[device]

    def check(self, sender: str, recipient: str, size: int) -> None:
        limits = self.limits
        waiting = self.recipients.get(recipient, (0, 0))
        if waiting[0] + 1 > limits.mailbox_envelopes or \
                waiting[1] + size > limits.mailbox_bytes:
            raise RemoteError(
                f"{recipient}'s mailbox on this server is full ({waiting[0]:,} envelopes,"
                f" {_mib(waiting[1])} waiting; the limit is {limits.mailbox_envelopes:,} and"
                f" {_mib(limits.mailbox_bytes)}); this envelope was not stored",
                code=ErrorCode.QUOTA_EXCEEDED,
                hint=f"nothing was lost: send it again once {recipient} has come online and"
                     " read what waits (the server operator sets --mailbox-envelopes and"
                     " --mailbox-mib)")
        pair = self.pairs.get(f"{sender} {recipient}", (0, 0))
        share = limits.sender_share
        if pair[0] + 1 > share * limits.mailbox_envelopes or \
                pair[1] + size > share * limits.mailbox_bytes:
            raise RemoteError(
                f"you already have {pair[0]:,} envelopes ({_mib(pair[1])}) waiting for"
                f" {recipient}, as much of its mailbox as one sender may fill"
                f" ({share:.0%}); this one was not stored",
                code=ErrorCode.QUOTA_EXCEEDED,
                hint=f"nothing was lost: send it again once {recipient} has read what waits"
                     " (the server operator sets --sender-share)")
        mine = self.senders.get(sender, (0, 0))
        if mine[0] + 1 > limits.sender_envelopes or mine[1] + size > limits.sender_bytes:
            raise RemoteError(
                f"you already have {mine[0]:,} envelopes ({_mib(mine[1])}) waiting on this"
                f" server for devices that have not read them (the limit is"
                f" {limits.sender_envelopes:,} and {_mib(limits.sender_bytes)}); this one was"
                " not stored",
                code=ErrorCode.QUOTA_EXCEEDED,
                hint="nothing was lost: send it again as the recipients come online (the"
                     " server operator sets --sender-envelopes and --sender-mib)")

    def added(self, sender: str, recipient: str, size: int) -> None:
        self._add(self.recipients, recipient, 1, size)
        self._add(self.senders, sender, 1, size)
        self._add(self.pairs, f"{sender} {recipient}", 1, size)

    def removed(self, sender: str, recipient: str, size: int) -> None:
        self._add(self.recipients, recipient, -1, -size)
        self._add(self.senders, sender, -1, -size)
        self._add(self.pairs, f"{sender} {recipient}", -1, -size)

    def waiting(self) -> tuple[int, int]:
        """Envelopes and bytes waiting on the server, in all."""
        return (sum(e[0] for e in self.recipients.values()),
                sum(e[1] for e in self.recipients.values()))


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


@dataclass(eq=False)
class _Stored:
    """An envelope to be stored with the rest of its turn (`Relay.flush`)."""
    session: Session
    envelope_id: str
    sender: str
    recipient: str
    body: str
    size: int
    ref: Any
    now_ms: int
    again: bool = False  # the same envelope a second time in one turn


class Relay:
    """Every session of one server process. Pure: give it messages and `now`.

    Stored envelopes and acknowledgements of one event-loop turn are written
    together, one statement each (`flush`, which the adapter calls before it
    commits and before any frame leaves): what is said of them ("sent", the
    delivery) is said then. A frame answered at once by a session with stored
    envelopes waiting is answered after them (`_send` flushes first), so that
    each session's answers keep the order of its frames.
    """

    def __init__(self, store: RelayStore, limits: Limits, origin: str, now_ms: int,
                 lines: LineBoard | None = None, turn: TurnConfig | None = None) -> None:
        self.store = store
        self.turn = turn  # TURN credentials handed to devices for their calls (core.turn)
        self.lines = lines  # line-test results filed and shown (None: not kept here)
        self.limits = limits
        self.origin = origin
        self.counters = Counters()
        self.sessions: set[Session] = set()
        self.online: dict[str, list[Session]] = {}  # device -> its receiving sessions
        self._of_device: dict[str, list[Session]] = {}  # every session, oldest first
        self._unauthenticated: dict[Session, None] = {}  # oldest first
        self._rates: dict[str, tuple[TokenBucket, TokenBucket, TokenBucket]] = {}
        self._routes: set[tuple[str, str]] = set()  # (party, device) pairs allowed
        self._directory_version = store.directory_version()
        self._device_keys = store.device_keys()
        self._next_sweep_ms = now_ms + BUCKET_SWEEP_MS
        self._next_acked_sweep_ms = now_ms  # the first tick forgets what aged out while away
        self.quota = Quota(limits, store.mailbox_usage())
        # Other nodes serving the same database (server.cluster); none by default.
        self.peers: Peers = NO_PEERS
        self.elsewhere: dict[str, int] = {}  # device -> receiving sessions on other nodes
        # Devices with sessions on other nodes too: what they spend of their rate here is
        # counted (`spent`) and told to the others, so the limit holds across nodes.
        self.shared: set[str] = set()
        self.spent: dict[str, list[int]] = {}  # device -> [frames, bytes] since last told
        self.housekeeping = True  # sweeps the store's shared tables (one node of several)
        self._stored: list[_Stored] = []  # this turn's, to be written (`flush`)
        self._storing: set[tuple[str, str]] = set()  # their (recipient, id)
        self._waiting: set[Session] = set()  # the sessions that sent them
        self._acks: list[tuple[str, str]] = []  # this turn's acknowledgements (device, id)
        self._acked_now: set[tuple[str, str]] = set()  # the same, to read past in the store

    # -- connections ------------------------------------------------------------------

    def connect(self, port: Port, source: str, now_ms: int, *, batched: bool) -> Session:
        """A WebSocket is open: challenge it to log in."""
        session = Session(port=port, source=source, opened_ms=now_ms, batched=batched)
        self.sessions.add(session)
        self._unauthenticated[session] = None
        self._send(session, {"t": "challenge", "nonce": session.nonce, "server": self.origin})
        return session

    def disconnect(self, session: Session) -> None:
        session.closed = True
        self.sessions.discard(session)
        self._unauthenticated.pop(session, None)
        device = session.device
        if device is None:
            return
        mine = self._of_device.get(device)
        if mine is not None and session in mine:
            mine.remove(session)
            if not mine:
                del self._of_device[device]
            self.peers.logged_out(session.sid, device)
        if session.receive:
            sessions = self.online.get(device)
            if sessions is not None and session in sessions:
                sessions.remove(session)
                if not sessions:
                    del self.online[device]
                    if not self.elsewhere.get(device):
                        self._presence(device, False)

    def close(self, session: Session, code: int, reason: str) -> None:
        """Stop reading it and have the adapter close it (what is queued goes first)."""
        if not session.closed:
            session.closed = True
            session.port.close(code, reason)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            self.close(session, code, reason)

    # -- input ------------------------------------------------------------------------

    def receive(self, session: Session, raw: str, now_ms: int) -> None:
        """One WebSocket text message: a frame, or on a batching connection several."""
        if session.closed:
            return
        if not session.batched:
            self._frame(session, raw, now_ms)
        else:
            try:
                frames = wire.split_batch(raw)
            except RemoteError as exc:
                self._bad(session, exc, None, now_ms)
                return
            for frame in frames:
                if session.closed:  # the rest of a batch that came with a failed login
                    break
                self._frame(session, frame, now_ms)
        if session.acked:
            # Written after the store's group is committed, like every frame (see Outbox).
            # (Its own ids, no ref: it need not wait for the turn's stored envelopes.)
            self._send(session, {"t": "acked", "ids": session.acked}, in_order=False)
            session.acked = []

    def binary(self, session: Session, now_ms: int) -> None:
        self._bad(session, RemoteError(
            "binary frames are not part of the protocol; send JSON text frames"), None, now_ms)

    def _frame(self, session: Session, raw: str, now_ms: int) -> None:
        ref = None
        device = session.device
        if device is not None and len(raw) <= 200 and '"ack"' in raw \
                and self._inflight_ack(session, raw):
            return  # an ack of what we sent it costs no rate: the window bounds those
        try:
            if device is not None:
                frames, size, _ = self._rates[device]
                if not frames.take(now_ms):
                    self._rate_limited(raw, f"{self.limits.rate_limit:g} frames")
                if not size.take(now_ms, len(raw)):
                    self._rate_limited(raw, f"{self.limits.byte_rate_limit / 1024 / 1024:g} MiB")
                if device in self.shared:
                    spent = self.spent.setdefault(device, [0, 0])
                    spent[0] += 1
                    spent[1] += len(raw)
                quick = quick_send(raw)
                if quick is not None:  # the common case, checked in one go (see fastpath)
                    msg, header = quick
                    ref = msg.get("ref")
                    self._relay(session, msg, header, now_ms)
                    return
            msg = wire.parse_message(raw, wire.CLIENT_MESSAGES, what="message")
            ref = msg.get("ref")
            kind = msg["t"]
            if kind == "hello":
                self._hello(session, msg, now_ms)
            elif device is None:
                raise RemoteError(
                    f"{kind} before login", code=ErrorCode.NOT_AUTHENTICATED,
                    hint="answer the challenge with a signed hello first")
            elif kind == "send":
                env = Envelope.from_json(msg["env"])
                self._relay(session, msg, (env.id, env.sender, env.recipient, env.type), now_ms)
            elif kind == "ack":
                self._ack(device, msg["id"])
                session.acked.append(msg["id"])
            elif kind == "directory":
                self._directory(session, msg)
            elif kind == "ping":
                self._send(session, {"t": "pong", "ref": ref, "time": now_ms})
            elif kind in ("linetest", "lines"):
                self._lines(session, msg, now_ms)
            elif kind == "turn":
                self._turn(session, msg, now_ms)
        except _RateLimited as limited:
            self._reply_error(session, limited.error, limited.ref)
        except RemoteError as exc:
            self._bad(session, exc, ref, now_ms)

    def _inflight_ack(self, session: Session, raw: str) -> bool:
        """Handle an ack of an envelope in flight to this device; False: not one."""
        assert session.device is not None
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return False
        ident = msg.get("id") if isinstance(msg, dict) and msg.keys() == {"t", "id"} \
            and msg["t"] == "ack" else None
        if not isinstance(ident, str) or not any(
                ident in s.inflight for s in self.online.get(session.device, ())):
            return False
        self._ack(session.device, ident)
        session.acked.append(ident)
        return True

    def pause_for(self, session: Session, now_ms: int) -> float:
        """Seconds before reading more from this session: its device is over its rate.

        Instead of reading, parsing and refusing what a device sends too fast, the
        adapter stops reading its socket until tokens are back, which costs nothing
        (the kernel holds the rest, and the sender waits for it).
        """
        if session.device is None:
            return 0.0
        buckets = self._rates.get(session.device)
        if buckets is None:
            return 0.0
        return min(2.0, max(buckets[0].wait_ms(now_ms), buckets[1].wait_ms(now_ms)) / 1000)

    def reload_quota(self) -> None:
        """Count what waits from the store again (after a commit failed, or another process
        changed the mailboxes)."""
        self.quota = Quota(self.limits, self.store.mailbox_usage())

    def _rate_limited(self, raw: str, what: str) -> None:
        self.counters.rate_limited += 1
        raise _RateLimited(_ref_of(raw), RemoteError(
            "too many messages; slow down", code=ErrorCode.RATE_LIMITED,
            hint=f"this server takes {what} a second from each device, in bursts of twice"
                 " that; this one was refused: send it again shortly"))

    def _bad(self, session: Session, exc: ParleyError, ref: str | None, now_ms: int) -> None:
        """Answer a refused frame; close a connection that has spent its budget."""
        self.counters.bad_input += 1
        self._reply_error(session, exc, ref)
        if session.device is None:
            # Before login only a hello is right; anything else is answered once.
            self.counters.closed_before_login += 1
            self.close(session, wire.CloseCode.NOT_LOGGED_IN, "not logged in")
        elif exc.code in _MALFORMED and not self._rates[session.device][2].take(now_ms):
            self.counters.closed_bad_frames += 1
            self._reply_error(session, RemoteError(
                f"closing: more than {self.limits.bad_frame_limit:g} malformed frames a"
                " minute", code=ErrorCode.BAD_FRAMES,
                hint="fix the client; it may reconnect at once"))
            self.close(session, wire.CloseCode.BAD_FRAMES, "too many bad frames")

    # -- login ------------------------------------------------------------------------

    def _hello(self, session: Session, msg: dict[str, Any], now_ms: int) -> None:
        if session.device is not None:
            raise RemoteError("already logged in")
        device = msg["device"]
        keys = self.store.device(device)
        signature = b64d(msg["sig"], what="hello.sig", max_bytes=64)
        if keys is None or not keys.verify(
                signature, wire.auth_statement(session.nonce, device, self.origin)):
            self.counters.login_failures += 1
            if keys is not None:
                err = RemoteError("the login signature does not verify",
                                  code=ErrorCode.AUTH_FAILED,
                                  hint=f"this device's key is not the one enrolled for {device};"
                                       " re-enroll it")
            elif self.store.revoked(device):
                err = RemoteError(f"{device} was revoked by this server's operator",
                                  code=ErrorCode.DEVICE_REVOKED,
                                  hint="ask the operator for a new enrollment code ('parley"
                                       " server device replace') and enroll again")
            else:
                err = RemoteError(f"unknown device {device}", code=ErrorCode.UNKNOWN_DEVICE,
                                  hint="enroll it with 'parley terminal enroll'")
            self._reply_error(session, err)
            self.close(session, wire.CloseCode.LOGIN_REFUSED, str(err.code))
            return
        party, _ = split_device_id(device)
        session.device, session.party, session.login_key = device, party, keys.sign
        session.receive = msg.get("receive", True)
        self._unauthenticated.pop(session, None)
        self.counters.logins += 1
        if device not in self._rates:
            limits = self.limits
            self._rates[device] = (
                TokenBucket(limits.rate_limit, 2 * limits.rate_limit, now_ms),
                TokenBucket(limits.byte_rate_limit, 2 * limits.byte_rate_limit, now_ms),
                TokenBucket(limits.bad_frame_limit / 60, BAD_FRAME_BURST, now_ms))
        self._send(session, {"t": "welcome", "device": device, "party": party,
                             "peers": self.store.line_peers(party)})
        if session.receive:
            sessions = self.online.setdefault(device, [])
            sessions.append(session)
            if len(sessions) == 1 and not self.elsewhere.get(device):
                self._presence(device, True)
            self._top_up(session)
        mine = self._of_device.setdefault(device, [])
        mine.append(session)
        self.peers.logged_in(session.sid, device, session.receive)
        while len(mine) > self.limits.max_sessions_per_device:
            self.replace(mine[0])

    def replace(self, session: Session) -> None:
        """Close a device's oldest session for a newer one (here or on another node)."""
        self.counters.sessions_replaced += 1
        self._reply_error(session, RemoteError(
            f"closing: {session.device} logged in again, and a device holds at most"
            f" {self.limits.max_sessions_per_device} sessions",
            code=ErrorCode.TOO_MANY_CONNECTIONS))
        self.close(session, wire.CloseCode.REPLACED, "replaced by a newer session")
        self.disconnect(session)

    # -- envelopes ----------------------------------------------------------------------

    def _relay(self, session: Session, msg: dict[str, Any], header: Header,
               now_ms: int) -> None:
        """Deliver or store a checked envelope, if it comes from this device and may go there."""
        party = session.party
        assert party is not None
        envelope_id, sender, recipient, type_ = header
        if sender != session.device:
            raise RemoteError(f"envelope sender {sender} is not you ({session.device})",
                              hint="sign in as the device that sends")
        if (party, recipient) not in self._routes:
            self._route(party, recipient)
        body = wire.encode_frame({"t": "deliver", "env": msg["env"]})
        targets = self.online.get(recipient, ())
        ref = msg.get("ref")
        if msg.get("ephemeral"):
            elsewhere = self.elsewhere.get(recipient)
            if not targets and not elsewhere:
                self.counters.refused += 1
                raise RemoteError(f"{recipient} is not online",
                                  code=ErrorCode.RECIPIENT_OFFLINE,
                                  hint="call again when the other terminal is connected")
            self._fanout(session, targets, body)
            if elsewhere:
                self.peers.forward(recipient, body)
            self.counters.relayed += 1
            self._send(session, {"t": "sent", "id": envelope_id, "status": "delivered",
                                 "ref": ref})
            return
        registered = kind_of(type_)
        if registered is not None and not registered.stored:
            # Call signaling is now or never; stored, it would wait for an ack that the
            # recipient never sends for it, and fill the mailbox for good.
            raise RemoteError(f"{type_} envelopes are never stored; send them ephemeral",
                              hint="set ephemeral: true")
        size = len(body)
        wire.check_storable_id(envelope_id)
        if (recipient, envelope_id) in self._storing:  # twice in one turn: once stored
            self._stored.append(_Stored(session, envelope_id, sender, recipient, body, size,
                                        ref, now_ms, again=True))
            self._waiting.add(session)
            return
        try:
            self.quota.check(sender, recipient, size)
        except RemoteError as exc:
            self.flush()
            if self.store.waiting(recipient, envelope_id) or \
                    self.store.was_delivered(recipient, envelope_id):
                self._sent_again(session, recipient, envelope_id, ref)
                return
            self.counters.quota_exceeded += 1
            self._send(session, wire.error_message(exc.code, exc.message, exc.hint, ref,
                                                   envelope_id))
            return
        self.quota.added(sender, recipient, size)  # taken back if it was not stored
        self._stored.append(_Stored(session, envelope_id, sender, recipient, body, size, ref,
                                    now_ms))
        self._storing.add((recipient, envelope_id))
        self._waiting.add(session)

    @property
    def has_writes(self) -> bool:
        """Stored envelopes or acknowledgements wait to be written (`flush`)."""
        return bool(self._stored or self._acks)

    def drop_writes(self) -> None:
        """Forget what waits to be written (a commit failed: every session is cut off, and
        its terminal sends again what it did not hear was stored)."""
        self._take_writes()

    def _take_writes(self) -> tuple[list[tuple[str, str]], list[_Stored]]:
        """What waits to be written (acks, stored envelopes), no longer waiting."""
        acks, self._acks = self._acks, []
        stored, self._stored = self._stored, []
        self._acked_now.clear()
        self._storing.clear()
        self._waiting.clear()
        return acks, stored

    def flush(self) -> None:
        """Write this turn's acknowledgements and stored envelopes (one statement each, in
        the store's open group), and say what became of each."""
        if not (self._acks or self._stored):
            return
        acks, stored = self._take_writes()
        try:
            # Both first, in one go (see lock_mailboxes): the same order on every node.
            self.store.lock_mailboxes({a[0] for a in acks} | {s.recipient for s in stored})
            for recipient, envelope_id, sender, size in (self.store.delivered_many(acks)
                                                         if acks else ()):
                self.quota.removed(sender, recipient, size)
                self.peers.acked(recipient, sender, size, envelope_id)
            seqs = self.store.store_envelopes([(s.envelope_id, s.sender, s.recipient, s.body,
                                                s.now_ms) for s in stored if not s.again]) \
                if stored else {}
        except BaseException:
            for s in stored:  # none was stored (the failed group is rolled back)
                if not s.again:
                    self.quota.removed(s.sender, s.recipient, s.size)
            raise
        for s in stored:
            seq = None if s.again else seqs.get((s.recipient, s.envelope_id))
            if seq is None:  # waiting already, or delivered already
                if not s.again:
                    self.quota.removed(s.sender, s.recipient, s.size)
                self._sent_again(s.session, s.recipient, s.envelope_id, s.ref)
            else:
                self._stored_now(s, seq)

    def _stored_now(self, stored: _Stored, seq: int) -> None:
        session, envelope_id, size = stored.session, stored.envelope_id, stored.size
        recipient, body = stored.recipient, stored.body
        self.counters.stored += 1
        self.peers.stored(seq, recipient, stored.sender, size)
        targets = self.online.get(recipient, ())
        delivered = False
        window, window_bytes = self.limits.mailbox_window, self.limits.mailbox_window_bytes
        for target in targets:
            if target.backlog:
                continue  # older ones wait for it in the store: it goes after them
            if target.inflight and (len(target.inflight) >= window
                                    or target.inflight_bytes + size > window_bytes):
                target.backlog = True  # it waits in the store until acks make room
                continue
            target.inflight[envelope_id] = size
            target.inflight_bytes += size
            target.cursor = seq
            target.port.put(body)
            if target.port.full:
                session.congested.append(target.port)
            delivered = True
        if delivered:
            self.counters.relayed += 1
        self._send(session, {"t": "sent", "id": envelope_id,
                             "status": "delivered" if delivered else "stored",
                             "ref": stored.ref})

    def _sent_again(self, session: Session, recipient: str, envelope_id: str,
                    ref: Any) -> None:
        """An envelope sent again because its "sent" was lost: it waits already, or was
        delivered already -- either way once, and its sender is told so."""
        status = "stored" if self.store.waiting(recipient, envelope_id) else "delivered"
        self._send(session, {"t": "sent", "id": envelope_id, "status": status, "ref": ref})

    def _route(self, party: str, recipient: str) -> None:
        """May `party` send to `recipient`? A yes is remembered until the directory changes."""
        keys = self.store.device(recipient)
        if keys is None:
            self.counters.refused += 1
            raise RemoteError(f"no device {recipient}", code=ErrorCode.UNKNOWN_DEVICE)
        if not self.store.may_talk(party, keys.party):
            self.counters.refused += 1
            raise RemoteError(f"there is no line between {party} and {keys.party}",
                              code=ErrorCode.NO_LINE,
                              hint="the server operator creates lines with"
                                   " 'parley server line add'")
        self._routes.add((party, recipient))

    def _ack(self, device: str, envelope_id: str) -> None:
        wire.check_storable_id(envelope_id)
        self._acks.append((device, envelope_id))  # deleted with the turn's others (flush)
        self._acked_now.add((device, envelope_id))
        self.acknowledged(device, envelope_id)

    def acknowledged(self, device: str, envelope_id: str) -> None:
        """An envelope acknowledged (here, or by a session on another node): no session
        of the device here waits for it any longer, and the next ones may follow."""
        for session in self.online.get(device, ()):
            size = session.inflight.pop(envelope_id, None)
            if size is not None:
                session.inflight_bytes -= size
                if session.backlog:
                    self._top_up(session)

    def _top_up(self, session: Session) -> None:
        """Send the next stored envelopes, while the window has room."""
        if not session.backlog or session.closed:
            return
        assert session.device is not None
        window, window_bytes = self.limits.mailbox_window, self.limits.mailbox_window_bytes
        room = window - len(session.inflight)
        if room <= 0 or session.inflight_bytes >= window_bytes:
            return
        rows = self.store.pending(session.device, session.cursor, room)
        for seq, envelope_id, body in rows:
            if session.inflight and session.inflight_bytes + len(body) > window_bytes:
                return  # the window is full by size: the rest follow acks
            # (Not one it acknowledged this turn: still in the store until `flush`.)
            if envelope_id not in session.inflight and \
                    (session.device, envelope_id) not in self._acked_now:
                session.inflight[envelope_id] = len(body)
                session.inflight_bytes += len(body)
                session.port.put(body)
            session.cursor = seq
        if len(rows) < room:
            session.backlog = False  # everything stored has been sent: new ones go at once

    def _directory(self, session: Session, msg: dict[str, Any]) -> None:
        party = msg["party"]
        assert session.party is not None
        if not self.store.principal_exists(party):
            raise RemoteError(f"no party named {party!r}", code=ErrorCode.UNKNOWN_PARTY)
        if not self.store.may_talk(session.party, party):
            raise RemoteError(f"there is no line between {session.party} and {party}",
                              code=ErrorCode.NO_LINE)
        devices = self.store.devices(party)
        principal = self.store.principal(party)
        self._send(session, {
            "t": "directory", "party": party, "ref": msg.get("ref"),
            "display": principal.display[:200], "timezone": principal.timezone[:64],
            "devices": [d.to_json() for d in devices],
            "online": [d.device_id for d in devices
                       if d.device_id in self.online or self.elsewhere.get(d.device_id)],
        })

    def _turn(self, session: Session, msg: dict[str, Any], now_ms: int) -> None:
        """TURN credentials for a call with a party this device has a line with."""
        assert session.device is not None and session.party is not None
        party = msg["party"]
        if not self.store.may_talk(session.party, party):
            raise RemoteError(f"there is no line between {session.party} and {party}",
                              code=ErrorCode.NO_LINE)
        policy = self.store.line_media(session.party, party)
        if self.turn is None:
            # No relay here: a line that must go through one cannot be called at all.
            self._send(session, {"t": "turn", "ref": msg.get("ref"), "servers": [],
                                 "expires_ms": 0, "policy": policy})
            return
        self._send(session, {"t": "turn", "ref": msg.get("ref"),
                             **grant(self.turn, session.device, now_ms, policy)})

    def _lines(self, session: Session, msg: dict[str, Any], now_ms: int) -> None:
        if self.lines is None:
            raise RemoteError("this server keeps no line tests", code=ErrorCode.UNKNOWN_TYPE)
        assert session.device is not None and session.party is not None
        if msg["t"] == "lines":
            self._send(session, {"t": "lines", "ref": msg.get("ref"),
                                 "lines": self.lines.for_party(session.party, now_ms)})
            return
        status, reasons = self.lines.file(session.device, msg["record"], now_ms)
        self.peers.line_filed(msg["record"]["line"])
        self._send(session, {"t": "filed", "ref": msg.get("ref"),
                             "test_id": msg["record"]["test_id"], "status": status,
                             "reasons": reasons[:50]})

    # -- time and the directory -----------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Timeouts and housekeeping; the adapter calls it a few times a second."""
        deadline = now_ms - int(self.limits.login_timeout * 1000)
        while self._unauthenticated:
            session = next(iter(self._unauthenticated))
            if session.opened_ms > deadline:
                break
            del self._unauthenticated[session]
            self.counters.login_timeouts += 1
            self._reply_error(session, RemoteError(
                f"no login within {self.limits.login_timeout:g} s",
                code=ErrorCode.LOGIN_TIMEOUT, hint="answer the challenge at once"))
            self.close(session, wire.CloseCode.LOGIN_TIMEOUT, "not logged in")
        version = self.store.directory_version()
        if version != self._directory_version:
            self._directory_version = version
            self.directory_changed()
        if now_ms >= self._next_acked_sweep_ms and self.housekeeping:
            self._next_acked_sweep_ms = now_ms + ACKED_SWEEP_MS
            self.store.forget_acked(now_ms - ACKED_KEPT_MS)
        if now_ms >= self._next_sweep_ms:
            self._next_sweep_ms = now_ms + BUCKET_SWEEP_MS
            for device in [d for d, buckets in self._rates.items() if d not in self._of_device
                           and all(b.full(now_ms) for b in buckets)]:
                del self._rates[device]  # a fresh one would be the same: no gain in leaving

    def directory_changed(self) -> None:
        """Devices were enrolled, replaced or revoked (here or by the admin CLI)."""
        self.flush()  # (what waits to be stored counts in the quota being read again)
        self._routes.clear()
        self.reload_quota()  # a revoked device's mailbox is emptied with it
        before, self._device_keys = self._device_keys, self.store.device_keys()
        changed = {d for d in set(before) | set(self._device_keys)
                   if before.get(d) != self._device_keys.get(d)}
        for device in changed:
            for session in list(self._of_device.get(device, ())):
                if session.login_key != self._device_keys.get(device):
                    self.counters.revoked_sessions_closed += 1
                    self._reply_error(session, RemoteError(
                        f"{device} was revoked or its keys replaced by the server's operator",
                        code=ErrorCode.DEVICE_REVOKED))
                    self.close(session, wire.CloseCode.DEVICE_REVOKED, "device revoked")
                    self.disconnect(session)
        for party in sorted({split_device_id(d)[0] for d in changed}):
            self._tell_watchers(party, None, wire.encode_frame({"t": "roster", "party": party}))

    # -- what other nodes did (server.cluster) -------------------------------------------

    def ring(self, recipient: str, seq: int) -> None:
        """Another node stored envelope `seq` for `recipient`: send it to its sessions here.

        Nodes commit in their own order, so `seq` may be below what a session was sent
        already (a later one, committed first): it reads the store again from there, and
        what it was sent already is not sent twice."""
        for session in self.online.get(recipient, ()):
            if seq <= session.cursor:
                session.cursor = seq - 1
            session.backlog = True
            self._top_up(session)

    def deliver_forwarded(self, recipient: str, body: str) -> None:
        """Call signaling another node forwarded for `recipient`'s sessions here."""
        for target in self.online.get(recipient, ()):
            target.port.put(body)
            self.counters.relayed += 1

    def set_elsewhere(self, device: str, receiving: int, shared: bool) -> None:
        """How many receiving sessions `device` has on other nodes (and whether any at
        all): its presence changes when that takes it online or offline in all."""
        before = self.elsewhere.get(device, 0)
        if receiving:
            self.elsewhere[device] = receiving
        else:
            self.elsewhere.pop(device, None)
        if shared:
            self.shared.add(device)
        else:
            self.shared.discard(device)
            self.spent.pop(device, None)
        if bool(before) != bool(receiving) and device not in self.online:
            self._presence(device, bool(receiving))

    def spent_elsewhere(self, device: str, frames: int, size: int, now_ms: int) -> None:
        """What `device` spent of its rate on another node, taken from its buckets here."""
        buckets = self._rates.get(device)
        if buckets is not None:
            buckets[0].spend(now_ms, frames)
            buckets[1].spend(now_ms, size)

    def sessions_of(self, device: str) -> list[Session]:
        """The device's logged-in sessions here, oldest first."""
        return list(self._of_device.get(device, ()))

    # -- output -------------------------------------------------------------------------

    def _presence(self, device: str, online: bool) -> None:
        party, _ = split_device_id(device)
        frame = wire.encode_frame({"t": "presence", "device": device, "online": online})
        self._tell_watchers(party, device, frame)

    def _tell_watchers(self, party: str, besides: str | None, frame: str) -> None:
        """Every receiving session of `party` and of the parties on a line with it."""
        watchers = set(self.store.line_peers(party)) | {party}
        for device, sessions in self.online.items():
            if device != besides and device.split("/", 1)[0] in watchers:
                for target in sessions:
                    target.port.put(frame)

    def _fanout(self, sender: Session, targets: Iterable[Session], body: str) -> None:
        for target in targets:
            target.port.put(body)
            if target.port.full:
                sender.congested.append(target.port)

    def _send(self, session: Session, message: dict[str, Any], *, in_order: bool = True
              ) -> None:
        if in_order and session in self._waiting:
            self.flush()  # its earlier frames are answered first
        if message.get("ref", "") is None:
            del message["ref"]
        session.port.put(wire.encode_frame(message))

    def _reply_error(self, session: Session, exc: ParleyError, ref: str | None = None) -> None:
        self._send(session, wire.error_message(exc.code, exc.message, exc.hint, ref))


class _RateLimited(Exception):
    """A frame refused for its device's rate: answered (with its ref), costing no budget."""

    def __init__(self, ref: str | None, error: RemoteError) -> None:
        super().__init__(error.message)
        self.ref, self.error = ref, error


def _ref_of(raw: str) -> str | None:
    """A refused frame's ref, if it is a small object with a short string one (a large
    frame is not parsed only to be refused: its sender is told without it)."""
    try:
        msg = orjson.loads(raw) if len(raw) <= 4096 else None
    except orjson.JSONDecodeError:
        return None
    ref = msg.get("ref") if isinstance(msg, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 40 else None
