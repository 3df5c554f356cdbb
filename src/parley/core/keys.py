"""Device keys.

Each device has two key pairs, both generated on the device and never sent
anywhere in private form:

* an Ed25519 *signing* key: it authenticates the device to the server
  (challenge-response), signs every envelope it sends and signs its DTLS
  fingerprint in each call;
* a hybrid ML-KEM-768 + X25519 *sealing* key (the HPKE KEM
  ``MLKEM768-X25519``): every envelope sent to the device is sealed to it, so
  that recorded traffic stays secret even against a future quantum computer.

The sealing public key is signed by the signing key, so the pair travels and is
pinned as one `DevicePublicKeys` bundle. The bundle's `fingerprint` and the
pairwise `safety_number` (see `safety.py`) are what operators compare.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

from . import schema
from .encoding import b64d, b64e, group
from .errors import ErrorCode, LocalError, RemoteError, SecurityAlarm

MLKEM768_PUBLIC_LEN = 1184
X25519_LEN = 32
ED25519_LEN = 32
KEM_PUBLIC_LEN = MLKEM768_PUBLIC_LEN + X25519_LEN
_KEM_BINDING = b"parley-kem-binding-v1\x00"
_FINGERPRINT = b"parley-device-fingerprint-v1\x00"

# Device ids are "party/device": readable in logs, assigned at enrollment.
DEVICE_ID_MAX = 81
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
NAME_MAX = 40


def check_name(name: str, *, what: str = "name") -> str:
    """Party and device names: short, lower-case, safe in paths and logs."""
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= NAME_MAX
        or not set(name) <= NAME_CHARS
        or name[0] in "-_"
    ):
        raise LocalError(
            f"invalid {what} {name!r}",
            code=ErrorCode.BAD_CONFIG,
            hint=f"use 1-{NAME_MAX} characters from a-z, 0-9, '-' and '_', starting with a letter"
            " or digit",
        )
    return name


def device_id(party: str, device: str) -> str:
    return f"{check_name(party, what='party name')}/{check_name(device, what='device name')}"


def split_device_id(value: str) -> tuple[str, str]:
    party, sep, device = value.partition("/") if isinstance(value, str) else ("", "", "")
    try:
        if not sep:
            raise LocalError("no '/'")
        return check_name(party), check_name(device)
    except LocalError as exc:
        raise RemoteError(
            f"invalid device id {value!r}: expected 'party/device'", code=ErrorCode.BAD_MESSAGE
        ) from exc

# A device's public bundle as the directory and enrollment carry it (base64, unpadded;
# `from_json` then checks sizes, the key itself and the signature binding them).
KEY_BUNDLE_FIELDS = {
    "sign": schema.text(64),
    "kem": schema.text(2048),
    "kem_sig": schema.text(128),
}
PUBLIC_KEY_FIELDS = {"id": schema.text(DEVICE_ID_MAX), **KEY_BUNDLE_FIELDS}


@dataclass(frozen=True)
class DevicePublicKeys:
    """The public half of a device: what the directory holds and pins compare."""

    device_id: str
    sign: bytes  # Ed25519 public key, 32 bytes
    kem: bytes  # ML-KEM-768 public key (1184 bytes) || X25519 public key (32 bytes)
    kem_sig: bytes  # Ed25519 signature by `sign` over the KEM key

    @property
    def party(self) -> str:
        return self.device_id.split("/", 1)[0]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over both public keys, as 16 groups of 4 hex digits."""
        return group(self.fingerprint_bytes.hex(), 4)

    @property
    def fingerprint_bytes(self) -> bytes:
        return hashlib.sha256(_FINGERPRINT + self.sign + self.kem).digest()

    def same_keys(self, other: DevicePublicKeys) -> bool:
        return self.sign == other.sign and self.kem == other.kem

    def verifier(self) -> ed25519.Ed25519PublicKey:
        return ed25519.Ed25519PublicKey.from_public_bytes(self.sign)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.verifier().verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def sealing_key(self) -> hpke.MLKEM768X25519PublicKey:
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(self.kem[:MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(self.kem[MLKEM768_PUBLIC_LEN:]),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "id": self.device_id,
            "sign": b64e(self.sign),
            "kem": b64e(self.kem),
            "kem_sig": b64e(self.kem_sig),
        }

    @classmethod
    def from_json(cls, data: Any) -> DevicePublicKeys:
        """Parse and check a bundle from the network: sizes and the KEM binding."""
        fields = schema.validate(data, PUBLIC_KEY_FIELDS, what="device keys")
        split_device_id(fields["id"])
        keys = cls(
            device_id=fields["id"],
            sign=b64d(fields["sign"], what="signing key", max_bytes=ED25519_LEN),
            kem=b64d(fields["kem"], what="sealing key", max_bytes=KEM_PUBLIC_LEN),
            kem_sig=b64d(fields["kem_sig"], what="sealing key signature", max_bytes=64),
        )
        keys.check()
        return keys

    def check(self) -> None:
        if len(self.sign) != ED25519_LEN or len(self.kem) != KEM_PUBLIC_LEN:
            raise RemoteError(
                f"device keys for {self.device_id} have the wrong length",
                code=ErrorCode.BAD_MESSAGE,
            )
        try:
            self.sealing_key()
        except ValueError as exc:
            raise RemoteError(
                f"sealing key for {self.device_id} is malformed", code=ErrorCode.BAD_MESSAGE
            ) from exc
        if not self.verify(self.kem_sig, _KEM_BINDING + self.kem):
            raise SecurityAlarm(
                f"the sealing key of {self.device_id} is not signed by its signing key",
                code=ErrorCode.BAD_SIGNATURE,
                hint="the directory entry was tampered with; do not trust this device",
            )


class DeviceKeys:
    """The private keys of this device. Lives only in the device's key file."""

    def __init__(
        self,
        signing: ed25519.Ed25519PrivateKey,
        mlkem_key: mlkem.MLKEM768PrivateKey,
        x25519_key: x25519.X25519PrivateKey,
    ) -> None:
        self._signing = signing
        self._mlkem = mlkem_key
        self._x25519 = x25519_key
        self.sealing_private = hpke.MLKEM768X25519PrivateKey(mlkem_key, x25519_key)
        self.sign_public = signing.public_key().public_bytes_raw()
        self.kem_public = (
            mlkem_key.public_key().public_bytes_raw() + x25519_key.public_key().public_bytes_raw()
        )
        self.kem_sig = signing.sign(_KEM_BINDING + self.kem_public)

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(
            ed25519.Ed25519PrivateKey.generate(),
            mlkem.MLKEM768PrivateKey.generate(),
            x25519.X25519PrivateKey.generate(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data)

    def public_key(self) -> ed25519.Ed25519PublicKey:
        """The signing key's public half (signed notes name keys by it: core.checkpoint)."""
        return self._signing.public_key()

    def public(self, device_id: str) -> DevicePublicKeys:
        return DevicePublicKeys(device_id, self.sign_public, self.kem_public, self.kem_sig)

    def to_private_bytes(self) -> bytes:
        """The key file's content. The caller must write it with mode 0600."""
        doc = {
            "format": "parley-device-keys",
            "version": 1,
            "ed25519": b64e(self._signing.private_bytes_raw()),
            "mlkem768_seed": b64e(self._mlkem.private_bytes_raw()),
            "x25519": b64e(self._x25519.private_bytes_raw()),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_private_bytes(cls, data: bytes) -> DeviceKeys:
        try:
            doc = json.loads(data)
            if doc.get("format") != "parley-device-keys" or doc.get("version") != 1:
                raise ValueError("not a Parley key file")
            return cls(
                ed25519.Ed25519PrivateKey.from_private_bytes(b64d(doc["ed25519"])),
                mlkem.MLKEM768PrivateKey.from_seed_bytes(b64d(doc["mlkem768_seed"])),
                x25519.X25519PrivateKey.from_private_bytes(b64d(doc["x25519"])),
            )
        except (ValueError, KeyError, TypeError, RemoteError) as exc:
            raise LocalError(
                f"the device key file is unreadable: {exc}",
                code=ErrorCode.BAD_CONFIG,
                hint="restore it from backup or run 'parley terminal init' for a new device",
            ) from exc
