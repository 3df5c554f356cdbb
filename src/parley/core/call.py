"""Calls: one state table and a book of calls driven by events and `now`.

How it works
------------
A call is requested by one device and accepted by another. All signaling
travels in envelopes (`envelope.py`); this module only decides *what* to send
and *when*, and never touches a socket, a clock or a media stack. Like aioquic's
connection, `CallBook` is driven by method calls that each take `now_ms` --
`place`, `receive`, `local_description`, `accept`, `hangup`, `media_connected`,
`handle_timer` -- and it answers with a list of `Action`s for the adapter to
carry out (send this envelope, start media, stop media, raise this alarm).

The wire, inside envelopes::

    caller                                   callee
      call.offer  {call_id, sdp, dtls, dtls_sig, media, expires, sas_commit,
                   media_key, media_epoch}  -->
                          <--  call.ringing {call_id}
                          <--  call.answer  {call_id, sdp, dtls, dtls_sig, sas_nonce,
                                             media_key, media_epoch}
      call.confirm {call_id, sas_nonce}     -->   (opens the caller's commitment)
      call.ice    {call_id, candidate...}   <->   (trickle, from browsers)
      call.media  {call_id, audio, video}   <->   (mute / camera off)
      call.rekey  {call_id, gen, media_key, media_epoch}  <->  (a new key, on schedule)
      call.rekeyed {call_id, gen, media_epoch}            <->  (installed: now seal with it)
      call.end    {call_id, reason}         <->   (hang up, decline, busy...)

``media_key`` is the sender's secret for the frame layer (`sframe`): every frame
it sends in this call, until its next key, is sealed with SFrame under keys
derived from it, so the media is protected by the envelopes' post-quantum seal
and not only by DTLS-SRTP's elliptic-curve exchange. `MediaKeys` actions hand the
derived keys to the media stack; a peer that sends none raises `media_unprotected`
and the call is not shown as verified.

An offer expires with the caller's patience: ``expires`` is the moment the
caller gives up reaching the callee (`REACH_TIMEOUT_MS` after the offer left),
signed with the rest, and an offer that arrives later is refused without
ringing -- a server that held it cannot make a phone ring, and a camera open,
for a call its caller has given up on.

Verification happens three times. (1) Every envelope is opened with the key
pinned for its sender (`trust.py`); with `require_verified` (the default
outside the demo) a call to or from an unverified device is refused. (2) Each
side signs its own DTLS fingerprint with its identity key; the peer checks that
signature and that the SDP names exactly that fingerprint. (3) Once DTLS is up,
the adapter reports the certificate actually seen in the handshake; it must
hash to the signed fingerprint, or the call is torn down as intercepted. The
SAS is derived from the call id, both identity keys and both signed
fingerprints (`safety.call_sas`), and shown on both sides.

The SAS cannot be ground. Six digits are a million values: with keys not
verified, a man in the middle who could choose his DTLS certificate *after*
seeing every other input could try certificates until both legs showed the
same code. So, as ZRTP does (RFC 6189, its Commit message), the SAS also
covers a random nonce from each side, and the caller commits to its nonce
(``sas_commit``, a hash) in the offer, before the callee reveals its own in
the answer; the caller opens the commitment with ``call.confirm``, and the
callee's call becomes active only once the nonce matches. Whoever plays
either side has fixed all it contributes before it learns the other side's
nonce, so each call gives an attacker one chance in a million, and only one
answer per call is ever taken.

The states and what moves between them are the `TRANSITIONS` table below; an
event that the table does not list for the current state is ignored (a late
envelope for an ended call) or, for local API calls, refused with a
`LocalError`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import notice, schema, sframe
from .encoding import b64d, b64e, canonical_json, random_id
from .errors import ErrorCode, LocalError, ParleyError, RemoteError, SecurityAlarm
from .keys import DeviceKeys, DevicePublicKeys
from .safety import call_sas, check_fingerprint, normalize_fingerprint, sas_commitment
from .sdp import MAX_SDP, check_secure_sdp
from .trust import Trust, verify_hint

RING_TIMEOUT_MS = 45_000  # nobody answered
MEDIA_SETUP_TIMEOUT_MS = 60_000  # our media stack never produced an offer (camera prompt?)
REACH_TIMEOUT_MS = 10_000  # after our offer left, the callee's terminal never said it rang
CONNECT_TIMEOUT_MS = 30_000  # answered, but ICE/DTLS never came up
# How long after they were sent call envelopes are accepted at all (core.kinds): an
# offer a little longer than its own expiry allows, the rest for as long as a call's
# setup takes.
OFFER_MAX_AGE_MS = 30_000
SIGNALING_MAX_AGE_MS = 120_000
# A call whose media was lost (no packets, ICE failed) reconnects: a new peer connection,
# offered again inside the same call, every RECONNECT_RETRY_MS until it is back; after
# RECONNECT_GIVE_UP_MS without media it ends (`connection_lost`).
RECONNECT_RETRY_MS = 2_500
RECONNECT_GIVE_UP_MS = 60_000
REKEY_MS = 10 * 60_000  # a new media key for each direction this often in an active call
SAS_NONCE_BYTES = 16
_DTLS_DOMAIN = b"parley-dtls-fingerprint-v1\x00"


class CallState(StrEnum):
    DIALING = "dialing"  # outgoing: offer sent, peer not yet ringing
    RINGBACK = "ringback"  # outgoing: the peer's terminal is ringing
    RINGING = "ringing"  # incoming: ringing here, waiting for accept/decline
    CONNECTING = "connecting"  # answered; ICE and DTLS in progress
    ACTIVE = "active"  # media up and the handshake certificate verified
    RECONNECTING = "reconnecting"  # was active; its media was lost and is being restored
    ENDED = "ended"


class CallEvent(StrEnum):
    REMOTE_RINGING = "remote_ringing"
    REMOTE_ANSWERED = "remote_answered"
    LOCAL_ACCEPTED = "local_accepted"
    MEDIA_VERIFIED = "media_verified"
    LOCAL_HANGUP = "local_hangup"
    REMOTE_HANGUP = "remote_hangup"
    LOCAL_DECLINE = "local_decline"
    REMOTE_DECLINE = "remote_decline"
    REMOTE_BUSY = "remote_busy"
    REMOTE_REFUSED = "remote_refused"  # the peer's policy refused us (not verified there)
    REMOTE_CANCEL = "remote_cancel"  # the caller gave up before we answered
    RING_TIMEOUT = "ring_timeout"
    UNREACHABLE = "unreachable"
    MEDIA_FAILED = "media_failed"
    MEDIA_LOST = "media_lost"  # an active call's media stopped (here, or the peer says so)
    GAVE_UP = "gave_up"  # no media again within the give-up time
    REMOTE_LOST = "remote_lost"  # the peer gave up reconnecting
    INTERCEPTED = "intercepted"
    # An offer refused on arrival, before anything rang:
    REFUSED_NOT_VERIFIED = "refused_not_verified"  # our policy: its key is not verified
    REFUSED_BUSY = "refused_busy"  # we are in another call
    OFFER_EXPIRED = "offer_expired"  # it came after its caller gave up
    REFUSED_PURPOSE = "refused_purpose"  # a test call to a person, or a real one to a test set


class EndReason(StrEnum):
    HUNG_UP = "hung_up"
    REMOTE_HUNG_UP = "remote_hung_up"
    DECLINED = "declined"  # the peer declined our call
    REJECTED = "rejected"  # we declined theirs
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    MISSED = "missed"
    UNREACHABLE = "unreachable"
    NOT_VERIFIED = "not_verified"
    FAILED = "failed"
    CONNECTION_LOST = "connection_lost"  # the media path was lost and did not come back
    INTERCEPTED = "intercepted"


_ENDINGS = {
    CallEvent.LOCAL_HANGUP: EndReason.HUNG_UP,
    CallEvent.REMOTE_HANGUP: EndReason.REMOTE_HUNG_UP,
    CallEvent.LOCAL_DECLINE: EndReason.REJECTED,
    CallEvent.REMOTE_DECLINE: EndReason.DECLINED,
    CallEvent.REMOTE_BUSY: EndReason.BUSY,
    CallEvent.REMOTE_REFUSED: EndReason.NOT_VERIFIED,
    CallEvent.REMOTE_CANCEL: EndReason.MISSED,
    CallEvent.RING_TIMEOUT: EndReason.NO_ANSWER,
    CallEvent.UNREACHABLE: EndReason.UNREACHABLE,
    CallEvent.MEDIA_FAILED: EndReason.FAILED,
    CallEvent.GAVE_UP: EndReason.CONNECTION_LOST,
    CallEvent.REMOTE_LOST: EndReason.CONNECTION_LOST,
    CallEvent.INTERCEPTED: EndReason.INTERCEPTED,
    CallEvent.REFUSED_NOT_VERIFIED: EndReason.NOT_VERIFIED,
    CallEvent.REFUSED_BUSY: EndReason.MISSED,
    CallEvent.OFFER_EXPIRED: EndReason.MISSED,
    CallEvent.REFUSED_PURPOSE: EndReason.REJECTED,
}

# Where the same event means something else in one state (a ring timeout here is
# a call we missed, at the caller it is one nobody answered).
_ENDINGS_IN_STATE = {(CallState.RINGING, CallEvent.RING_TIMEOUT): EndReason.MISSED}


def end_reason(state: CallState, event: CallEvent) -> EndReason:
    return _ENDINGS_IN_STATE.get((state, event)) or _ENDINGS[event]


_E = CallEvent
_S = CallState
_ENDS_ANY = {_E.LOCAL_HANGUP, _E.REMOTE_HANGUP, _E.MEDIA_FAILED, _E.INTERCEPTED,
             _E.REMOTE_LOST}
_ENDS_OUTGOING = _ENDS_ANY | {
    _E.REMOTE_DECLINE, _E.REMOTE_BUSY, _E.REMOTE_REFUSED, _E.RING_TIMEOUT, _E.UNREACHABLE,
}

# The one call-state table: state -> event -> next state.
TRANSITIONS: dict[CallState, dict[CallEvent, CallState]] = {
    _S.DIALING: {
        _E.REMOTE_RINGING: _S.RINGBACK,
        _E.REMOTE_ANSWERED: _S.CONNECTING,
        **{e: _S.ENDED for e in _ENDS_OUTGOING},
    },
    _S.RINGBACK: {
        _E.REMOTE_ANSWERED: _S.CONNECTING,
        **{e: _S.ENDED for e in _ENDS_OUTGOING - {_E.UNREACHABLE}},
    },
    _S.RINGING: {
        _E.LOCAL_ACCEPTED: _S.CONNECTING,
        **{e: _S.ENDED for e in _ENDS_ANY | {_E.LOCAL_DECLINE, _E.REMOTE_CANCEL,
                                             _E.RING_TIMEOUT, _E.REFUSED_NOT_VERIFIED,
                                             _E.REFUSED_BUSY, _E.OFFER_EXPIRED,
                                             _E.REFUSED_PURPOSE}},
    },
    _S.CONNECTING: {
        _E.MEDIA_VERIFIED: _S.ACTIVE,
        **{e: _S.ENDED for e in _ENDS_ANY},
    },
    _S.ACTIVE: {
        _E.MEDIA_LOST: _S.RECONNECTING,
        **{e: _S.ENDED for e in _ENDS_ANY},
    },
    _S.RECONNECTING: {
        _E.MEDIA_VERIFIED: _S.ACTIVE,
        **{e: _S.ENDED for e in _ENDS_ANY | {_E.GAVE_UP}},
    },
    _S.ENDED: {},
}

# What the peer is told when a call ends here, by reason (None: tell nothing).
_WIRE_REASON: dict[EndReason, str | None] = {
    EndReason.HUNG_UP: "hangup",
    EndReason.REJECTED: "declined",
    EndReason.NO_ANSWER: "cancelled",
    EndReason.MISSED: None,
    EndReason.REMOTE_HUNG_UP: None,
    EndReason.DECLINED: None,
    EndReason.BUSY: None,
    EndReason.NOT_VERIFIED: None,
    EndReason.UNREACHABLE: "cancelled",
    EndReason.FAILED: "failed",
    EndReason.CONNECTION_LOST: "lost",
    EndReason.INTERCEPTED: "intercepted",
}
# Where a reason is told otherwise in one state: hanging up before the callee answered
# is, to the callee, a call it missed.
_WIRE_REASON_IN_STATE = {(CallState.DIALING, EndReason.HUNG_UP): "cancelled",
                         (CallState.RINGBACK, EndReason.HUNG_UP): "cancelled"}
# ...and where the event says more than the reason: an offer refused on arrival tells
# its caller why (an expired one tells nothing: its caller has given up).
_WIRE_REASON_BY_EVENT: dict[CallEvent, str | None] = {
    CallEvent.REFUSED_NOT_VERIFIED: "not_verified",
    CallEvent.REFUSED_BUSY: "busy",
    CallEvent.OFFER_EXPIRED: None,
    CallEvent.REFUSED_PURPOSE: "declined",
}


def wire_reason(state: CallState, reason: EndReason, event: CallEvent | None = None, *,
                peer_knows: bool = True) -> str | None:
    """What the peer's call.end says when a call in `state` ends here for `reason`.

    None: nothing is sent -- the peer ended it itself, or never heard of the call
    (`peer_knows` False: our offer had not gone yet).
    """
    if not peer_knows:
        return None
    if event in _WIRE_REASON_BY_EVENT:
        return _WIRE_REASON_BY_EVENT[event]
    return _WIRE_REASON_IN_STATE.get((state, reason), _WIRE_REASON[reason])


# ...and how a call.end from the peer is read, by the reason it gives.
_REMOTE_END_EVENT = {
    "hangup": _E.REMOTE_HANGUP,
    "declined": _E.REMOTE_DECLINE,
    "busy": _E.REMOTE_BUSY,
    "not_verified": _E.REMOTE_REFUSED,
    "cancelled": _E.REMOTE_CANCEL,
    "failed": _E.MEDIA_FAILED,
    "lost": _E.REMOTE_LOST,
    "intercepted": _E.INTERCEPTED,
}


class MediaKind(StrEnum):
    VIDEO = "video"  # voice and video
    AUDIO = "audio"  # voice only, "like a phone call"


# --- payloads -------------------------------------------------------------

_CALL_ID = schema.text(32)
_NONCE = schema.text(24)  # SAS_NONCE_BYTES, base64
# The sender's media secret (sframe.SECRET_BYTES, base64) and its epoch: the SFrame keys
# for what it sends in this call (core.sframe). Optional on the wire so that a peer
# without the layer is told apart, loudly, from one whose key was lost.
_MEDIA_KEY = {"media_key": schema.text(44, required=False),
              "media_epoch": schema.integer(0, 2**31, required=False)}
PAYLOADS: dict[str, dict[str, schema.Field]] = {
    "call.offer": {
        "call_id": _CALL_ID,
        "sdp": schema.text(MAX_SDP),
        "dtls": schema.Field(str, max_len=95, check=check_fingerprint),
        "dtls_sig": schema.text(88),
        "media": schema.text(8, choices=frozenset(MediaKind)),
        "expires": schema.integer(0, 2**53),  # ms since the epoch: the caller gives up then
        "sas_commit": schema.text(44),  # safety.sas_commitment of the caller's nonce
        **_MEDIA_KEY,
        # A line test's id: a test call, answered by test sets only (core.linetest).
        "test": schema.text(32, required=False),
    },
    "call.ringing": {"call_id": _CALL_ID},
    "call.answer": {
        "call_id": _CALL_ID,
        "sdp": schema.text(MAX_SDP),
        "dtls": schema.Field(str, max_len=95, check=check_fingerprint),
        "dtls_sig": schema.text(88),
        "sas_nonce": _NONCE,
        **_MEDIA_KEY,
    },
    "call.confirm": {"call_id": _CALL_ID, "sas_nonce": _NONCE},
    "call.ice": {
        "call_id": _CALL_ID,
        "candidate": schema.text(1024),  # "" means end of candidates
        "mid": schema.text(32, required=False),
        "mline": schema.integer(0, 64, required=False),
        "gen": schema.integer(0, 10_000, required=False),  # the peer connection it is for
    },
    # Reconnecting an active call (see CallBook.media_failed): the callee asks, the caller
    # offers a new peer connection (generation `gen`), signed as the first one was.
    "call.reconnect": {"call_id": _CALL_ID, "gen": schema.integer(0, 10_000)},
    "call.reoffer": {
        "call_id": _CALL_ID, "gen": schema.integer(1, 10_000), "sdp": schema.text(MAX_SDP),
        "dtls": schema.Field(str, max_len=95, check=check_fingerprint),
        "dtls_sig": schema.text(88), **_MEDIA_KEY,
    },
    "call.reanswer": {
        "call_id": _CALL_ID, "gen": schema.integer(1, 10_000), "sdp": schema.text(MAX_SDP),
        "dtls": schema.Field(str, max_len=95, check=check_fingerprint),
        "dtls_sig": schema.text(88), **_MEDIA_KEY,
    },
    # A new media key on a schedule, in the same peer connection; the peer installs it
    # and says so (call.rekeyed), and only then does the sender seal under it.
    "call.rekey": {"call_id": _CALL_ID, "gen": schema.integer(0, 10_000),
                   "media_key": schema.text(44), "media_epoch": schema.integer(0, 2**31)},
    "call.rekeyed": {"call_id": _CALL_ID, "gen": schema.integer(0, 10_000),
                     "media_epoch": schema.integer(0, 2**31)},
    "call.media": {"call_id": _CALL_ID, "audio": schema.boolean(), "video": schema.boolean()},
    "call.end": {"call_id": _CALL_ID,
                 "reason": schema.text(16, choices=frozenset(_REMOTE_END_EVENT))},
}


def dtls_statement(call_id: str, role: str, device: str, fingerprint: str) -> bytes:
    """What a device signs to vouch for its own DTLS certificate in one call."""
    return _DTLS_DOMAIN + canonical_json(
        [call_id, role, device, normalize_fingerprint(fingerprint)]
    )


# --- actions the adapter carries out --------------------------------------

@dataclass(frozen=True)
class SendEnvelope:
    call_id: str | None
    to: DevicePublicKeys
    type: str
    payload: dict[str, Any]
    envelope_id: str = field(default_factory=random_id)  # so a tamper report can name it


@dataclass(frozen=True)
class StartMedia:
    """Create the local peer connection: an offer (remote_sdp None) or an answer."""

    call_id: str
    media: MediaKind
    remote_sdp: str | None
    gen: int = 0  # which peer connection of the call (a reconnection's is 1, 2, ...)
    restart: bool = False  # close the call's current one first (a reconnection)


@dataclass(frozen=True)
class ApplyAnswer:
    call_id: str
    sdp: str


@dataclass(frozen=True)
class AddRemoteIce:
    call_id: str
    candidate: str
    mid: str | None
    mline: int | None
    gen: int = 0


@dataclass(frozen=True)
class StopMedia:
    call_id: str


@dataclass(frozen=True)
class MediaKeys:
    """Keys for the call's frame layer (core.sframe): seal with `send`, open with `receive`.

    For the peer connection of generation `gen` only; a media stack given keys for
    another generation ignores them.
    """

    call_id: str
    gen: int
    send: sframe.StreamKeys | None = None
    receive: sframe.StreamKeys | None = None


@dataclass(frozen=True)
class SetLocalMedia:
    call_id: str
    audio: bool
    video: bool


@dataclass(frozen=True)
class CallChanged:
    """The call's public view changed: show it."""

    call: CallInfo


