"""A record bundle, and its verifier: what a site exports, checked with nothing but the file.

A bundle is one JSON object in canonical form (`encoding.canonical_json`),
signed as a whole by the device that exported it::

    {"format": "parley-record-bundle", "version": 1,
     "made_by": "<device>", "made_ms": ...,
     "keys": {"<device>": {"sign": "<b64 Ed25519 public key>", ...}},
     "logs": [{"origin": "parley-record/<device>", "key": "<device>",
               "checkpoints": [{"note": "<signed checkpoint>",
                                "cosignatures": [{"by": "<device>", "line": "<line>"}]}]}],
     "entries": [{"log": i, "checkpoint": j, "index": n, "entry": "<entry JSON>",
                  "proof": ["<b64 hash>", ...]}],
     "statements": [{"core": {...}, "text": "<text or absent>",
                     "signatures": {"<device>": "<b64 signature>"}}],
     "signature": "<b64 Ed25519 signature by made_by>"}

`verify` checks, in this order, and stops at the first thing that does not
hold, saying where: the form (canonical JSON, base64 in its canonical form,
the fields); each checkpoint's signature by its log's key and each
cosignature by its witness's key (C2SP signed-note / tlog-cosignature); each
entry's form and its inclusion in its checkpoint's tree (RFC 9162, section
2.1.3.2); each statement's hash, text and signatures, and the entries that
record it final; last, the exporter's signature over everything else, which
is what makes *any* changed byte fail. It needs no network, no server and no
state: `docs/record.md` describes it for whoever wants to write their own.

The paper form (`to_paper` / `from_paper`) is the same bundle, compressed
(zlib) and written in Base45 (RFC 9285) behind ``PR1:``, for a QR code in
alphanumeric mode.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from . import checkpoint, merkle, record, schema
from .encoding import b64d, b64e, canonical_json, group
from .errors import ErrorCode, ParleyError, RemoteError
from .keys import DevicePublicKeys, split_device_id
from .statement import Version, check_core, signed_message

FORMAT = "parley-record-bundle"
MAX_BUNDLE = 64 * 1024 * 1024
BUNDLE_CONTEXT = b"parley-record-bundle/v1\x00"
PAPER_PREFIX = "PR1:"
PAPER_MAX = 4296  # characters a QR code holds in alphanumeric mode (version 40, level L)


class BundleError(ParleyError):
    """A bundle that does not prove what it claims, and where it fails."""

    code = ErrorCode.BAD_SIGNATURE


def _fail(where: str, what: str) -> BundleError:
    return BundleError(f"{where}: {what}")


def b64_strict(text: Any, where: str, size: int | None = None) -> bytes:
    """Base64 that decodes to `size` bytes and is the one way to write them."""
    try:
        data = b64d(text, what=where)
    except RemoteError as exc:
        raise _fail(where, exc.message) from None
    if b64e(data) != text or (size is not None and len(data) != size):
        raise _fail(where, f"not {size or 'a'}-byte base64 in its canonical form")
    return data


def body_bytes(bundle: dict[str, Any]) -> bytes:
    """What the exporter signs: the bundle without its signature."""
    return BUNDLE_CONTEXT + canonical_json({k: v for k, v in bundle.items()
                                            if k != "signature"})


def sign(bundle: dict[str, Any], signer: Any) -> dict[str, Any]:
    return {**bundle, "signature": b64e(signer(body_bytes(bundle)))}


@dataclass
class Report:
    """What a bundle proves, in words (`lines`) and as data."""

    lines: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)  # what the bundle does *not* establish
    keys: dict[str, str] = field(default_factory=dict)  # device -> fingerprint shown
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "proven": self.lines, "limits": self.limits, "keys": self.keys,
                "checkpoints": self.checkpoints, "entries": self.entries,
                "statements": self.statements}


_TOP = {"format": schema.text(40), "version": schema.integer(1, 1),
        "made_by": record.DEVICE, "made_ms": schema.integer(0, 10**15),
        "keys": schema.obj(), "logs": schema.Field(list, max_len=64),
        "entries": schema.Field(list, max_len=1_000_000),
        "statements": schema.Field(list, max_len=1000), "signature": schema.text(100)}
_KEY = {"sign": schema.text(50), "kem": schema.text(2000, required=False),
        "kem_sig": schema.text(100, required=False)}
_LOG = {"origin": schema.text(200), "key": record.DEVICE,
        "checkpoints": schema.Field(list, max_len=1000)}
_CP = {"note": schema.text(checkpoint.MAX_NOTE), "cosignatures": schema.Field(list, max_len=16)}
_COSIG = {"by": record.DEVICE, "line": schema.text(400)}
_ENTRY = {"log": schema.integer(0, 63), "checkpoint": schema.integer(0, 999),
          "index": schema.integer(0, 2**62), "entry": schema.text(record.MAX_ENTRY),
          "proof": record.PROOF}
_STATEMENT = {"core": schema.obj(), "text": schema.text(100_000, required=False),
              "signatures": schema.obj()}


def _fields(value: Any, fields: dict[str, schema.Field], where: str) -> dict[str, Any]:
    try:
        return schema.validate(value, fields, what=where)
    except RemoteError as exc:
        raise _fail(where, exc.message) from None


def signing_key_text(raw: bytes) -> str:
    """An Ed25519 signing key as the paper, `parley keys show` and the verifier show it."""
    return group(raw.hex(), 4)


def parse(raw: bytes) -> dict[str, Any]:
    """The bundle in a file: canonical JSON (with or without a final newline)."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        value = schema.parse_json(body, max_bytes=MAX_BUNDLE, what="the bundle")
    except RemoteError as exc:
        raise _fail("the bundle", exc.message) from None
    if record.canonical_or_none(value) != body:
        raise _fail("the bundle", "not in its canonical form (a byte was changed, added or"
                                  " taken away)")
    return _fields(value, _TOP, "the bundle")


