"""The agreed record: what a log entry is, and what two sites send each other about their logs.

Each terminal keeps an append-only log of what happened on its lines (calls,
messages and files by their hashes, receipts, line tests, schedule decisions,
notes, key verifications, alarms, joint statements). An *entry* is one JSON
object, typed and versioned::

    {"v": 1, "type": "call", "site": "washington/hotline", "time_ms": ..., <its fields>}

and its bytes are its canonical form (`encoding.canonical_json`: keys sorted,
no whitespace, UTF-8, integers only -- for such values the same bytes as RFC
8785's JSON Canonicalization Scheme). Those bytes are the leaf of the log's
Merkle tree (`merkle`); an entry that is not in its canonical form, or not of
its type's fields, is refused wherever it is read.

The log's state is a signed checkpoint (`checkpoint`), sent after every call,
on a schedule and on demand to the verified devices of the other party, which
witness it:

``record.checkpoint``
    ``note`` (the signed checkpoint), ``from_size`` (the size the sender believes
    the witness saw last) and ``proof`` (the consistency proof from there), and
    ``statements``: inclusion proofs into this checkpoint of the joint
    statements that became final since ``from_size``.
``record.cosigned``
    the witness's answer: its ``cosignature`` on ``note`` if the proof held;
    ``have``, the size it last cosigned (what the next proof starts from); and
    ``refused``, why it would not cosign (the log forked: both notes are kept).

Pure: no clock, no sockets, no store.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from . import merkle, schema
from .checkpoint import MAX_NOTE
from .encoding import b64d, canonical_json
from .errors import ErrorCode, RemoteError
from .keys import DEVICE_ID_MAX, split_device_id

VERSION = 1
MAX_ENTRY = 16_384
MAX_TEXT = 8_000  # a note, or a message's text when the operator logs texts
MAX_PROOF = 64  # hashes in a proof: a tree of 2**64 leaves
MAX_LIST = 500  # ids a receipt entry names (core.messages.MAX_RECEIPT_IDS)
ORIGIN_PREFIX = "parley-record/"


def origin_of(device_id: str) -> str:
    """The origin line of a device's log (its checkpoints name it)."""
    return ORIGIN_PREFIX + device_id


def _device(value: Any) -> None:
    split_device_id(value)


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _hex64(value: Any) -> None:
    if _HEX64.fullmatch(value) is None:
        raise RemoteError("a SHA-256 is 64 lower-case hex digits", code=ErrorCode.BAD_MESSAGE)


def _strings(max_len: int) -> Any:
    def check(value: Any) -> None:
        if not all(isinstance(v, str) and len(v) <= max_len for v in value):
            raise RemoteError(f"a list of strings of at most {max_len} characters",
                              code=ErrorCode.BAD_MESSAGE)
    return check


DEVICE = schema.Field(str, max_len=DEVICE_ID_MAX, check=_device)
SHA256 = schema.Field(str, max_len=64, check=_hex64)
_MS = schema.integer(0, 10**15)
_OPT_MS = schema.integer(0, 10**15, required=False)
_ID = schema.text(64)
_REASON = schema.text(400, required=False)

# Each entry type's own fields (besides v, type, site and time_ms).
ENTRY_FIELDS: dict[str, dict[str, schema.Field]] = {
    "call": {"call_id": _ID, "peer": DEVICE, "direction": schema.text(8),
             "media": schema.text(8), "started_ms": _OPT_MS, "ended_ms": _MS,
             "duration_ms": schema.integer(0, 10**12), "verified": schema.boolean(),
             "sas": schema.text(64, required=False), "end_reason": schema.text(64),
             "alarm": schema.text(64, required=False),
             "test_id": schema.text(64, required=False)},
    "message": {"msg_id": _ID, "dir": schema.text(8, choices=frozenset({"sent", "received"})),
                "party": schema.text(40), "sender": DEVICE,
                "kind": schema.text(8, choices=frozenset({"text", "file"})),
                "sha256": SHA256, "size": schema.integer(0, 2**40),
                "name_sha256": schema.Field(str, required=False, max_len=64, check=_hex64),
                "text": schema.text(MAX_TEXT, required=False)},
    "receipt": {"from": DEVICE, "kind": schema.text(16),
                "ids": schema.Field(list, max_len=MAX_LIST, check=_strings(64))},
    "linetest": {"test_id": _ID, "line": schema.text(100), "status": schema.text(16),
                 "reasons": schema.Field(list, max_len=32, check=_strings(200))},
    "schedule": {"talk_id": _ID, "action": schema.text(32), "by": schema.text(40),
                 "state": schema.text(16), "title": schema.text(200),
                 "start_ms": _OPT_MS, "sequence": schema.integer(0, 10**6)},
    "note": {"text": schema.text(MAX_TEXT), "by": schema.text(80, required=False)},
    "verification": {"device": DEVICE, "fingerprint": schema.text(80)},
    "alarm": {"code": schema.text(32), "message": schema.text(600),
              "subject": schema.text(DEVICE_ID_MAX, required=False),
              "call_id": schema.text(64, required=False)},
    "statement": {"statement": _ID, "version": schema.integer(1, 10**4),
                  "event": schema.text(16, choices=frozenset({"proposed", "signed", "final"})),
                  "sha256": SHA256, "title": schema.text(200), "by": DEVICE,
                  "signatures": schema.obj(required=False)},
    "fork": {"origin": schema.text(DEVICE_ID_MAX + len(ORIGIN_PREFIX)),
             "seen_size": schema.integer(0, 2**62), "now_size": schema.integer(0, 2**62),
             "seen_sha256": SHA256, "now_sha256": SHA256, "why": schema.text(400)},
}
_COMMON = {"v": schema.integer(1, 1000), "type": schema.text(32), "site": DEVICE,
           "time_ms": _MS}