@dataclass(frozen=True)
class Alarm:
    """A security alarm: show it loudly and log it."""

    call_id: str | None
    code: ErrorCode
    message: str
    hint: str
    subject: str | None = None  # the device it is about, where it is not about a call


Action = SendEnvelope | StartMedia | ApplyAnswer | AddRemoteIce | StopMedia | SetLocalMedia | \
    CallChanged | Alarm | MediaKeys


@dataclass(frozen=True)
class CallInfo:
    """What the UI, the CLI and the logs show of a call."""

    call_id: str
    direction: str  # "outgoing" | "incoming"
    peer: str  # device id
    peer_party: str
    media: MediaKind
    state: CallState
    end_reason: EndReason | None
    sas: str | None
    verified: bool  # peer's key verified and handshake certificate checked
    peer_trust: Trust
    started_ms: int
    answered_ms: int | None
    active_ms: int | None
    ended_ms: int | None
    local_audio: bool
    local_video: bool
    remote_audio: bool
    remote_video: bool
    alarm: str | None
    test_id: str | None = None  # a line test's call (core.linetest), never a person's
    reconnecting_since_ms: int | None = None  # media lost then; being restored
    gen: int = 0  # peer connections after the first (reconnections)
    sas_changed: bool = False  # a reconnection changed a certificate: read the new SAS
    # "sframe+dtls-srtp" when both sides seal every frame under keys sent in the sealed
    # envelopes (core.sframe), "dtls-srtp" when only the classical outer layer holds.
    media_protection: str = sframe.PROTECTION

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in self.__dict__.items()}