def verify(bundle: dict[str, Any]) -> Report:
    """Check everything a bundle claims; a Report of what it proves, or BundleError."""
    report = Report()
    if bundle["format"] != FORMAT:
        raise _fail("format", f"not a {FORMAT}")
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    seen_keys: dict[bytes, str] = {}
    for device, value in sorted(bundle["keys"].items()):
        where = f"keys[{device}]"
        try:
            split_device_id(device)
        except RemoteError:
            raise _fail(where, "not a device name") from None
        fields = _fields(value, _KEY, where)
        raw = b64_strict(fields["sign"], where + ".sign", 32)
        if raw in seen_keys:  # one key cannot be two devices (a site posing as the other)
            raise _fail(where, f"the same key as {seen_keys[raw]}'s")
        seen_keys[raw] = device
        keys[device] = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        if "kem" in fields:  # the whole device key: its fingerprint, as operators know it
            try:
                full = DevicePublicKeys.from_json({"id": device, **fields})
            except RemoteError as exc:
                raise _fail(where, exc.message) from None
            report.keys[device] = full.fingerprint
        else:
            report.keys[device] = "signing key " + signing_key_text(raw)

    def key(device: str, where: str) -> ed25519.Ed25519PublicKey:
        if device not in keys:
            raise _fail(where, f"no key for {device} in the bundle")
        return keys[device]

    # Checkpoints and their cosignatures.
    trees: list[list[tuple[checkpoint.Checkpoint, list[str]]]] = []
    for i, log in enumerate(bundle["logs"]):
        where = f"logs[{i}]"
        log = _fields(log, _LOG, where)
        if log["origin"] != record.origin_of(log["key"]):
            raise _fail(where, f"the log of {log['key']} is {record.origin_of(log['key'])}")
        public = key(log["key"], where)
        seen = []
        for j, cp in enumerate(log["checkpoints"]):
            here = f"{where}.checkpoints[{j}]"
            cp = _fields(cp, _CP, here)
            try:
                opened = checkpoint.open_checkpoint(cp["note"], log["key"], public)
            except ParleyError as exc:
                raise _fail(here, exc.message) from None
            if opened.origin != log["origin"]:
                raise _fail(here, f"a checkpoint of {opened.origin}, not of {log['origin']}")
            witnesses = []
            for k, cosig in enumerate(cp["cosignatures"]):
                at = f"{here}.cosignatures[{k}]"
                cosig = _fields(cosig, _COSIG, at)
                if split_device_id(cosig["by"])[0] == split_device_id(log["key"])[0]:
                    raise _fail(at, "a log is witnessed by the other party, not its own")
                try:
                    when = checkpoint.verify_cosignature(cp["note"], cosig["line"], cosig["by"],
                                                         key(cosig["by"], at))
                except ParleyError as exc:
                    raise _fail(at, exc.message) from None
                witnesses.append(cosig["by"])
                report.checkpoints.append({"log": log["key"], "size": opened.size,
                                           "cosigned_by": cosig["by"], "time_s": when})
            seen.append((opened, witnesses))
            said = (f"cosigned by {', '.join(witnesses)}" if witnesses
                    else "NOT cosigned by any witness")
            if not witnesses:
                report.limits.append(f"the checkpoint of {log['key']}'s log at size"
                                     f" {opened.size:,} is not cosigned: nothing shows that"
                                     " the other site saw that log")
            report.lines.append(f"checkpoint of {log['key']}'s log at size {opened.size:,}:"
                                f" signed by {log['key']}, {said}")
        trees.append(seen)

    # Entries, each in its checkpoint's tree.
    final: dict[str, list[tuple[str, int, int, list[str], dict[str, Any]]]] = {}
    counts: dict[tuple[str, bool], int] = {}
    for n, item in enumerate(bundle["entries"]):
        where = f"entries[{n}]"
        item = _fields(item, _ENTRY, where)
        if item["log"] >= len(trees) or item["checkpoint"] >= len(trees[item["log"]]):
            raise _fail(where, "names a log or checkpoint the bundle does not have")
        cp, witnesses = trees[item["log"]][item["checkpoint"]]
        site = bundle["logs"][item["log"]]["key"]
        data = item["entry"].encode()
        try:
            entry = record.parse_entry(data)
        except RemoteError as exc:
            raise _fail(where, exc.message) from None
        if entry["site"] != site:
            raise _fail(where, f"an entry of {entry['site']} in the log of {site}")
        proof = [b64_strict(p, f"{where}.proof[{k}]", 32) for k, p in enumerate(item["proof"])]
        try:
            merkle.verify_inclusion(item["index"], cp.size, record.leaf(data), proof, cp.root)
        except RemoteError as exc:
            raise _fail(where, exc.message) from None
        counted = (site, bool(witnesses))
        counts[counted] = counts.get(counted, 0) + 1
        report.entries.append({"log": site, "index": item["index"], "size": cp.size,
                               "cosigned": bool(witnesses), "entry": entry})
        if entry["type"] == "statement" and entry.get("event") == "final" and \
                entry["v"] == record.VERSION:
            final.setdefault(entry["sha256"], []).append(
                (site, item["index"], cp.size, witnesses, entry))
    for (site, cosigned), count in counts.items():
        report.lines.append(f"{count:,} entr{'y' if count == 1 else 'ies'} of {site}'s log"
                            " proven included in "
                            + ("a checkpoint the other site cosigned" if cosigned else
                               "a checkpoint NOT cosigned"))

    # Statements: hash, text, signatures, and where they are recorded final.
    for n, item in enumerate(bundle["statements"]):
        where = f"statements[{n}]"
        item = _fields(item, _STATEMENT, where)
        try:
            core = check_core(item["core"])
            if "text" in item:
                Version.from_payload({"core": core, "text": item["text"]})
        except RemoteError as exc:
            raise _fail(where, exc.message) from None
        sha = record.sha256_hex(canonical_json(core))
        signers = set(_check_signatures(item["signatures"], sha, key, f"{where}.signatures"))
        recorded = final.get(sha, [])
        for site, index, _size, _w, entry in recorded:
            at = f"the final entry {index} of {site}'s log"
            if split_device_id(site)[0] not in core["parties"]:
                raise _fail(where, f"{at}: {site} is not of a party to it")
            got = _check_signatures(entry.get("signatures") or {}, sha, key, at)
            if {split_device_id(d)[0] for d in got} != set(core["parties"]):
                raise _fail(where, f"{at}: records it final without a signature of each"
                                   " party")
            signers.update(got)  # each checked: a log may hold another device's of a party
        parties = {split_device_id(d)[0] for d in signers}
        missing = sorted(set(core["parties"]) - parties)
        signers_list = sorted(signers)
        logged = {split_device_id(site)[0] for site, *_ in recorded}
        sites = " and ".join(f"{site}'s log at size {size:,}"
                             + ("" if w else " (checkpoint not cosigned)")
                             for site, _i, size, w, _e in recorded)
        words = (f"statement {core['statement']} v{core['version']} '{core['title']}'"
                 f" (sha256 {sha[:16]}, text sha256 {core['text_sha256'][:16]}"
                 f"{'' if 'text' in item else ', text not in the bundle'})"
                 f": signed by {' and '.join(signers_list) or 'nobody'}")
        words += ("; NOT signed by " + ", ".join(missing)) if missing else "; final"
        words += f"; included in {sites}" if recorded else "; not shown included in any log"
        report.lines.append(words)
        if missing:
            report.limits.append(f"statement {core['statement']} v{core['version']} is not"
                                 f" signed by {', '.join(missing)}: it is not final")
        if logged != set(core["parties"]):
            report.limits.append(f"statement {core['statement']} v{core['version']} is not"
                                 " shown in the logs of both parties")
        report.statements.append({"statement": core["statement"], "version": core["version"],
                                  "title": core["title"], "sha256": sha,
                                  "text_sha256": core["text_sha256"],
                                  "signers": signers_list,
                                  "final": not missing,
                                  "included": [{"log": s, "index": i, "size": z,
                                                "cosigned_by": w}
                                               for s, i, z, w, _e in recorded]})

    # Last, the whole: whatever was changed that nothing above covers.
    maker = bundle["made_by"]
    raw = b64_strict(bundle["signature"], "signature", 64)
    try:
        key(maker, "signature").verify(raw, body_bytes(bundle))
    except InvalidSignature:
        raise _fail("signature", f"the bundle is not as {maker} exported it (its signature"
                                 " does not hold: something in it was changed)") from None
    report.lines.append(f"exported by {maker}, whose signature covers the whole bundle")
    return report


