"""Safety numbers and short authentication strings: what people compare.

A *safety number* belongs to a pair of devices. Each device contributes 30
digits derived from its identity (device id and both public keys) by a
domain-separated SHA-512; the two halves are sorted so both sides compute the
same 60 digits, shown as 12 groups of 5. Operators compare it once, out of band
(read aloud on a known phone line, or from the QR code), and then each terminal
pins the peer's keys locally. The server never learns that anyone verified.

A *SAS* belongs to a single call. It is derived from the call id, both devices'
identity keys and both DTLS fingerprints that the devices signed, so a man in
the middle of the media (who must present his own DTLS certificate) or of the
directory (who must present his own identity key) yields different codes on
the two sides. Six digits, read aloud at the start of the call. It also covers
a random nonce from each side, the caller's committed to (`sas_commitment`)
before the callee reveals its own, so that nobody can choose the code by
trying certificates (see `core.call`).
"""

from __future__ import annotations

import hashlib

from .encoding import b64e, canonical_json, group
from .errors import ErrorCode, LocalError, RemoteError
from .keys import DevicePublicKeys

_SAFETY = b"parley-safety-number-v1\x00"
_SAS = b"parley-call-sas-v2\x00"
_SAS_COMMIT = b"parley-sas-commit-v1\x00"


def _digits(data: bytes, chunks: int) -> str:
    """Each 5-byte chunk becomes five decimal digits (as in Signal's numbers)."""
    return "".join(
        f"{int.from_bytes(data[i * 5 : i * 5 + 5], 'big') % 100000:05d}" for i in range(chunks)
    )


def _safety_half(keys: DevicePublicKeys) -> str:
    digest = hashlib.sha512(
        _SAFETY + canonical_json([keys.device_id]) + keys.sign + keys.kem
    ).digest()
    return _digits(digest, 6)


def safety_number(a: DevicePublicKeys, b: DevicePublicKeys) -> str:
    """60 digits in 12 groups of 5, the same whichever side computes it."""
    halves = sorted([_safety_half(a), _safety_half(b)])
    return group("".join(halves), 5)


SAFETY_DIGITS = 60
SAFETY_GROUP = 5
TYPO_DIGITS = 2  # at most this many digits off, all in one group, reads as a typing mistake


def compare_safety_number(typed: str, expected: str) -> tuple[list[int], bool]:
    """The groups (1-12) in which what an operator typed differs from `expected`, and
    whether that is a typing mistake: one or two digits off, in one group.

    Anything more is a mismatch. A changed key changes its device's half of the number
    (30 digits), so a key an attacker chose could match a few groups by grinding, never
    all but one or two digits. Raises LocalError (``invalid_input``) for what is not a
    safety number at all: other characters than digits, spaces and dashes, or not 60
    digits.
    """
    stray = sorted({ch for ch in typed if not (ch.isdigit() or ch in " -\t\r\n")})
    if stray:
        raise LocalError(f"a safety number is digits only; you typed {''.join(stray)[:10]!r}",
                         code=ErrorCode.INVALID_INPUT,
                         hint="type the 60 digits, in groups of five if you like")
    digits = "".join(ch for ch in typed if ch.isdigit())
    want = "".join(ch for ch in expected if ch.isdigit())
    if len(digits) != SAFETY_DIGITS:
        raise LocalError(f"a safety number has {SAFETY_DIGITS} digits; you entered"
                         f" {len(digits)}", code=ErrorCode.INVALID_INPUT,
                         hint="type all twelve groups of five")
    off = [i for i in range(SAFETY_DIGITS) if digits[i] != want[i]]
    groups = sorted({i // SAFETY_GROUP + 1 for i in off})
    return groups, 0 < len(off) <= TYPO_DIGITS and len(groups) == 1


def normalize_safety_number(text: str) -> str:
    """Accept what an operator types: spaces, dashes and line breaks ignored."""
    digits = "".join(ch for ch in text if ch.isdigit())
    return group(digits, 5)


def check_fingerprint(value: str) -> None:
    """A sha-256 DTLS fingerprint: 32 hex pairs joined by colons, in either case."""
    parts = value.split(":")
    if len(parts) != 32 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                   for p in parts):
        raise RemoteError("dtls must be a sha-256 fingerprint like 'AB:CD:...'")


def normalize_fingerprint(value: str) -> str:
    """DTLS fingerprints as 'AB:CD:...' (Chromium reports lower case, SDP upper)."""
    return value.strip().upper()


def sas_commitment(call_id: str, caller_device: str, nonce: bytes) -> str:
    """The caller's commitment to its SAS nonce (SHA-256, base64), sent before the nonce."""
    return b64e(hashlib.sha256(
        _SAS_COMMIT + canonical_json([call_id, caller_device, b64e(nonce)])).digest())


def call_sas(
    call_id: str,
    caller: DevicePublicKeys,
    caller_dtls: str,
    caller_nonce: bytes,
    callee: DevicePublicKeys,
    callee_dtls: str,
    callee_nonce: bytes,
) -> str:
    """The six-digit code both sides read aloud, as 'NNN NNN'."""
    digest = hashlib.sha256(
        _SAS
        + canonical_json(
            [
                call_id,
                caller.device_id,
                caller.fingerprint_bytes.hex(),
                normalize_fingerprint(caller_dtls),
                b64e(caller_nonce),
                callee.device_id,
                callee.fingerprint_bytes.hex(),
                normalize_fingerprint(callee_dtls),
                b64e(callee_nonce),
            ]
        )
    ).digest()
    code = int.from_bytes(digest[:8], "big") % 1_000_000
    return f"{code:06d}"[:3] + " " + f"{code:06d}"[3:]