@dataclass
class Call:
    call_id: str
    direction: str
    peer: DevicePublicKeys
    peer_trust: Trust
    media: MediaKind
    state: CallState
    started_ms: int
    deadline_ms: int | None
    end_reason: EndReason | None = None
    local_dtls: str | None = None
    remote_dtls: str | None = None
    remote_sdp: str | None = None
    answered_ms: int | None = None
    active_ms: int | None = None
    ended_ms: int | None = None
    handshake_checked: bool = False
    local_audio: bool = True
    local_video: bool = True
    remote_audio: bool = True
    remote_video: bool = True
    alarm: str | None = None
    pending_ice: list[AddRemoteIce] = field(default_factory=list)
    sent_ids: set[str] = field(default_factory=set)
    pending_local_ice: list[dict[str, Any]] = field(default_factory=list)
    media_started: bool = False
    # The SAS nonces (see the module's essay): ours, fresh per call; the peer's, once
    # revealed (the callee's in its answer, the caller's in call.confirm); and, at the
    # callee, the caller's commitment to its nonce, from the offer.
    local_nonce: bytes = field(default_factory=lambda: secrets.token_bytes(SAS_NONCE_BYTES))
    remote_nonce: bytes | None = None
    remote_commit: str | None = None
    told_late: bool = False  # ended here, and the peer, late, told so once
    test_id: str | None = None  # a line test's call
    # Reconnecting (see CallBook.media_failed): the generation of the peer connection in
    # use, the one our own description went out for, when media was lost, the next retry
    # and when to give up.
    gen: int = 0
    local_gen: int = 0
    lost_ms: int | None = None
    retry_ms: int | None = None
    give_up_ms: int | None = None
    up_ms: int | None = None  # when the peer connection in use last came up (verified)
    answered_gen: int = 0  # the generation the peer's reanswer (caller) came for
    sas_changed: bool = False
    # The frame layer's keys (core.sframe): our secret per epoch, the epoch we seal
    # under, a re-key sent and not yet installed by the peer, the peer's last epoch;
    # and whether either side's frames went without the layer.
    send_epoch: int = -1
    top_epoch: int = -1  # the highest epoch we ever sent a key for: the next is above it
    rekey_pending: tuple[int, bytes] | None = None
    rekey_ms: int | None = None
    recv_epoch: int = -1
    peer_secret: tuple[int, bytes] | None = None  # from the offer, until we answer
    unprotected: bool = False

    @property
    def role(self) -> str:
        return "caller" if self.direction == "outgoing" else "callee"

    def sas(self, me: DevicePublicKeys) -> str | None:
        if not (self.local_dtls and self.remote_dtls and self.remote_nonce):
            return None
        if self.direction == "outgoing":
            return call_sas(self.call_id, me, self.local_dtls, self.local_nonce,
                            self.peer, self.remote_dtls, self.remote_nonce)
        return call_sas(self.call_id, self.peer, self.remote_dtls, self.remote_nonce,
                        me, self.local_dtls, self.local_nonce)

    def info(self, me: DevicePublicKeys) -> CallInfo:
        return CallInfo(
            call_id=self.call_id,
            direction=self.direction,
            peer=self.peer.device_id,
            peer_party=self.peer.party,
            media=self.media,
            state=self.state,
            end_reason=self.end_reason,
            sas=self.sas(me),
            verified=self.peer_trust is Trust.VERIFIED and self.handshake_checked
            and not self.unprotected,
            peer_trust=self.peer_trust,
            started_ms=self.started_ms,
            answered_ms=self.answered_ms,
            active_ms=self.active_ms,
            ended_ms=self.ended_ms,
            local_audio=self.local_audio,
            local_video=self.local_video and self.media is MediaKind.VIDEO,
            remote_audio=self.remote_audio,
            remote_video=self.remote_video and self.media is MediaKind.VIDEO,
            alarm=self.alarm,
            test_id=self.test_id,
            reconnecting_since_ms=self.lost_ms if self.state is CallState.RECONNECTING
            else None,
            gen=self.gen,
            sas_changed=self.sas_changed,
            media_protection=sframe.PROTECTION_OUTER_ONLY if self.unprotected
            else sframe.PROTECTION,
        )