def _check_signatures(signatures: Any, sha: str, key: Any, where: str) -> list[str]:
    """The devices whose signatures on this version hold; BundleError for one that does
    not (each signature names its device: core.statement.signed_message)."""
    if not isinstance(signatures, dict):
        raise _fail(where, "signatures: device -> signature")
    out = []
    for device, sig in sorted(signatures.items()):
        raw = b64_strict(sig, f"{where}[{device}]", 64)
        try:
            key(device, where).verify(raw, signed_message(sha, device))
        except InvalidSignature:
            raise _fail(f"{where}[{device}]", f"not {device}'s signature on this version"
                                              f" ({sha[:16]})") from None
        out.append(device)
    return out


def verify_file(raw: bytes) -> Report:
    return verify(parse(raw))


# -- paper: Base45 (RFC 9285) of the zlib-compressed bundle ----------------------------

_B45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"


def b45encode(data: bytes) -> str:
    out = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        e, n = divmod(n, 45 * 45)
        d, c = divmod(n, 45)
        out += [_B45[c], _B45[d], _B45[e]]
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += [_B45[c], _B45[d]]
    return "".join(out)


def b45decode(text: str) -> bytes:
    try:
        values = [_B45.index(ch) for ch in text]
    except ValueError:
        raise RemoteError("not Base45", code=ErrorCode.BAD_MESSAGE) from None
    out = bytearray()
    for i in range(0, len(values), 3):
        chunk = values[i:i + 3]
        if len(chunk) == 3:
            n = chunk[0] + chunk[1] * 45 + chunk[2] * 45 * 45
            if n > 0xFFFF:
                raise RemoteError("not Base45", code=ErrorCode.BAD_MESSAGE)
            out += n.to_bytes(2, "big")
        elif len(chunk) == 2:
            n = chunk[0] + chunk[1] * 45
            if n > 0xFF:
                raise RemoteError("not Base45", code=ErrorCode.BAD_MESSAGE)
            out.append(n)
        else:
            raise RemoteError("not Base45", code=ErrorCode.BAD_MESSAGE)
    return bytes(out)


