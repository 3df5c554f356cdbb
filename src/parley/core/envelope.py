"""Sealed and signed envelopes: the only thing terminals send each other.

An envelope carries one payload (an SDP offer, an ICE candidate, a message, a
receipt...) from one device to another through the line server, which can read
the header (who, to whom, what kind, when) but not the payload.

Construction, using only standard primitives from `cryptography`:

* **Seal** -- HPKE (RFC 9180) base mode, KEM ``MLKEM768-X25519`` (hybrid:
  secure if either ML-KEM-768 or X25519 holds), KDF HKDF-SHA256, AEAD
  ChaCha20-Poly1305, to the recipient's sealing key. The HPKE ``info`` is the
  canonical header, so a ciphertext cannot be moved under another header.
* **Sign** -- Ed25519 by the sender's signing key over a domain tag, the
  canonical header (version, id, type, sender, recipient, time) and the
  ciphertext. The recipient verifies with the key it *pinned* for the sender,
  not with whatever the server's directory says today.
* **Replay** -- the id is 128 random bits and the time is in the signed header;
  `replay.ReplayGuard` drops a repeated id or a stale time.

The recipient checks in this order: addressed to me, signature by the sender's
trusted key, then decrypt. A failure at any step is a `SecurityAlarm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hpke

from . import schema
from .encoding import b64d, b64e, canonical_json, random_id
from .errors import ErrorCode, RemoteError, SecurityAlarm
from .keys import DEVICE_ID_MAX, DeviceKeys, DevicePublicKeys, split_device_id

VERSION = 1
MAX_CIPHERTEXT = 192 * 1024
MAX_PAYLOAD = MAX_CIPHERTEXT - 2048
MAX_ENVELOPE_JSON = 300 * 1024
_SIG_DOMAIN = b"parley-envelope-sig-v1\x00"
_INFO_DOMAIN = b"parley-envelope-v1\x00"
SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)
TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


def _check_type(value: str) -> None:
    if not value or not set(value) <= TYPE_CHARS:
        raise RemoteError(f"envelope type {value!r} is not a valid type name")


def _check_device(value: str) -> None:
    split_device_id(value)


ENVELOPE_FIELDS = {
    "v": schema.integer(VERSION, VERSION),
    "id": schema.text(32),
    "type": schema.Field(str, max_len=40, check=_check_type),
    "from": schema.Field(str, max_len=DEVICE_ID_MAX, check=_check_device),
    "to": schema.Field(str, max_len=DEVICE_ID_MAX, check=_check_device),
    "time": schema.integer(0, 2**53),
    "ct": schema.text((MAX_CIPHERTEXT * 4) // 3 + 4),
    "sig": schema.text(88),
}


@dataclass(frozen=True)
class Envelope:
    id: str
    type: str
    sender: str
    recipient: str
    time_ms: int
    ciphertext: bytes
    signature: bytes
    version: int = VERSION

    def header(self) -> bytes:
        return canonical_json(
            [self.version, self.id, self.type, self.sender, self.recipient, self.time_ms]
        )

    def signed_bytes(self) -> bytes:
        return _SIG_DOMAIN + self.header() + b"\x00" + self.ciphertext

    def to_json(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "id": self.id,
            "type": self.type,
            "from": self.sender,
            "to": self.recipient,
            "time": self.time_ms,
            "ct": b64e(self.ciphertext),
            "sig": b64e(self.signature),
        }

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        """Validate the outer form only; nothing here proves who sent it."""
        schema.validate(data, ENVELOPE_FIELDS, what="envelope")
        signature = b64d(data["sig"], what="envelope signature", max_bytes=64)
        if len(signature) != 64:
            raise RemoteError("envelope signature must be 64 bytes")
        return cls(
            id=data["id"],
            type=data["type"],
            sender=data["from"],
            recipient=data["to"],
            time_ms=data["time"],
            ciphertext=b64d(data["ct"], what="envelope ciphertext", max_bytes=MAX_CIPHERTEXT),
            signature=signature,
            version=data["v"],
        )


def seal_envelope(
    sender_keys: DeviceKeys,
    sender_id: str,
    recipient: DevicePublicKeys,
    type_: str,
    payload: dict[str, Any],
    now_ms: int,
    envelope_id: str | None = None,
) -> Envelope:
    """Seal `payload` to `recipient` and sign it as `sender_id`."""
    body = canonical_json(payload)
    if len(body) > MAX_PAYLOAD:
        raise RemoteError(
            f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD}", code=ErrorCode.TOO_LARGE
        )
    unsigned = Envelope(
        id=envelope_id or random_id(),
        type=type_,
        sender=sender_id,
        recipient=recipient.device_id,
        time_ms=now_ms,
        ciphertext=b"",
        signature=b"",
    )
    ciphertext = SUITE.encrypt(body, recipient.sealing_key(), info=_INFO_DOMAIN + unsigned.header())
    sealed = Envelope(**{**unsigned.__dict__, "ciphertext": ciphertext})
    return Envelope(**{**sealed.__dict__, "signature": sender_keys.sign(sealed.signed_bytes())})


def verify_envelope(envelope: Envelope, my_id: str, sender_keys: DevicePublicKeys) -> None:
    """Addressed to me and signed by the key I trust for its sender, or an alarm."""
    if envelope.recipient != my_id:
        raise SecurityAlarm(
            f"an envelope meant for {envelope.recipient} was delivered to {my_id}",
            code=ErrorCode.WRONG_RECIPIENT,
            hint="the server misrouted it; it was dropped unread",
        )
    if envelope.sender != sender_keys.device_id:
        raise SecurityAlarm(
            f"envelope claims sender {envelope.sender} but was checked against"
            f" {sender_keys.device_id}",
            code=ErrorCode.BAD_SIGNATURE,
        )
    if not sender_keys.verify(envelope.signature, envelope.signed_bytes()):
        raise SecurityAlarm(
            f"an envelope from {envelope.sender} carries a signature that does not verify"
            " against that device's trusted key",
            code=ErrorCode.BAD_SIGNATURE,
            hint="it was forged or altered in transit and was dropped",
        )


def open_envelope(
    envelope: Envelope, my_keys: DeviceKeys, my_id: str, sender_keys: DevicePublicKeys
) -> dict[str, Any]:
    """Verify, then decrypt; return the payload object."""
    verify_envelope(envelope, my_id, sender_keys)
    try:
        body = SUITE.decrypt(
            envelope.ciphertext, my_keys.sealing_private, info=_INFO_DOMAIN + envelope.header()
        )
    except Exception as exc:  # cryptography raises InvalidTag or ValueError
        raise SecurityAlarm(
            f"an envelope from {envelope.sender} could not be decrypted",
            code=ErrorCode.DECRYPT_FAILED,
            hint="it was sealed to another key or altered; it was dropped",
        ) from exc
    payload = schema.parse_json(body, max_bytes=MAX_PAYLOAD, what=f"{envelope.type} payload")
    if not isinstance(payload, dict):
        raise RemoteError(f"{envelope.type} payload must be a JSON object")
    return payload