class CallBook:
    """Every call of one device. Pure: give it events and `now`, act on what it returns."""

    def __init__(self, keys: DeviceKeys, device_id: str, *, require_verified: bool = True,
                 test_set: bool = False, reconnect_retry_ms: int = RECONNECT_RETRY_MS,
                 reconnect_give_up_ms: int = RECONNECT_GIVE_UP_MS, frame_layer: bool = True,
                 rekey_ms: int = REKEY_MS) -> None:
        self._keys = keys
        self.device_id = device_id
        self.me = keys.public(device_id)
        self.require_verified = require_verified
        # A test set (core.linetest) takes part in test calls only; any other device in
        # none: a line test never rings a person, and a person never reaches a test set.
        self.test_set = test_set
        self.reconnect_retry_ms = reconnect_retry_ms
        self.reconnect_give_up_ms = reconnect_give_up_ms
        # Our media stack seals every frame (core.sframe) with keys we send in the call's
        # envelopes; without it (a benchmark's baseline), calls are not shown verified.
        self.frame_layer = frame_layer
        self.rekey_ms = rekey_ms
        self._calls: dict[str, Call] = {}
        self._notices = notice.NoticeLimiter()

    # -- queries -------------------------------------------------------------

    def get(self, call_id: str) -> Call:
        try:
            return self._calls[call_id]
        except KeyError:
            raise LocalError(f"no call {call_id!r}", code=ErrorCode.NO_SUCH_CALL) from None

    def info(self, call_id: str) -> CallInfo:
        return self.get(call_id).info(self.me)

    def calls(self) -> list[CallInfo]:
        return [c.info(self.me) for c in self._calls.values()]

    def live(self) -> list[Call]:
        return [c for c in self._calls.values() if c.state is not CallState.ENDED]

    def next_deadline(self) -> int | None:
        deadlines = [d for c in self.live() for d in (c.deadline_ms, c.rekey_ms)
                     if d is not None]
        return min(deadlines) if deadlines else None

    def forget_ended(self, keep: int = 50) -> None:
        ended = [c for c in self._calls.values() if c.state is CallState.ENDED]
        for call in ended[:-keep] if keep else ended:
            del self._calls[call.call_id]

    # -- local API -------------------------------------------------------------

    def place(
        self,
        peer: DevicePublicKeys,
        trust: Trust,
        media: MediaKind,
        now_ms: int,
        call_id: str | None = None,
        test_id: str | None = None,
    ) -> tuple[str, list[Action]]:
        """Start an outgoing call (a line test's, with `test_id`). LocalError if refused."""
        self._check_policy(peer, trust, outgoing=True)
        if self.test_set != (test_id is not None):
            raise LocalError(
                "this terminal is a test set: it places line tests only" if self.test_set else
                "only a test set places line tests", code=ErrorCode.INVALID_STATE,
                hint="run 'parley linetest run' against the site's test set"
                     if not self.test_set else "call from a person's terminal")
        if self.live():
            raise LocalError(
                "a call is already in progress", code=ErrorCode.BUSY,
                hint="hang up the current call first",
            )
        call = Call(
            call_id=call_id or random_id(),
            direction="outgoing",
            peer=peer,
            peer_trust=trust,
            media=media,
            state=CallState.DIALING,
            started_ms=now_ms,
            deadline_ms=now_ms + MEDIA_SETUP_TIMEOUT_MS,
            test_id=test_id,
            unprotected=not self.frame_layer,
        )
        call.media_started = True
        self._calls[call.call_id] = call
        return call.call_id, [StartMedia(call.call_id, media, None), self._changed(call)]

    def local_description(self, call_id: str, sdp: str, dtls: str, now_ms: int,
                          gen: int = 0) -> list[Action]:
        """The media stack produced our offer or answer: sign it and send it."""
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            return [StopMedia(call_id)]
        if gen != call.gen:
            return []  # a peer connection a newer one replaced
        check_secure_sdp(sdp, dtls, who="this device's media stack")
        if gen > 0:
            return self._local_redescription(call, sdp, dtls, now_ms)
        call.local_dtls = normalize_fingerprint(dtls)
        # The clocks for the peer start now: a person may have taken a while to let the
        # browser use the camera, and that is not the peer's delay.
        call.deadline_ms = now_ms + (REACH_TIMEOUT_MS if call.direction == "outgoing"
                                     else CONNECT_TIMEOUT_MS)
        held, call.pending_local_ice = call.pending_local_ice, []
        payload: dict[str, Any] = {
            "call_id": call_id,
            "sdp": sdp,
            "dtls": call.local_dtls,
            "dtls_sig": b64e(self._keys.sign(
                dtls_statement(call_id, call.role, self.device_id, call.local_dtls))),
        }
        keys = self._new_send_keys(call, payload)
        if call.direction == "outgoing":
            payload["media"] = str(call.media)
            payload["expires"] = call.deadline_ms
            payload["sas_commit"] = sas_commitment(call_id, self.device_id, call.local_nonce)
            if call.test_id is not None:
                payload["test"] = call.test_id
        else:
            payload["sas_nonce"] = b64e(call.local_nonce)
        description = self._send(
            call, "call.offer" if call.direction == "outgoing" else "call.answer", payload)
        # Candidates the stack found before its description was ready follow it.
        return [*keys, description, *(self._send(call, "call.ice", ice) for ice in held),
                self._changed(call)]

    def accept(self, call_id: str, now_ms: int) -> list[Action]:
        call = self.get(call_id)
        self._check_policy(call.peer, call.peer_trust, outgoing=False)
        actions = self._fire(call, CallEvent.LOCAL_ACCEPTED, now_ms, local=True)
        call.answered_ms = now_ms
        call.deadline_ms = now_ms + CONNECT_TIMEOUT_MS
        call.media_started = True
        keys: list[Action] = []
        if call.peer_secret is not None:
            keys.append(MediaKeys(call_id, 0, receive=self._receive_keys(call, *call.peer_secret)))
            call.peer_secret = None
        return [StartMedia(call_id, call.media, call.remote_sdp), *keys, *actions,
                *self._flush_ice(call)]

    def decline(self, call_id: str, now_ms: int) -> list[Action]:
        return self._fire(self.get(call_id), CallEvent.LOCAL_DECLINE, now_ms, local=True)

    def hangup(self, call_id: str, now_ms: int) -> list[Action]:
        return self._fire(self.get(call_id), CallEvent.LOCAL_HANGUP, now_ms, local=True)

    def set_local_media(self, call_id: str, *, audio: bool, video: bool) -> list[Action]:
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            raise LocalError("the call has ended", code=ErrorCode.INVALID_STATE)
        call.local_audio, call.local_video = audio, video
        return [
            SetLocalMedia(call_id, audio, video),
            self._send(call, "call.media", {"call_id": call_id, "audio": audio, "video": video}),
            self._changed(call),
        ]

    def local_ice(self, call_id: str, candidate: str, mid: str | None,
                  mline: int | None) -> list[Action]:
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            return []
        payload: dict[str, Any] = {"call_id": call_id, "candidate": candidate}
        if mid is not None:
            payload["mid"] = mid
        if mline is not None:
            payload["mline"] = mline
        if call.gen:
            payload["gen"] = call.gen
        if call.local_dtls is None or call.local_gen != call.gen:
            # Our offer/answer (for this peer connection) has not gone out: hold it.
            call.pending_local_ice.append(payload)
            return []
        return [self._send(call, "call.ice", payload)]

    # -- media stack reports ------------------------------------------------

    def media_connected(self, call_id: str, handshake_dtls: str, now_ms: int) -> list[Action]:
        """DTLS is up. `handshake_dtls` hashes the certificate the peer actually presented."""
        call = self.get(call_id)
        if call.state not in (CallState.CONNECTING, CallState.RECONNECTING):
            return []
        if call.remote_dtls is None or normalize_fingerprint(handshake_dtls) != call.remote_dtls:
            alarm = SecurityAlarm(
                f"interception: {call.peer.device_id} signed DTLS fingerprint"
                f" {call.remote_dtls}, but the handshake presented"
                f" {normalize_fingerprint(handshake_dtls)}",
                code=ErrorCode.FINGERPRINT_MISMATCH,
                hint="someone is in the media path; the call was hung up. Report this.",
            )
            return self.intercepted(call_id, alarm, now_ms)
        if call.state is CallState.RECONNECTING:
            # The new peer connection's handshake, verified exactly like the first one's.
            call.lost_ms = call.retry_ms = call.give_up_ms = call.deadline_ms = None
            call.up_ms = now_ms
            self._schedule_rekey(call, now_ms)
            return self._fire(call, CallEvent.MEDIA_VERIFIED, now_ms)
        call.handshake_checked = True
        return self._maybe_verified(call, now_ms)

    def _maybe_verified(self, call: Call, now_ms: int) -> list[Action]:
        """Active once the handshake certificate is checked and both SAS nonces are known."""
        if not call.handshake_checked or call.remote_nonce is None:
            return []  # the callee waits for the caller to open its commitment
        call.active_ms = call.up_ms = now_ms
        call.deadline_ms = None
        self._schedule_rekey(call, now_ms)
        return self._fire(call, CallEvent.MEDIA_VERIFIED, now_ms)

    def media_failed(self, call_id: str, reason: str, now_ms: int,
                     gen: int | None = None) -> list[Action]:
        """The media stack lost the call's media (no packets for a while, ICE failed).

        Before the call was active, it ends. An active call (a person's; a line test's
        ends, as it should fail) *reconnects*: both sides show `reconnecting`; the caller
        offers a new peer connection through the same signed, sealed signaling (the callee
        asks it to, with call.reconnect), and again every `reconnect_retry_ms` until one
        connects -- its handshake certificate verified exactly like the first's -- or
        `reconnect_give_up_ms` passes (`connection_lost`).
        """
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            return []
        if gen is not None and gen == call.gen:
            # The stack gave up making this generation's description: the next attempt
            # must not wait for it (_attempt), it makes a new one.
            call.local_gen = gen
        if call.state in (CallState.ACTIVE, CallState.RECONNECTING) and call.test_id is None:
            return self._lost(call, reason, now_ms)
        call.alarm = call.alarm or reason
        return self._fire(call, CallEvent.MEDIA_FAILED, now_ms, local=True)

    def _lost(self, call: Call, reason: str, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        if call.state is CallState.ACTIVE:
            call.lost_ms = now_ms
            call.give_up_ms = now_ms + self.reconnect_give_up_ms
            call.alarm = None
            call.rekey_ms = call.rekey_pending = None  # a new connection brings new keys
            actions += self._fire(call, CallEvent.MEDIA_LOST, now_ms)
        elif call.retry_ms is not None and now_ms < call.retry_ms:
            return []  # an attempt is under way: the retry timer takes the next
        return actions + self._attempt(call, now_ms)

    def _attempt(self, call: Call, now_ms: int) -> list[Action]:
        """One attempt to bring the media back: the caller offers, the callee asks."""
        call.retry_ms = now_ms + self.reconnect_retry_ms
        call.deadline_ms = min(call.retry_ms, call.give_up_ms or call.retry_ms)
        if call.direction == "outgoing" and call.gen > 0 and call.local_gen != call.gen:
            return []  # our media stack is still making the last offer: it gets its time
        if call.direction == "outgoing":
            call.gen += 1
            return [StartMedia(call.call_id, call.media, None, gen=call.gen, restart=True),
                    self._changed(call)]
        return [self._send(call, "call.reconnect", {"call_id": call.call_id,
                                                    "gen": call.gen}),
                self._changed(call)]

    def _local_redescription(self, call: Call, sdp: str, dtls: str, now_ms: int
                             ) -> list[Action]:
        """Our new peer connection's offer or answer, signed like the first."""
        fingerprint = normalize_fingerprint(dtls)
        if call.local_dtls is not None and fingerprint != call.local_dtls:
            call.sas_changed = True  # another certificate: the SAS the persons read changes
        call.local_dtls = fingerprint
        call.local_gen = call.gen
        # The attempt's clock starts when its offer (or answer) goes, not when it was asked.
        call.retry_ms = now_ms + self.reconnect_retry_ms
        call.deadline_ms = min(call.retry_ms, call.give_up_ms or call.retry_ms)
        payload: dict[str, Any] = {
            "call_id": call.call_id, "gen": call.gen, "sdp": sdp, "dtls": fingerprint,
            "dtls_sig": b64e(self._keys.sign(
                dtls_statement(call.call_id, call.role, self.device_id, fingerprint)))}
        keys = self._new_send_keys(call, payload)
        held = [ice for ice in call.pending_local_ice if ice.get("gen", 0) == call.gen]
        call.pending_local_ice = []
        kind = "call.reoffer" if call.direction == "outgoing" else "call.reanswer"
        # The callee's own description is out: the caller's candidates for it can go in.
        flushed = self._flush_ice(call) if call.direction == "incoming" else []
        return [*keys, self._send(call, kind, payload),
                *(self._send(call, "call.ice", ice) for ice in held), *flushed,
                self._changed(call)]

    def link_up(self, now_ms: int) -> list[Action]:
        """The server is back: a reconnecting call tries again at once."""
        actions: list[Action] = []
        for call in self.live():
            # Only where what went last may have been lost with the link: an offer out
            # and unanswered (or the callee's request); one answered is left to connect.
            if call.state is CallState.RECONNECTING and not (
                    call.direction == "outgoing" and call.answered_gen == call.gen):
                actions += self._attempt(call, now_ms)
        return actions

    def intercepted(self, call_id: str, alarm: ParleyError, now_ms: int) -> list[Action]:
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            return []
        call.alarm = alarm.message
        return [Alarm(call_id, alarm.code, alarm.message, alarm.hint),
                *self._fire(call, CallEvent.INTERCEPTED, now_ms, local=True)]

    def signaling_tampered(self, sender: str, alarm: ParleyError, now_ms: int, *,
                           live_at_ms: int | None = None) -> list[Action]:
        """Call signaling claiming to come from `sender` was tampered with: end calls with it.

        With `live_at_ms`, only the calls that had already begun then: a report that
        took its time must not end a call placed after what it reports.
        """
        actions: list[Action] = []
        for call in self.live():
            if call.peer.device_id == sender and (live_at_ms is None
                                                  or call.started_ms <= live_at_ms):
                actions += self.intercepted(call.call_id, alarm, now_ms)
        return actions

    def envelope_tampered(self, sender: str, envelope_id: str, envelope_type: str,
                          alarm: ParleyError, pinned: DevicePublicKeys | None,
                          now_ms: int) -> list[Action]:
        """An envelope claiming to come from `sender` failed its checks.

        The genuine device (the one whose keys we pinned) is told, so that both sides
        see the alarm whichever direction was tampered with (`core.notice`); if it was
        call signaling, our calls with `sender` end as intercepted; otherwise (or with
        no call), the alarm is raised on its own.
        """
        actions: list[Action] = []
        if pinned is not None and self._notices.should_notify(sender, envelope_type,
                                                              alarm.code, now_ms):
            actions.append(SendEnvelope(None, pinned, notice.TAMPER, {
                "envelope_id": envelope_id, "envelope_type": envelope_type,
                "code": str(alarm.code)}))
        ended = self.signaling_tampered(sender, alarm, now_ms) \
            if envelope_type in PAYLOADS else []
        return actions + (ended or [Alarm(None, alarm.code, alarm.message, alarm.hint, sender)])

    def tamper_reported(self, reporter: str, report: Any, sent_ms: int,
                        now_ms: int) -> list[Action]:
        """`reporter` says an envelope in our name reached it altered or forged.

        `sent_ms` is the notice's own signed send time: what it reports had reached
        the reporter by then, so only calls live at that time can be concerned.
        """
        schema.validate(report, notice.TAMPER_FIELDS, what=notice.TAMPER)
        envelope_id, envelope_type = report["envelope_id"], report["envelope_type"]
        for call in self._calls.values():
            if envelope_id in call.sent_ids and call.peer.device_id == reporter:
                alarm = SecurityAlarm(
                    f"interception: {reporter} reports that our {envelope_type} reached it"
                    " altered", code=ErrorCode.BAD_SIGNATURE,
                    hint="someone between the two terminals is tampering with the line;"
                         " the call was hung up. Report this.")
                if call.state is CallState.ENDED:
                    return [Alarm(call.call_id, alarm.code, alarm.message, alarm.hint)]
                return self.intercepted(call.call_id, alarm, now_ms)
        alarm = SecurityAlarm(
            f"{reporter} reports receiving a forged {envelope_type} in this device's name",
            code=ErrorCode.BAD_SIGNATURE,
            hint="someone is forging envelopes on the line; report this")
        # A forgery of call signaling while we are calling that very peer: our own
        # envelopes were most likely replaced on the way, so that call is compromised.
        actions = (self.signaling_tampered(reporter, alarm, now_ms, live_at_ms=sent_ms)
                   if envelope_type in PAYLOADS else [])
        return actions or [Alarm(None, alarm.code, alarm.message, alarm.hint, reporter)]

    def delivery_failed(self, call_id: str, code: ErrorCode, now_ms: int) -> list[Action]:
        """The server could not deliver one of our call envelopes."""
        call = self._calls.get(call_id)
        if call is None or call.state in (CallState.ENDED, CallState.ACTIVE,
                                          CallState.RECONNECTING):
            # Up (media does not go through the server), or reconnecting (the next
            # attempt sends again): nothing ends for a signaling envelope lost.
            return []
        if code is ErrorCode.RECIPIENT_OFFLINE and call.state is CallState.DIALING:
            return self._fire(call, CallEvent.UNREACHABLE, now_ms, local=True)
        call.alarm = f"the server could not deliver to {call.peer.device_id}: {code}"
        return self._fire(call, CallEvent.MEDIA_FAILED, now_ms, local=True)

    # -- from the peer ----------------------------------------------------------

    def receive(
        self, sender: DevicePublicKeys, trust: Trust, type_: str, payload: dict[str, Any],
        now_ms: int, sent_ms: int | None = None,
    ) -> list[Action]:
        """A call.* payload, already opened with the sender's trusted key."""
        fields = PAYLOADS.get(type_)
        if fields is None:
            raise RemoteError(f"unknown call message {type_!r}", code=ErrorCode.UNKNOWN_TYPE)
        schema.validate(payload, fields, what=type_)
        call_id = payload["call_id"]
        if type_ == "call.offer":
            return self._on_offer(sender, trust, payload, now_ms)
        call = self._calls.get(call_id)
        if call is None:
            return []  # a late or stray message for a call we never had or forgot
        if call.peer.device_id != sender.device_id:
            raise SecurityAlarm(
                f"{sender.device_id} sent {type_} for a call with {call.peer.device_id}",
                code=ErrorCode.BAD_MESSAGE, hint="it was ignored",
            )
        if call.state is CallState.ENDED:
            if type_ in ("call.reconnect", "call.reoffer", "call.reanswer") \
                    and not call.told_late and call.end_reason is not EndReason.INTERCEPTED:
                # The peer is trying to bring back a call that ended here (our call.end
                # was lost on the way): tell it once, so that it does not wait to give up.
                call.told_late = True
                said = _WIRE_REASON.get(call.end_reason or EndReason.HUNG_UP) or "hangup"
                return [self._send(call, "call.end", {"call_id": call_id, "reason": said})]
            if call.direction == "outgoing" and type_ in ("call.ringing", "call.answer") \
                    and not call.told_late and call.end_reason is not EndReason.INTERCEPTED:
                # Our offer reached it after we had given up (and our cancel did not): tell
                # it, so that it stops ringing for a call that is over.
                call.told_late = True
                return [self._send(call, "call.end", {"call_id": call_id,
                                                      "reason": "cancelled"})]
            return []
        if type_ == "call.ringing":
            if call.state is CallState.DIALING:
                # The peer rings for as long from now, however long our own media took.
                call.deadline_ms = now_ms + RING_TIMEOUT_MS
            return self._fire(call, CallEvent.REMOTE_RINGING, now_ms)
        if type_ == "call.answer":
            return self._on_answer(call, payload, now_ms)
        if type_ == "call.confirm":
            return self._on_confirm(call, payload, now_ms)
        if type_ == "call.ice":
            ice = AddRemoteIce(call_id, payload["candidate"], payload.get("mid"),
                               payload.get("mline"), payload.get("gen", 0))
            if ice.gen < call.gen:
                return []  # for a peer connection that was replaced
            if ice.gen == call.gen and call.local_gen == call.gen and (
                    call.state in (CallState.CONNECTING, CallState.ACTIVE,
                                   CallState.RECONNECTING)
                    or (call.direction == "outgoing" and call.media_started)):
                return [ice]
            call.pending_ice.append(ice)
            return []
        if type_ == "call.reconnect":
            return self._on_reconnect(call, payload, now_ms, sent_ms)
        if type_ in ("call.reoffer", "call.reanswer"):
            return self._on_redescription(call, type_, payload, now_ms)
        if type_ == "call.rekey":
            return self._on_rekey(call, payload)
        if type_ == "call.rekeyed":
            return self._on_rekeyed(call, payload)
        if type_ == "call.media":
            call.remote_audio, call.remote_video = payload["audio"], payload["video"]
            return [self._changed(call)]
        # call.end
        event = _REMOTE_END_EVENT[payload["reason"]]
        if event is CallEvent.INTERCEPTED:
            call.alarm = f"{call.peer.device_id} detected interception and hung up"
            return [Alarm(call_id, ErrorCode.INTERCEPTED, call.alarm,
                          "the other side's checks failed (a forged envelope or a DTLS"
                          " certificate nobody signed); the call was hung up. Report this."),
                    *self._fire(call, event, now_ms)]
        return self._fire(call, event, now_ms)

    def handle_timer(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for call in self.live():
            if call.rekey_ms is not None and call.rekey_ms <= now_ms:
                actions += self._rekey(call, now_ms)
            if call.deadline_ms is None or call.deadline_ms > now_ms:
                continue
            if call.state is CallState.RECONNECTING:
                if call.give_up_ms is not None and now_ms >= call.give_up_ms:
                    call.alarm = (f"no media for {(now_ms - (call.lost_ms or now_ms)) / 1000:.0f}"
                                  " s: the connection was lost")
                    actions += self._fire(call, CallEvent.GAVE_UP, now_ms, local=True)
                else:
                    actions += self._attempt(call, now_ms)
                continue
            if call.state is CallState.DIALING and call.local_dtls is None:
                call.alarm = "this terminal's media could not be prepared in time"
                actions += self._fire(call, CallEvent.MEDIA_FAILED, now_ms, local=True)
            elif call.state is CallState.DIALING:
                actions += self._fire(call, CallEvent.UNREACHABLE, now_ms, local=True)
            elif call.state in (CallState.RINGBACK, CallState.RINGING):
                actions += self._fire(call, CallEvent.RING_TIMEOUT, now_ms, local=True)
            else:
                call.alarm = "the media connection did not come up in time" \
                    if not (call.handshake_checked and call.remote_nonce is None) else \
                    "the caller never opened its SAS commitment (its call.confirm did not come)"
                actions += self._fire(call, CallEvent.MEDIA_FAILED, now_ms, local=True)
        return actions

    # -- internals --------------------------------------------------------------

    def _check_policy(self, peer: DevicePublicKeys, trust: Trust, *, outgoing: bool) -> None:
        if trust is Trust.CHANGED:
            raise LocalError(
                f"the key of {peer.device_id} has changed since you verified it",
                code=ErrorCode.KEY_CHANGED, hint=verify_hint(peer.party, changed=True),
            )
        if self.require_verified and trust is not Trust.VERIFIED:
            raise LocalError(
                f"{'calling' if outgoing else 'a call from'} {peer.device_id} is refused:"
                " its key is not verified",
                code=ErrorCode.NOT_VERIFIED, hint=verify_hint(peer.party),
            )

    def _on_offer(self, sender: DevicePublicKeys, trust: Trust, payload: dict[str, Any],
                  now_ms: int) -> list[Action]:
        call_id = payload["call_id"]
        if call_id in self._calls:
            return []  # duplicate offer: the replay guard already spoke
        self._verify_dtls(sender, call_id, "caller", payload)
        peer_secret = _media_secret(payload, "call.offer")
        call = Call(
            call_id=call_id, direction="incoming", peer=sender, peer_trust=trust,
            media=MediaKind(payload["media"]), state=CallState.RINGING, started_ms=now_ms,
            deadline_ms=now_ms + RING_TIMEOUT_MS, remote_dtls=normalize_fingerprint(
                payload["dtls"]), remote_sdp=payload["sdp"],
            remote_commit=payload["sas_commit"], test_id=payload.get("test"),
            peer_secret=peer_secret, unprotected=not self.frame_layer,
        )
        others_live = bool(self.live())
        self._calls[call_id] = call
        # Refused on arrival: the call is kept, ended, as a record of the attempt.
        if now_ms > payload["expires"]:
            call.alarm = (f"the offer from {sender.device_id} arrived"
                          f" {(now_ms - payload['expires']) / 1000:.1f} s after its caller gave"
                          " up (held on the way); nothing rang")
            return self._fire(call, CallEvent.OFFER_EXPIRED, now_ms, local=True)
        try:
            self._check_policy(sender, trust, outgoing=False)
        except LocalError as refusal:
            call.alarm = str(refusal)
            return [Alarm(call_id, refusal.code, refusal.message, refusal.hint),
                    *self._fire(call, CallEvent.REFUSED_NOT_VERIFIED, now_ms, local=True)]
        if self.test_set != (call.test_id is not None):
            call.alarm = ("a real call refused: this terminal is a test set" if self.test_set
                          else "a line test refused: this terminal is not a test set;"
                               " nothing rang")
            return self._fire(call, CallEvent.REFUSED_PURPOSE, now_ms, local=True)
        if others_live:
            call.alarm = "missed while busy on another call"
            return self._fire(call, CallEvent.REFUSED_BUSY, now_ms, local=True)
        return [*self._check_peer_protects(call, peer_secret),
                self._send(call, "call.ringing", {"call_id": call_id}), self._changed(call)]

    def _on_answer(self, call: Call, payload: dict[str, Any], now_ms: int) -> list[Action]:
        if call.direction != "outgoing" or call.state not in (CallState.DIALING,
                                                              CallState.RINGBACK):
            return []
        try:
            self._verify_dtls(call.peer, call.call_id, "callee", payload)
            nonce = b64d(payload["sas_nonce"], what="sas_nonce", max_bytes=SAS_NONCE_BYTES)
        except SecurityAlarm as alarm:
            return self.intercepted(call.call_id, alarm, now_ms)
        if len(nonce) != SAS_NONCE_BYTES:
            raise RemoteError(f"call.answer.sas_nonce must be {SAS_NONCE_BYTES} bytes")
        peer_secret = _media_secret(payload, "call.answer")
        keys = self._check_peer_protects(call, peer_secret)
        if peer_secret is not None:
            keys.append(MediaKeys(call.call_id, 0,
                                  receive=self._receive_keys(call, *peer_secret)))
        call.remote_dtls = normalize_fingerprint(payload["dtls"])
        call.remote_nonce = nonce
        call.answered_ms = now_ms
        call.deadline_ms = now_ms + CONNECT_TIMEOUT_MS
        actions = self._fire(call, CallEvent.REMOTE_ANSWERED, now_ms)
        # The callee's nonce is known: open our commitment, so that its SAS can be shown.
        confirm = self._send(call, "call.confirm", {"call_id": call.call_id,
                                                    "sas_nonce": b64e(call.local_nonce)})
        return [*keys, ApplyAnswer(call.call_id, payload["sdp"]), confirm, *actions]

    def _on_confirm(self, call: Call, payload: dict[str, Any], now_ms: int) -> list[Action]:
        """The caller opens the commitment it made in its offer."""
        if call.direction != "incoming" or call.remote_nonce is not None \
                or call.state is not CallState.CONNECTING:
            return []  # only one opening per call, after our answer
        nonce = b64d(payload["sas_nonce"], what="sas_nonce", max_bytes=SAS_NONCE_BYTES)
        if call.remote_commit is None or sas_commitment(
                call.call_id, call.peer.device_id, nonce) != call.remote_commit:
            return self.intercepted(call.call_id, SecurityAlarm(
                f"interception: {call.peer.device_id} opened a SAS commitment that does not"
                " match the one in its offer",
                code=ErrorCode.COMMITMENT_MISMATCH,
                hint="someone is trying to choose the SAS; the call was hung up. Report this."),
                now_ms)
        call.remote_nonce = nonce
        return [self._changed(call), *self._maybe_verified(call, now_ms)]

    def _verify_dtls(self, sender: DevicePublicKeys, call_id: str, role: str,
                     payload: dict[str, Any]) -> None:
        statement = dtls_statement(call_id, role, sender.device_id, payload["dtls"])
        signature = b64d(payload["dtls_sig"], what="dtls_sig", max_bytes=64)
        if not sender.verify(signature, statement):
            raise SecurityAlarm(
                f"the DTLS fingerprint from {sender.device_id} is not signed by its key",
                code=ErrorCode.FINGERPRINT_MISMATCH,
                hint="the call signaling was altered: possible interception; the call was refused",
            )
        check_secure_sdp(payload["sdp"], payload["dtls"], who=sender.device_id)

    def _flush_ice(self, call: Call) -> list[Action]:
        pending: list[Action] = [ice for ice in call.pending_ice if ice.gen == call.gen]
        call.pending_ice = [ice for ice in call.pending_ice if ice.gen > call.gen]
        return pending

    def _on_reconnect(self, call: Call, payload: dict[str, Any], now_ms: int,
                      sent_ms: int | None) -> list[Action]:
        """The callee lost our media and asks for a new peer connection."""
        if call.direction != "outgoing" or call.test_id is not None \
                or call.state not in (CallState.ACTIVE, CallState.RECONNECTING) \
                or payload["gen"] != call.gen:
            return []  # not ours to offer, or about a peer connection already replaced
        if call.state is CallState.ACTIVE and (sent_ms is None or call.up_ms is None
                                               or sent_ms <= call.up_ms):
            # Sent before this connection came up (held on the way): it speaks of a loss
            # that this connection already mended.
            return []
        if call.state is CallState.RECONNECTING:
            return []  # our attempt is under way, or its retry will come
        return self._lost(call, "the other side lost the media", now_ms)

    def _on_redescription(self, call: Call, type_: str, payload: dict[str, Any],
                          now_ms: int) -> list[Action]:
        """The peer's new peer connection: the caller's offer, or the callee's answer."""
        gen = payload["gen"]
        offer = type_ == "call.reoffer"
        if call.test_id is not None or offer != (call.direction == "incoming") \
                or call.state not in (CallState.ACTIVE, CallState.RECONNECTING) \
                or (offer and gen <= call.gen) or (not offer and gen != call.gen):
            return []  # not for this side, or stale
        try:
            self._verify_dtls(call.peer, call.call_id, "caller" if offer else "callee",
                              payload)
        except SecurityAlarm as alarm:
            return self.intercepted(call.call_id, alarm, now_ms)
        peer_secret = _media_secret(payload, type_)
        if peer_secret is not None and peer_secret[0] <= call.recv_epoch:
            raise RemoteError(f"{type_}.media_epoch {peer_secret[0]} is not after"
                              f" {call.recv_epoch}: a media key is never used again")
        fingerprint = normalize_fingerprint(payload["dtls"])
        if call.remote_dtls is not None and fingerprint != call.remote_dtls:
            if call.peer_trust is not Trust.VERIFIED:
                # With a key not verified, the SAS is all that protects the call, and its
                # nonces were revealed long ago: a new certificate could be chosen to fit.
                call.alarm = ("a reconnection presented another certificate, and this"
                              " peer's key is not verified: call again")
                return self._fire(call, CallEvent.MEDIA_FAILED, now_ms, local=True)
            call.sas_changed = True  # its certificate changed: so does the SAS
        call.remote_dtls = fingerprint
        actions: list[Action] = self._check_peer_protects(call, peer_secret)
        keys: list[Action] = []
        if peer_secret is not None:
            keys.append(MediaKeys(call.call_id, gen,
                                  receive=self._receive_keys(call, *peer_secret)))
        if not offer:
            # Answered: this attempt gets time to connect (ICE and DTLS) before the next.
            call.answered_gen = gen
            call.retry_ms = now_ms + 2 * self.reconnect_retry_ms
            call.deadline_ms = min(call.retry_ms, call.give_up_ms or call.retry_ms)
            return [*actions, *keys, ApplyAnswer(call.call_id, payload["sdp"]),
                    *self._flush_ice(call), self._changed(call)]
        if call.state is CallState.ACTIVE:
            call.lost_ms = now_ms
            call.give_up_ms = now_ms + self.reconnect_give_up_ms
            call.rekey_ms = call.rekey_pending = None
            actions += self._fire(call, CallEvent.MEDIA_LOST, now_ms)
        call.gen = gen
        call.retry_ms = now_ms + self.reconnect_retry_ms
        call.deadline_ms = min(call.retry_ms, call.give_up_ms or call.retry_ms)
        return [*actions, StartMedia(call.call_id, call.media, payload["sdp"], gen=gen,
                                     restart=True), *keys, self._changed(call)]

    # -- the frame layer's keys (core.sframe) ---------------------------------------

    def _derive(self, call: Call, secret: bytes, epoch: int, *, sending: bool
                ) -> sframe.StreamKeys:
        me, peer = self.me.fingerprint_bytes, call.peer.fingerprint_bytes
        sender, receiver = (me, peer) if sending else (peer, me)
        return sframe.StreamKeys.derive(secret, call.call_id, sender, receiver, epoch)

    def _next_epoch(self, call: Call) -> tuple[int, bytes]:
        """A new epoch, above any we ever sent (a re-key the peer installed and a
        reconnection then dropped included), and a fresh secret for it."""
        call.top_epoch += 1
        return call.top_epoch, secrets.token_bytes(sframe.SECRET_BYTES)

    def _new_send_keys(self, call: Call, payload: dict[str, Any]) -> list[Action]:
        """A fresh secret for a new peer connection: into `payload`, and to our stack."""
        if not self.frame_layer:
            return []
        epoch, secret = self._next_epoch(call)
        payload["media_key"], payload["media_epoch"] = b64e(secret), epoch
        call.send_epoch, call.rekey_pending = epoch, None
        return [MediaKeys(call.call_id, call.gen,
                          send=self._derive(call, secret, epoch, sending=True))]

    def _receive_keys(self, call: Call, epoch: int, secret: bytes) -> sframe.StreamKeys:
        call.recv_epoch = max(call.recv_epoch, epoch)
        return self._derive(call, secret, epoch, sending=False)

    def _check_peer_protects(self, call: Call, peer_secret: tuple[int, bytes] | None
                             ) -> list[Action]:
        """The alarm when the peer sent no media key: its frames have no end-to-end layer."""
        if peer_secret is not None or not self.frame_layer:
            return []
        return self._unprotected(call, f"{call.peer.device_id} sent no media key: the call's"
                                       " media is not protected end to end (DTLS-SRTP only)")

    def _unprotected(self, call: Call, message: str) -> list[Action]:
        if call.unprotected:
            return []
        call.unprotected = True
        call.alarm = message
        return [Alarm(call.call_id, ErrorCode.MEDIA_UNPROTECTED, message,
                      "the call is not verified: what is said can be recorded and decrypted"
                      " later by whoever breaks DTLS's key exchange; end the call and check"
                      " both terminals' versions"), self._changed(call)]

    def frames_unprotected(self, call_id: str, detail: str, now_ms: int) -> list[Action]:
        """Our media stack dropped the peer's frames: no layer, unknown keys or replays."""
        call = self.get(call_id)
        if call.state is CallState.ENDED:
            return []
        return self._unprotected(call, f"frames from {call.peer.device_id} without valid"
                                       f" end-to-end protection were dropped ({detail})")

    def _schedule_rekey(self, call: Call, now_ms: int) -> None:
        call.rekey_ms = now_ms + self.rekey_ms if self.frame_layer and self.rekey_ms else None

    def _rekey(self, call: Call, now_ms: int) -> list[Action]:
        """A new key for what we send, on the schedule; used once the peer has it.

        While one is pending (its call.rekeyed lost, or held back by the server), the
        same one goes again: the peer keeps two keys per stream, the one we seal
        under and the next, and a newer one would make it drop the one in use.
        """
        self._schedule_rekey(call, now_ms)
        if call.state is not CallState.ACTIVE or call.recv_epoch < 0:
            return []  # not now; or a peer without the layer, which opens nothing
        if call.rekey_pending is None:
            call.rekey_pending = self._next_epoch(call)
        epoch, secret = call.rekey_pending
        return [self._send(call, "call.rekey", {"call_id": call.call_id, "gen": call.gen,
                                                "media_key": b64e(secret),
                                                "media_epoch": epoch})]

    def _on_rekey(self, call: Call, payload: dict[str, Any]) -> list[Action]:
        secret = _media_secret(payload, "call.rekey")
        assert secret is not None  # required in call.rekey
        if payload["gen"] != call.gen \
                or call.state not in (CallState.ACTIVE, CallState.RECONNECTING):
            return []  # for a connection replaced
        ack = self._send(call, "call.rekeyed", {"call_id": call.call_id, "gen": call.gen,
                                                 "media_epoch": secret[0]})
        if secret[0] == call.recv_epoch:
            return [ack]  # sent again: our call.rekeyed was lost; the key is in place
        if secret[0] < call.recv_epoch:
            return []  # a key already replaced
        keys = self._receive_keys(call, *secret)
        return [MediaKeys(call.call_id, call.gen, receive=keys), ack]

    def _on_rekeyed(self, call: Call, payload: dict[str, Any]) -> list[Action]:
        pending = call.rekey_pending
        if pending is None or payload["gen"] != call.gen or payload["media_epoch"] != pending[0]:
            return []
        call.rekey_pending = None
        call.send_epoch = pending[0]
        return [MediaKeys(call.call_id, call.gen,
                          send=self._derive(call, pending[1], pending[0], sending=True))]

    def _fire(self, call: Call, event: CallEvent, now_ms: int, *,
              local: bool = False) -> list[Action]:
        allowed = TRANSITIONS[call.state]
        if event not in allowed:
            if local and event in (CallEvent.LOCAL_ACCEPTED, CallEvent.LOCAL_DECLINE,
                                   CallEvent.LOCAL_HANGUP):
                raise LocalError(
                    f"cannot {event.value.removeprefix('local_')} a call that is {call.state}",
                    code=ErrorCode.INVALID_STATE,
                )
            return []
        previous, call.state = call.state, allowed[event]
        actions: list[Action] = []
        if call.state is CallState.ENDED:
            reason = end_reason(previous, event)
            call.end_reason = reason
            call.ended_ms = now_ms
            call.deadline_ms = call.rekey_ms = None
            call.rekey_pending = call.peer_secret = None  # the media secrets go with the call
            # An outgoing call whose offer has not gone yet is unknown to the peer.
            peer_knows = call.direction == "incoming" or call.local_dtls is not None
            wire = wire_reason(previous, reason, event, peer_knows=peer_knows)
            if local and wire is not None:
                actions.append(self._send(call, "call.end",
                                          {"call_id": call.call_id, "reason": wire}))
            if call.media_started:
                actions.append(StopMedia(call.call_id))
        actions.append(self._changed(call))
        return actions

    def _send(self, call: Call, type_: str, payload: dict[str, Any]) -> SendEnvelope:
        action = SendEnvelope(call.call_id, call.peer, type_, payload)
        call.sent_ids.add(action.envelope_id)
        return action

    def _changed(self, call: Call) -> CallChanged:
        return CallChanged(call.info(self.me))



def _media_secret(payload: dict[str, Any], what: str) -> tuple[int, bytes] | None:
    """(epoch, secret) from a payload's media_key, None if it has none."""
    if "media_key" not in payload:
        return None
    secret = b64d(payload["media_key"], what=f"{what}.media_key", max_bytes=sframe.SECRET_BYTES)
    if len(secret) != sframe.SECRET_BYTES or "media_epoch" not in payload:
        raise RemoteError(f"{what}.media_key must be {sframe.SECRET_BYTES} bytes, with its"
                          " media_epoch")
    return payload["media_epoch"], secret


def transition_table_markdown() -> str:
    """docs/call-states.md, generated from TRANSITIONS so the two cannot drift apart."""
    lines = [
        "# Call states",
        "",
        "Generated from `TRANSITIONS` in `src/parley/core/call.py` by `scripts/gen-docs`;",
        "a test fails when this file and the table disagree.",
        "",
        "```mermaid",
        "stateDiagram-v2",
        "    [*] --> dialing: place (caller)",
        "    [*] --> ringing: offer received (callee)",
    ]
    for state, moves in TRANSITIONS.items():
        targets: dict[CallState, list[str]] = {}
        for event, target in moves.items():
            targets.setdefault(target, []).append(event.value)
        for target, events in targets.items():
            label = ", ".join(sorted(events)) if target is not CallState.ENDED else \
                f"{len(events)} ways (see below)"
            lines.append(f"    {state.value} --> {target.value}: {label}")
    lines += ["    ended --> [*]", "```", "",
              "A call that ends here for a local event tells the peer with `call.end` and the"
              " reason in the last column (none: the peer ended it, or never got our offer).",
              "", "| state | event | next state | end reason | peer told |",
              "|---|---|---|---|---|"]
    for state, moves in TRANSITIONS.items():
        for event, target in sorted(moves.items(), key=lambda kv: kv[0].value):
            reason = end_reason(state, event) if target is CallState.ENDED else None
            told = wire_reason(state, reason, event) if reason else None
            lines.append(f"| {state.value} | {event.value} | {target.value} |"
                         f" {reason.value if reason else ''} | {told or ''} |")
    return "\n".join(lines) + "\n"