def make_entry(type_: str, site: str, time_ms: int, **fields: Any) -> bytes:
    """An entry's canonical bytes; refuses what its type does not allow."""
    kept = {k: v for k, v in fields.items() if v is not None}
    schema.validate({"v": VERSION, "type": type_, "site": site, "time_ms": time_ms}, _COMMON,
                    what="record entry")
    type_fields = ENTRY_FIELDS.get(type_)
    if type_fields is None:
        raise RemoteError(f"no entry type {type_!r}", code=ErrorCode.BAD_MESSAGE)
    schema.validate(kept, type_fields, what=f"record entry ({type_})")
    data = canonical_json({"v": VERSION, "type": type_, "site": site, "time_ms": time_ms,
                           **kept})
    if len(data) > MAX_ENTRY:
        raise RemoteError(f"a record entry of {len(data)} bytes", code=ErrorCode.TOO_LARGE)
    return data


def parse_entry(data: bytes) -> dict[str, Any]:
    """An entry read back (from a store, a bundle, another site): canonical, and of its
    type's fields when its version and type are known. Raises RemoteError."""
    value = schema.parse_json(data, max_bytes=MAX_ENTRY, what="record entry")
    if not isinstance(value, dict) or canonical_or_none(value) != data:
        raise RemoteError("a record entry is one JSON object in its canonical form",
                          code=ErrorCode.BAD_MESSAGE)
    common = {k: value.get(k) for k in _COMMON}
    schema.validate(common, _COMMON, what="record entry")
    fields = ENTRY_FIELDS.get(value["type"])
    if value["v"] == VERSION and fields is not None:
        rest = {k: v for k, v in value.items() if k not in _COMMON}
        schema.validate(rest, fields, what=f"record entry ({value['type']})")
    return value


def canonical_or_none(value: Any) -> bytes | None:
    """The canonical form of what was read, or None: it holds what has none (a float)."""
    try:
        return canonical_json(value)
    except ValueError:
        return None


def leaf(data: bytes) -> bytes:
    return merkle.leaf_hash(data)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- what sites send each other -------------------------------------------------------

def _proof(value: Any) -> None:
    for item in value:
        if not isinstance(item, str) or len(b64d(item, what="proof hash", max_bytes=32)) != 32:
            raise RemoteError("a proof is a list of 32-byte hashes", code=ErrorCode.BAD_MESSAGE)


PROOF = schema.Field(list, max_len=MAX_PROOF, check=_proof)
STATEMENT_PROOF_FIELDS = {"statement": _ID, "version": schema.integer(1, 10**4),
                          "index": schema.integer(0, 2**62),
                          "entry": schema.text(MAX_ENTRY), "proof": PROOF}


def _statement_proofs(value: Any) -> None:
    for item in value:
        schema.validate(item, STATEMENT_PROOF_FIELDS, what="statement proof")


PAYLOADS: dict[str, dict[str, schema.Field]] = {
    "record.checkpoint": {
        "note": schema.text(MAX_NOTE), "from_size": schema.integer(0, 2**62), "proof": PROOF,
        "statements": schema.Field(list, max_len=32, check=_statement_proofs,
                                   required=False)},
    "record.cosigned": {
        "note": schema.text(MAX_NOTE), "cosignature": schema.text(400, required=False),
        "have": schema.integer(0, 2**62), "refused": _REASON},
}


def decode_proof(items: list[str]) -> list[bytes]:
    return [b64d(item, what="proof hash", max_bytes=32) for item in items]


def describe(entry: Mapping[str, Any]) -> str:
    """One line for a person: what an entry says (an entry as `parse_entry` gave it)."""
    t = entry.get("type")
    if entry.get("v") != VERSION or t not in ENTRY_FIELDS:  # fields of its own: not read
        return f"an entry of type {t!r} (version {entry.get('v')})"
    if t == "call":
        verified = "verified" if entry.get("verified") else "NOT verified"
        return (f"call {entry['direction']} with {entry['peer']}, {entry['media']},"
                f" {entry['duration_ms'] // 1000} s, {verified}, ended: {entry['end_reason']}")
    if t == "message":
        what = "text" if entry["kind"] == "text" else "file"
        return (f"{what} {entry['dir']} ({'to' if entry['dir'] == 'sent' else 'from'}"
                f" {entry['party']}), {entry['size']} bytes, sha256 {entry['sha256'][:16]}")
    if t == "receipt":
        return f"{entry['kind']} receipt from {entry['from']} for {len(entry['ids'])} message(s)"
    if t == "linetest":
        return f"line test {entry['line']}: {entry['status']}"
    if t == "schedule":
        return f"talk '{entry['title']}': {entry['action']} by {entry['by']} -> {entry['state']}"
    if t == "note":
        return f"note: {entry['text']}"
    if t == "verification":
        return f"verified {entry['device']} ({entry['fingerprint'][:19]})"
    if t == "alarm":
        return f"alarm {entry['code']}: {entry['message']}"
    if t == "statement":
        return (f"statement '{entry['title']}' v{entry['version']} {entry['event']}"
                f" by {entry['by']}")
    if t == "fork":
        return (f"the log {entry['origin']} does not extend what it showed before"
                f" ({entry['seen_size']} -> {entry['now_size']}): {entry['why']}")
    return f"an entry of type {t!r} (version {entry.get('v')})"
