"""Joint statements: drafted by one party, edited in turns, final when both sign one version.

A statement is a chain of *versions*. Version 1 is a draft; each later
version is the other party's edit of the one before (the parties take turns:
whoever proposed the latest version waits for the other's edit or signature).
A version's identity is the SHA-256 of its canonical core::

    {"v": 1, "statement": id, "version": n, "parties": [a, b], "title": ...,
     "text_sha256": ..., "attachments": [{"name", "sha256", "size"}, ...],
     "by": "<device>", "parent": "<sha256 of version n-1, or ''>", "time_ms": ...}

-- the text itself travels beside the core, and is checked against its hash.
A signature is Ed25519, by a device's signing key, over
``b"parley-statement-signature/v1\\x00" || SHA-256(core) || device name``: it
covers one version, by one named device, nothing else, so nobody can sign a
version other than the one whose hash they were shown (`StatementBook.sign`
refuses any other), and no signature can be passed off as another device's.
The statement is *final* once a device of each party has signed its latest
version; after that nothing changes it. A party that signed the latest
version has accepted it: it no longer edits it, so both sides reach final on
the same version. Signatures on a version that is no longer the latest, or
that come after the statement is final, are refused.

Pure: no clock, no sockets; signatures are made and checked by functions
passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import schema
from .encoding import b64d, b64e, canonical_json, random_id
from .errors import ErrorCode, LocalError, RemoteError
from .keys import DEVICE_ID_MAX, NAME_MAX, split_device_id
from .record import SHA256, sha256_hex

SIGN_CONTEXT = b"parley-statement-signature/v1\x00"
MAX_TITLE = 200
MAX_TEXT = 20_000
MAX_ATTACHMENTS = 16
MAX_VERSIONS = 100


def _attachments(value: Any) -> None:
    for item in value:
        schema.validate(item, {"name": schema.text(200), "sha256": SHA256,
                               "size": schema.integer(0, 2**40)}, what="attachment")


def _parties(value: Any) -> None:
    if len(value) != 2 or not all(isinstance(p, str) and 0 < len(p) <= NAME_MAX
                                  for p in value) or value[0] >= value[1]:
        raise RemoteError("a statement is between two parties, named in order",
                          code=ErrorCode.BAD_MESSAGE)


def _id(value: Any) -> None:
    if not (8 <= len(value) <= 32 and value[0].isalpha()
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)):
        raise RemoteError("a statement id is 8 to 32 letters, digits, - and _",
                          code=ErrorCode.BAD_MESSAGE)


CORE_FIELDS = {
    "v": schema.integer(1, 1), "statement": schema.Field(str, max_len=32, check=_id),
    "version": schema.integer(1, MAX_VERSIONS),
    "parties": schema.Field(list, max_len=2, check=_parties),
    "title": schema.text(MAX_TITLE), "text_sha256": SHA256,
    "attachments": schema.Field(list, max_len=MAX_ATTACHMENTS, check=_attachments),
    "by": schema.Field(str, max_len=DEVICE_ID_MAX, check=split_device_id),
    "parent": schema.text(64), "time_ms": schema.integer(0, 10**15),
}
PAYLOADS: dict[str, dict[str, schema.Field]] = {
    "statement.version": {"core": schema.obj(), "text": schema.text(MAX_TEXT)},
    "statement.sign": {"statement": schema.Field(str, max_len=32, check=_id),
                       "version": schema.integer(1, MAX_VERSIONS), "sha256": SHA256,
                       "signature": schema.text(100)},
}


def check_core(core: Any) -> dict[str, Any]:
    fields = schema.validate(core, CORE_FIELDS, what="statement version")
    if (fields["version"] == 1) != (fields["parent"] == ""):
        raise RemoteError("the first version has no parent, and every later one has one",
                          code=ErrorCode.BAD_MESSAGE)
    if fields["parent"]:
        schema.validate({"p": fields["parent"]}, {"p": SHA256}, what="statement parent")
    if split_device_id(fields["by"])[0] not in fields["parties"]:
        raise RemoteError("a version is proposed by one of the statement's parties",
                          code=ErrorCode.BAD_MESSAGE)
    return fields


def signed_message(version_sha256: str, device: str) -> bytes:
    """What a device signs to sign a version: the version's hash, and its own name."""
    return SIGN_CONTEXT + bytes.fromhex(version_sha256) + device.encode()


@dataclass(frozen=True)
class Version:
    core: dict[str, Any]
    text: str

    @property
    def number(self) -> int:
        return int(self.core["version"])

    @property
    def sha256(self) -> str:
        return sha256_hex(canonical_json(self.core))

    @property
    def by(self) -> str:
        return str(self.core["by"])

    @property
    def party(self) -> str:
        return split_device_id(self.by)[0]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Version:
        core = check_core(payload["core"])
        text = payload["text"]
        if sha256_hex(text.encode()) != core["text_sha256"]:
            raise RemoteError("the statement's text does not match the hash in its version",
                              code=ErrorCode.BAD_SIGNATURE)
        return cls(core, text)

    def payload(self) -> dict[str, Any]:
        return {"core": self.core, "text": self.text}


