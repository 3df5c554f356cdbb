"""The relay's fast path: a send frame as Parley clients write it, checked in one go.

Relaying envelopes is most of what the line server does, and the general path
is slow at it: the frame is walked for depth and floats, every field of the
frame and of the envelope goes through the schema tables and their check
functions one by one, and the ciphertext is decoded from base64 only to be
thrown away. Together that was three quarters of the server's own work per
envelope.

`quick_send` does the same checks on the values orjson parsed, with cheaper
means: exact types, lengths, one regular expression per name, base64 checked
by deleting its alphabet rather than by decoding. It accepts a frame only if
the general path (`wire.parse_message`, then `Envelope.from_json`) accepts it,
and its answers are the same; anything it is not made for -- a float, a null,
padded base64, a field it does not know, a frame over the size limit -- it
leaves to the general path, which stays the reference and writes every error
message. Its limits are read from the same tables and constants
(`ENVELOPE_FIELDS`, `wire.CLIENT_MESSAGES`, `keys.NAME_CHARS`), and tests check
that the two paths agree on generated frames, good and bad.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from parley.core import wire
from parley.core.envelope import ENVELOPE_FIELDS, MAX_CIPHERTEXT, TYPE_CHARS
from parley.core.keys import NAME_CHARS, NAME_MAX

Header = tuple[str, str, str, str]  # what the server reads of an envelope: id, sender,
# recipient, type

def _bound(value: int | None) -> int:
    assert value is not None, "the schema table sets this bound"
    return value


_SEND = wire.CLIENT_MESSAGES["send"]
_SEND_KEYS = frozenset(_SEND)
_REF_MAX = _bound(_SEND["ref"].max_len)
_ENVELOPE_KEYS = frozenset(ENVELOPE_FIELDS)
_VERSION = _bound(ENVELOPE_FIELDS["v"].min_value)
_ID_MAX = _bound(ENVELOPE_FIELDS["id"].max_len)
_TIME_MIN = _bound(ENVELOPE_FIELDS["time"].min_value)
_TIME_MAX = _bound(ENVELOPE_FIELDS["time"].max_value)
# b64d's limit for MAX_CIPHERTEXT bytes; the schema's is the same, checked too.
_CT_MAX = min(ENVELOPE_FIELDS["ct"].max_len or 0, (MAX_CIPHERTEXT * 4) // 3 + 4)
_SIG_CHARS = 86  # 64 bytes, unpadded: the only unpadded length that decodes to 64
# b64d takes the URL-safe alphabet and, since it only translates "-_", the standard one.
_BASE64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/"


def _chars(chars: frozenset[str]) -> str:
    return "".join(re.escape(c) for c in sorted(chars))


_TYPE = re.compile(f"[{_chars(TYPE_CHARS)}]{{1,{ENVELOPE_FIELDS['type'].max_len}}}")
# split_device_id: "party/device", each a name (check_name: 1..NAME_MAX of NAME_CHARS, not
# starting with "-" or "_"; no name holds "/"), within the schema's length.
_NAME = f"[{_chars(NAME_CHARS - set('-_'))}][{_chars(NAME_CHARS)}]{{0,{NAME_MAX - 1}}}"
_DEVICE = re.compile(f"{_NAME}/{_NAME}")
_DEVICE_MAX = min(ENVELOPE_FIELDS["from"].max_len or 0, ENVELOPE_FIELDS["to"].max_len or 0)


def _base64(value: Any, max_chars: int) -> bool:
    """Would b64d take it? Only unpadded text is judged here."""
    return (value.__class__ is str and len(value) <= max_chars and len(value) % 4 != 1
            and value.isascii() and not value.encode().translate(None, _BASE64))


def quick_send(raw: str) -> tuple[dict[str, Any], Header] | None:
    """A send frame and its envelope's header, if checked here; None: ask the general path."""
    if len(raw) > wire.MAX_FRAME:
        return None
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if msg.__class__ is not dict or msg.get("t") != "send" or not msg.keys() <= _SEND_KEYS:
        return None
    ephemeral, ref = msg.get("ephemeral", False), msg.get("ref", "")
    if ephemeral.__class__ is not bool or ref.__class__ is not str or len(ref) > _REF_MAX:
        return None
    env = msg.get("env")
    if env.__class__ is not dict or env.keys() != _ENVELOPE_KEYS:
        return None
    version, ident, kind, sender, recipient, time_ms = (
        env["v"], env["id"], env["type"], env["from"], env["to"], env["time"])
    if (version.__class__ is not int or version != _VERSION
            or ident.__class__ is not str or len(ident) > _ID_MAX
            or kind.__class__ is not str or not _TYPE.fullmatch(kind)
            or sender.__class__ is not str or len(sender) > _DEVICE_MAX
            or not _DEVICE.fullmatch(sender)
            or recipient.__class__ is not str or len(recipient) > _DEVICE_MAX
            or not _DEVICE.fullmatch(recipient)
            or time_ms.__class__ is not int or not _TIME_MIN <= time_ms <= _TIME_MAX
            or not _base64(env["ct"], _CT_MAX)
            or not _base64(env["sig"], _SIG_CHARS) or len(env["sig"]) != _SIG_CHARS):
        return None
    return msg, (ident, sender, recipient, kind)
