"""The wire protocol between a terminal and the line server.

JSON text frames over one WebSocket (``/v1/ws``), each an object whose ``t``
names its type. The server learns who talks to whom and when; envelope
payloads stay sealed.

Session::

    server -> {"t":"challenge","nonce":...,"server":...}
    client -> {"t":"hello","device":"moscow/desk","sig":...,"receive":true}
    server -> {"t":"welcome","device":...,"party":...,"peers":[...]}   (or error + close)

then, in any order::

    client -> {"t":"send","env":{...},"ephemeral":true}  server -> {"t":"sent","id":..,"status":..}
    server -> {"t":"deliver","env":{...}}                client -> {"t":"ack","id":...}
    client -> {"t":"directory","party":"moscow","ref":..} server -> {"t":"directory","ref":..,...}
    client -> {"t":"ping","ref":..}                       server -> {"t":"pong","ref":..}
    client -> {"t":"linetest","record":{...},"ref":..}    server -> {"t":"filed","ref":..,...}
    client -> {"t":"lines","ref":..}                      server -> {"t":"lines","ref":..,...}
    client -> {"t":"turn","party":..,"ref":..}            server -> {"t":"turn","servers":..,...}
    server -> {"t":"presence","device":...,"online":...}
    server -> {"t":"roster","party":...}        (that party's devices changed: look again)
    server -> {"t":"acked","ids":[...]}         (these acks are committed: deleted for good)
    server -> {"t":"error","code":...,"message":...,"hint":...,"ref":...}

``hello.sig`` is the device's Ed25519 signature over `auth_statement`: the
nonce, the device id and the server's origin, so a signature made for one
server or one session cannot be replayed at another. Before login the hello
is the only frame allowed: anything else is answered once and the connection
closed (`CloseCode`). ``ephemeral`` envelopes
(call signaling) are delivered now or refused with ``recipient_offline``;
others are stored until the recipient acknowledges them. The server answers
the acks of each message with one ``acked`` once they are committed: an
envelope delivered again after that is a replay, while one delivered again
before it (the ack was lost in a crash) is an ordinary second delivery.

Batches. Each WebSocket message carries one frame, unless the connection
negotiated the subprotocol `BATCH_SUBPROTOCOL` (the client offers it in
``Sec-WebSocket-Protocol``, the server chooses it). Then either side may put
several frames in one message, one per line: frames separated by ``\n``, each
a JSON object without raw line breaks (as ``json.dumps`` writes them; JSON
strings escape theirs). A batch is packaging only. Each frame in it is parsed,
checked, rate-limited and answered exactly as if it had come alone, in order;
a bad one gets its own error and its neighbours carry on. `MAX_FRAME` bounds
each frame, `MAX_BATCH` the frames of a message, and `pack_batches` keeps a
message of several frames within `MAX_FRAME` too, so a reader's message limit
never changes. Senders batch whatever they have ready within one event-loop
turn: under load one message and one socket write carry what would otherwise
be dozens (a relayed envelope is one frame in, two out), and a lone frame goes
out as soon as before. The choice is per connection, not in ``hello``, so that
anything relaying frames one message at a time between a terminal and the
server (a proxy, a test's man in the middle) simply does not offer it.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from . import schema
from .encoding import canonical_json
from .errors import ErrorCode, RemoteError
from .keys import DEVICE_ID_MAX, KEY_BUNDLE_FIELDS, NAME_MAX, split_device_id

MAX_FRAME = 320 * 1024
MAX_BATCH = 100  # frames in one message, so that one message cannot ask for too many replies
BATCH_SUBPROTOCOL = "parley.batch.v1"
_AUTH_DOMAIN = b"parley-auth-v1\x00"


class CloseCode:
    """WebSocket close codes the server uses (4000-4999 are the application's)."""

    LOGIN_REFUSED = 4001  # the hello did not verify, or the device is unknown or revoked
    NOT_LOGGED_IN = 4002  # a frame other than hello before login
    BAD_FRAMES = 4003  # too many malformed frames
    DEVICE_REVOKED = 4004  # the operator revoked or replaced this device's keys
    LOGIN_TIMEOUT = 4005  # no login within the server's login timeout
    REPLACED = 4006  # a newer session of the same device took this one's place


def auth_statement(nonce: str, device: str, origin: str) -> bytes:
    return _AUTH_DOMAIN + canonical_json([nonce, device, origin])


def _device(value: Any) -> None:
    split_device_id(value)


_REF = schema.text(40, required=False)
_DEVICE = schema.Field(str, max_len=DEVICE_ID_MAX, check=_device)

CLIENT_MESSAGES: dict[str, dict[str, schema.Field]] = {
    "hello": {"t": schema.text(16), "device": _DEVICE, "sig": schema.text(88),
              "receive": schema.boolean(required=False)},
    "send": {"t": schema.text(16), "env": schema.obj(), "ephemeral": schema.boolean(
        required=False), "ref": _REF},
    "ack": {"t": schema.text(16), "id": schema.text(32)},
    "directory": {"t": schema.text(16), "party": schema.text(NAME_MAX), "ref": _REF},
    "ping": {"t": schema.text(16), "ref": _REF},
    # A line test's record, signed by both ends (core.linetest), filed by one of them.
    "linetest": {"t": schema.text(16), "record": schema.obj(), "ref": _REF},
    # The state of this device's lines, each with its last record, as the server shows it.
    "lines": {"t": schema.text(16), "ref": _REF},
    # TURN credentials for a call with `party` (core.turn), and the line's media policy.
    "turn": {"t": schema.text(16), "party": schema.text(NAME_MAX), "ref": _REF},
}

SERVER_MESSAGES: dict[str, dict[str, schema.Field]] = {
    "challenge": {"t": schema.text(16), "nonce": schema.text(64), "server": schema.text(200)},
    "welcome": {"t": schema.text(16), "device": _DEVICE, "party": schema.text(NAME_MAX),
                "peers": schema.Field(list, max_len=1000)},
    "sent": {"t": schema.text(16), "id": schema.text(32),
             "status": schema.text(16, choices=frozenset({"delivered", "stored"})), "ref": _REF},
    "deliver": {"t": schema.text(16), "env": schema.obj()},
    "directory": {"t": schema.text(16), "party": schema.text(NAME_MAX),
                  "devices": schema.Field(list, max_len=100), "online": schema.Field(
                      list, max_len=100), "ref": _REF,
                  # the party as its principal was registered: "The Kremlin", Europe/Moscow
                  "display": schema.text(200, required=False),
                  "timezone": schema.text(64, required=False)},
    "presence": {"t": schema.text(16), "device": _DEVICE, "online": schema.boolean()},
    "roster": {"t": schema.text(16), "party": schema.text(NAME_MAX)},
    "acked": {"t": schema.text(16), "ids": schema.Field(list, max_len=MAX_BATCH)},
    "pong": {"t": schema.text(16), "ref": _REF, "time": schema.integer(0, 2**53,
                                                                      required=False)},
    "filed": {"t": schema.text(16), "test_id": schema.text(32),
              "status": schema.text(8, choices=frozenset({"green", "amber", "red"})),
              "reasons": schema.Field(list, max_len=50), "ref": _REF},
    "lines": {"t": schema.text(16), "lines": schema.Field(list, max_len=1000), "ref": _REF},
    "turn": {"t": schema.text(16), "servers": schema.Field(list, max_len=8),
             "expires_ms": schema.integer(0, 2**53),
             "policy": schema.text(8, choices=frozenset({"any", "relay"})), "ref": _REF},
    "error": {"t": schema.text(16), "code": schema.text(40), "message": schema.text(2000),
              "hint": schema.text(2000, required=False), "ref": _REF,
              "id": schema.text(32, required=False)},
}


def parse_message(raw: str | bytes, table: dict[str, dict[str, schema.Field]],
                  *, what: str) -> dict[str, Any]:
    """Parse one frame and check it against its type's schema."""
    data = schema.parse_json(raw, max_bytes=MAX_FRAME, what=what)
    if not isinstance(data, dict):
        raise RemoteError(f"{what} must be a JSON object", code=ErrorCode.BAD_MESSAGE)
    kind = data.get("t")
    if not isinstance(kind, str):
        raise RemoteError(f"{what} lacks a string field 't' naming its type")
    fields = table.get(kind)
    if fields is None:
        raise RemoteError(
            f"unknown message type {kind[:40]!r}; expected one of {', '.join(sorted(table))}",
            code=ErrorCode.UNKNOWN_TYPE,
        )
    return schema.validate(data, fields, what=f"{kind} message")


_encode_stdlib = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode_frame(message: dict[str, Any]) -> str:
    """A frame's JSON text: compact, on one line (so it can share a message)."""
    try:
        return orjson.dumps(message).decode()
    except orjson.JSONEncodeError:
        # orjson refuses strings with lone surrogates (a peer may send one, escaped, in
        # a ref that is echoed back) and integers beyond 64 bits; the standard library
        # writes both, escaping the first.
        return _encode_stdlib(message)


def split_batch(raw: str) -> list[str]:
    """The frames of one message on a connection that negotiated batches."""
    frames = raw.split("\n")
    if len(frames) > MAX_BATCH:
        raise RemoteError(f"a message carries at most {MAX_BATCH} frames; none were processed",
                          code=ErrorCode.TOO_LARGE, hint="send the rest in another message")
    return frames


def pack_batches(frames: list[str]) -> list[str]:
    """Join frames, in order, into as few messages as `MAX_FRAME` and `MAX_BATCH` allow.

    A frame larger than `MAX_FRAME` by itself (a deliver frame is a few bytes
    longer than the send frame it came in) travels alone, as it would unbatched.
    """
    if len(frames) == 1 or (len(frames) <= MAX_BATCH
                            and sum(map(len, frames)) + len(frames) - 1 <= MAX_FRAME):
        return ["\n".join(frames)]
    messages: list[str] = []
    start, size = 0, -1
    for i, frame in enumerate(frames):
        if i > start and (size + 1 + len(frame) > MAX_FRAME or i - start == MAX_BATCH):
            messages.append("\n".join(frames[start:i]))
            start, size = i, -1
        size += 1 + len(frame)
    messages.append("\n".join(frames[start:]))
    return messages


def error_message(code: ErrorCode | str, message: str, hint: str = "",
                  ref: str | None = None, envelope_id: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"t": "error", "code": str(code), "message": message}
    if hint:
        out["hint"] = hint
    if ref is not None:
        out["ref"] = ref
    if envelope_id is not None:
        out["id"] = envelope_id
    return out


# Enrollment travels over plain HTTP POST /v1/enroll before the device can log in.
def _key_bundle(value: Any) -> None:
    schema.validate(value, KEY_BUNDLE_FIELDS, what="enrollment request.keys")


ENROLL_REQUEST = {
    "code": schema.text(40),
    "device": schema.text(NAME_MAX),
    "keys": schema.obj(check=_key_bundle),  # the device's id is the server's to give
}


def check_storable_id(envelope_id: str) -> None:
    """An envelope id from the network that a store keeps as it is (PostgreSQL's text
    holds no NUL): refused with what was wrong, never a database error."""
    if "\x00" in envelope_id:
        raise RemoteError("an envelope id cannot hold a NUL character",
                          code=ErrorCode.BAD_MESSAGE)
    try:
        envelope_id.encode()
    except UnicodeEncodeError:  # a lone surrogate, which JSON can spell (\ud800)
        raise RemoteError("an envelope id must be valid Unicode text",
                          code=ErrorCode.BAD_MESSAGE) from None