@dataclass
class Statement:
    statement_id: str
    versions: list[Version] = field(default_factory=list)
    # version number -> signing device -> signature (base64)
    signatures: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    @property
    def parties(self) -> list[str]:
        return list(self.latest.core["parties"])

    @property
    def title(self) -> str:
        return str(self.latest.core["title"])

    @property
    def final(self) -> int | None:
        """The version both parties signed (the latest; nothing comes after it)."""
        signers = {split_device_id(d)[0] for d in self.signatures.get(self.latest.number, {})}
        return self.latest.number if signers >= set(self.parties) else None

    def to_json(self) -> dict[str, Any]:
        return {"statement": self.statement_id,
                "versions": [v.payload() for v in self.versions],
                "signatures": {str(k): v for k, v in self.signatures.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Statement:
        return cls(data["statement"], [Version(v["core"], v["text"]) for v in data["versions"]],
                   {int(k): dict(v) for k, v in data["signatures"].items()})


@dataclass(frozen=True)
class Outcome:
    """What applying a message did: ``applied``, ``duplicate`` or ``refused`` (and why)."""

    result: str
    statement: Statement | None
    why: str = ""
    became_final: bool = False


Verify = Callable[[str, bytes, bytes], bool]  # (device, message, signature) -> holds?


@dataclass
class StatementBook:
    party: str
    statements: dict[str, Statement] = field(default_factory=dict)

    # -- what this party does (each returns the message to send, already applied) --------

    def draft(self, other: str, *, title: str, text: str, by: str, now_ms: int,
              attachments: list[dict[str, Any]] | None = None,
              statement_id: str | None = None) -> tuple[str, dict[str, Any]]:
        if other == self.party:
            raise LocalError("a joint statement is with the other party of a line",
                             code=ErrorCode.INVALID_INPUT)
        ident = statement_id or "s" + random_id()
        if ident in self.statements:
            raise LocalError(f"there is a statement {ident} already",
                             code=ErrorCode.INVALID_INPUT)
        version = self._version(ident, 1, sorted([self.party, other]), title, text,
                                attachments or [], by, "", now_ms)
        self.statements[ident] = Statement(ident, [version])
        return "statement.version", version.payload()

    def edit(self, statement_id: str, *, text: str, by: str, now_ms: int,
             title: str | None = None, attachments: list[dict[str, Any]] | None = None
             ) -> tuple[str, dict[str, Any]]:
        st = self.get(statement_id)
        self._open_to_change(st)
        if self._signed_by(st, st.latest.number, self.party):
            raise LocalError(f"{self.party} signed version {st.latest.number}: it stands as"
                             " this side accepted it", code=ErrorCode.INVALID_STATE,
                             hint=f"it becomes final once {self._other(st)} signs it too")
        if st.latest.party == self.party:
            raise LocalError(
                f"version {st.latest.number} is this side's: it is for {self._other(st)} to"
                " edit or sign it now", code=ErrorCode.INVALID_STATE,
                hint="wait for their answer; a version is edited by the other side")
        latest = st.latest
        version = self._version(
            statement_id, latest.number + 1, st.parties,
            latest.core["title"] if title is None else title, text,
            latest.core["attachments"] if attachments is None else attachments, by,
            latest.sha256, now_ms)
        if version.core["text_sha256"] == latest.core["text_sha256"] and \
                version.core["title"] == latest.core["title"] and \
                version.core["attachments"] == latest.core["attachments"]:
            raise LocalError("this edit changes nothing", code=ErrorCode.INVALID_INPUT,
                             hint="sign the version as it is instead")
        st.versions.append(version)
        return "statement.version", version.payload()

    def sign(self, statement_id: str, *, version: int, sha256: str, by: str,
             signer: Callable[[bytes], bytes]) -> tuple[str, dict[str, Any]]:
        st = self.get(statement_id)
        if st.final is not None:
            raise LocalError(f"statement {statement_id} is final already (version"
                             f" {st.final})", code=ErrorCode.INVALID_STATE)
        latest = st.latest
        # The hash shown (all of it, or its first 16 digits or more) names the version.
        if version != latest.number or len(sha256) < 16 or \
                not latest.sha256.startswith(sha256):
            raise LocalError(
                f"version {version} ({sha256[:12]}) is not the statement's latest version"
                f" ({latest.number}, {latest.sha256[:12]}): only the version shown is signed",
                code=ErrorCode.INVALID_STATE, hint="read the latest version and sign that")
        if self._signed_by(st, version, self.party):
            raise LocalError(f"{self.party} has signed version {version} already",
                             code=ErrorCode.INVALID_STATE)
        signature = b64e(signer(signed_message(latest.sha256, by)))
        st.signatures.setdefault(version, {})[by] = signature
        return "statement.sign", {"statement": statement_id, "version": version,
                                  "sha256": latest.sha256, "signature": signature}

    # -- what comes ---------------------------------------------------------------------

    def apply(self, sender: str, kind: str, payload: dict[str, Any], verify: Verify
              ) -> Outcome:
        party = split_device_id(sender)[0]
        if kind == "statement.version":
            return self._apply_version(sender, party, Version.from_payload(payload))
        if kind == "statement.sign":
            return self._apply_sign(sender, party, payload, verify)
        raise RemoteError(f"not a statement message: {kind}", code=ErrorCode.BAD_MESSAGE)

    def _apply_version(self, sender: str, party: str, version: Version) -> Outcome:
        if version.by != sender:
            return Outcome("refused", None, f"a version proposed by {version.by}, sent by"
                                            f" {sender}")
        if self.party not in version.core["parties"]:
            return Outcome("refused", None, "a statement between other parties")
        ident = version.core["statement"]
        st = self.statements.get(ident)
        if st is None:
            if version.number != 1:
                return Outcome("refused", None, f"version {version.number} of a statement"
                                                " this side never had")
            st = self.statements[ident] = Statement(ident, [version])
            return Outcome("applied", st)
        if version.number <= st.latest.number:
            have = st.versions[version.number - 1]
            if have.sha256 == version.sha256:
                return Outcome("duplicate", st)
            return Outcome("refused", st, f"another version {version.number} than the one"
                                          " this side has")
        if version.number != st.latest.number + 1 or version.core["parent"] != \
                st.latest.sha256:
            return Outcome("refused", st, f"version {version.number} does not follow"
                                          f" version {st.latest.number}")
        if version.core["parties"] != st.parties:
            return Outcome("refused", st, "a version between other parties")
        if st.final is not None:
            return Outcome("refused", st, "an edit of a final statement")
        if st.latest.party == party:
            return Outcome("refused", st, f"{party} edited its own version: it is the other"
                                          " side's turn")
        if self._signed_by(st, st.latest.number, party):
            return Outcome("refused", st, f"{party} signed version {st.latest.number}, then"
                                          " proposed an edit of it")
        st.versions.append(version)
        return Outcome("applied", st)

    def _apply_sign(self, sender: str, party: str, payload: dict[str, Any], verify: Verify
                    ) -> Outcome:
        st = self.statements.get(payload["statement"])
        if st is None:
            return Outcome("refused", None, "a signature on a statement this side never had")
        number = payload["version"]
        if not 1 <= number <= len(st.versions) or st.versions[number - 1].sha256 != \
                payload["sha256"]:
            return Outcome("refused", st, f"a signature on a version {number} this side does"
                                          " not have")
        if party not in st.parties:
            return Outcome("refused", st, f"{party} is not a party to it")
        have = st.signatures.get(number, {})
        if have.get(sender) == payload["signature"]:
            return Outcome("duplicate", st)
        if st.final is not None:
            return Outcome("refused", st, f"a signature on a statement final since version"
                                          f" {st.final}")
        if number != st.latest.number:
            return Outcome("refused", st, f"a signature on version {number}, which version"
                                          f" {st.latest.number} superseded")
        signature = b64d(payload["signature"], what="statement signature", max_bytes=64)
        if not verify(sender, signed_message(payload["sha256"], sender), signature):
            return Outcome("refused", st, f"the signature is not {sender}'s")
        was_final = st.final is not None
        st.signatures.setdefault(number, {})[sender] = payload["signature"]
        return Outcome("applied", st, became_final=not was_final and st.final is not None)

    # -- helpers ------------------------------------------------------------------------

    def get(self, statement_id: str) -> Statement:
        st = self.statements.get(statement_id)
        if st is None:
            raise LocalError(f"no statement {statement_id!r}", code=ErrorCode.INVALID_INPUT,
                             hint="'parley statement list' shows the statements and their ids")
        return st

    def _other(self, st: Statement) -> str:
        return next(p for p in st.parties if p != self.party)

    @staticmethod
    def _signed_by(st: Statement, version: int, party: str) -> bool:
        return any(split_device_id(d)[0] == party for d in st.signatures.get(version, {}))

    def _open_to_change(self, st: Statement) -> None:
        if st.final is not None:
            raise LocalError(f"statement {st.statement_id} is final: it cannot change",
                             code=ErrorCode.INVALID_STATE)
        if len(st.versions) >= MAX_VERSIONS:
            raise LocalError(f"a statement has at most {MAX_VERSIONS} versions",
                             code=ErrorCode.INVALID_STATE)

    def _version(self, ident: str, number: int, parties: list[str], title: str, text: str,
                 attachments: list[dict[str, Any]], by: str, parent: str, now_ms: int
                 ) -> Version:
        if not title.strip() or not text.strip():
            raise LocalError("a statement has a title and a text",
                             code=ErrorCode.INVALID_INPUT)
        core = {"v": 1, "statement": ident, "version": number, "parties": parties,
                "title": title, "text_sha256": sha256_hex(text.encode()),
                "attachments": attachments, "by": by, "parent": parent, "time_ms": now_ms}
        try:
            check_core(core)
            schema.validate({"text": text}, {"text": schema.text(MAX_TEXT)}, what="statement")
        except RemoteError as exc:
            raise LocalError(exc.message, code=ErrorCode.INVALID_INPUT) from None
        return Version(core, text)


def attachment(name: str, data: bytes) -> dict[str, Any]:
    """An attachment named in a statement: by its SHA-256 (the file itself is not sent)."""
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