def to_paper(bundle: dict[str, Any]) -> str:
    return PAPER_PREFIX + b45encode(zlib.compress(canonical_json(bundle), 9))


def from_paper(text: str) -> bytes:
    """The bundle's bytes from the code on paper (as read from its QR code, or typed)."""
    # Base45 has a space among its letters: only line breaks (a typed code) are dropped.
    code = text.strip("\r\n\t").replace("\r", "").replace("\n", "").upper()
    if not code.startswith(PAPER_PREFIX):
        raise _fail("the code", f"a Parley paper code begins with {PAPER_PREFIX}")
    try:
        packed = b45decode(code[len(PAPER_PREFIX):])
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, MAX_BUNDLE)
        if inflate.unconsumed_tail or not inflate.eof:
            raise _fail("the code", "incomplete, or larger than a bundle may be")
    except (RemoteError, zlib.error) as exc:
        raise _fail("the code", f"unreadable ({exc})") from None
    return raw


def public_key_json(device: DevicePublicKeys, *, whole: bool) -> dict[str, str]:
    """A device's key as a bundle holds it: whole (its fingerprint can be shown) or only its
    signing key (for paper)."""
    data = device.to_json()
    out = {"sign": data["sign"]}
    if whole:
        out.update(kem=data["kem"], kem_sig=data["kem_sig"])
    return out


def b64_hashes(proof: list[bytes]) -> list[str]:
    return [b64e(h) for h in proof]
