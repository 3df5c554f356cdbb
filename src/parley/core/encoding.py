"""Byte encodings shared by every format Parley signs or sends.

Anything that is signed is first turned into bytes by `canonical_json`: sorted
keys, no whitespace, UTF-8, no floats. Two implementations that agree on the
data therefore agree on the bytes, which is what a signature needs.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from .errors import ErrorCode, RemoteError


def b64e(data: bytes) -> str:
    """URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str, *, what: str = "value", max_bytes: int | None = None) -> bytes:
    """Decode URL-safe base64 (padding optional); raise a RemoteError on junk."""
    if not isinstance(text, str):
        raise RemoteError(f"{what} must be a base64 string", code=ErrorCode.BAD_MESSAGE)
    if max_bytes is not None and len(text) > (max_bytes * 4) // 3 + 4:
        raise RemoteError(f"{what} is too long", code=ErrorCode.TOO_LARGE)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RemoteError(f"{what} is not valid base64", code=ErrorCode.BAD_MESSAGE) from exc


def canonical_json(value: Any) -> bytes:
    """The one byte form of `value` that Parley signs."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def random_id(nbytes: int = 16) -> str:
    """An unguessable identifier (128 bits by default) in URL-safe base64."""
    return b64e(secrets.token_bytes(nbytes))


def group(text: str, size: int, sep: str = " ") -> str:
    return sep.join(text[i : i + size] for i in range(0, len(text), size))
