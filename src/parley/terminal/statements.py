"""Joint statements at a terminal: drafted, edited in turns, signed, final, printed.

The rules are `core.statement`'s. Here each version and signature this side
makes is applied to its own book, kept (table ``statements``), written into
the record, and sent -- sealed and signed, through the sealed outbox -- to
every verified device of the other party and this party's own other devices.
What comes is applied with its sender's key; a version shown on the page is
signed only if it is still the statement's latest (the page and the CLI name
the version *and its hash*).

Once final, the statement's entry (with both signatures) goes into this
site's log, the checkpoints are exchanged at once, and the other site's
inclusion proof for its own entry comes back with its next checkpoint: the
statement is then "in both logs", and its bundle and paper copy prove it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from parley.clock import now_ms
from parley.core import bundle
from parley.core.envelope import Envelope
from parley.core.errors import ErrorCode, LocalError
from parley.core.keys import DeviceKeys, DevicePublicKeys, split_device_id
from parley.core.statement import Outcome, Statement, StatementBook
from parley.core.trust import Trust
from parley.terminal.peers import PeerBook
from parley.terminal.record import Record
from parley.terminal.sealed import SealedOutbox
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.statement")
MAX_OPEN_FROM_PEER = 100  # statements a party may have drafted here that are not final yet

SCHEMA = """
CREATE TABLE IF NOT EXISTS statements (statement_id TEXT PRIMARY KEY, data TEXT NOT NULL,
                                       updated_ms INTEGER NOT NULL);
"""


class Statements:
    def __init__(self, *, keys: DeviceKeys, me: DevicePublicKeys, store: TerminalStore,
                 peers: PeerBook, outbox: SealedOutbox, record: Record,
                 publish: Callable[[dict[str, Any]], None],
                 peer_parties: Callable[[], list[str]],
                 zone_of: Callable[[str], str] = lambda _p: "UTC",
                 name_of: Callable[[str], str] = lambda p: p) -> None:
        self.keys = keys
        self.me = me
        self.party = me.party
        self.store = store
        self.peers = peers
        self.outbox = outbox
        self.record = record
        self._publish = publish
        self._peer_parties = peer_parties
        self.zone_of = zone_of
        self.name_of = name_of
        store.db.executescript(SCHEMA)
        self.book = StatementBook(self.party, {
            row[0]: Statement.from_json(json.loads(row[1]))
            for row in store.db.execute("SELECT statement_id, data FROM statements")})
        record.knows_statement = lambda ident: ident in self.book.statements

    # -- what this side does ------------------------------------------------------------

    async def draft(self, party: str, *, title: str, text: str,
                    attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        if party not in self._peer_parties():
            raise LocalError(f"there is no line between {self.party} and {party}",
                             code=ErrorCode.NO_LINE)
        recipients = await self._recipients(party)
        kind, payload = self.book.draft(party, title=title.strip(), text=text,
                                        by=self.me.device_id, now_ms=now_ms(),
                                        attachments=attachments)
        return await self._sent(payload["core"]["statement"], kind, payload, recipients)

    async def edit(self, statement_id: str, *, text: str, title: str | None = None,
                   attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        st = self.book.get(statement_id)
        recipients = await self._recipients(self._other(st))
        kind, payload = self.book.edit(statement_id, text=text, by=self.me.device_id,
                                       now_ms=now_ms(), title=title,
                                       attachments=attachments)
        return await self._sent(statement_id, kind, payload, recipients)

    async def sign(self, statement_id: str, *, version: int, sha256: str) -> dict[str, Any]:
        st = self.book.get(statement_id)
        recipients = await self._recipients(self._other(st))
        was_final = st.final is not None
        kind, payload = self.book.sign(statement_id, version=version, sha256=sha256.lower(),
                                       by=self.me.device_id, signer=self.keys.sign)
        return await self._sent(statement_id, kind, payload, recipients,
                                final=not was_final and st.final is not None)

    async def _sent(self, statement_id: str, kind: str, payload: dict[str, Any],
                    recipients: list[DevicePublicKeys], final: bool = False
                    ) -> dict[str, Any]:
        st = self.book.statements[statement_id]
        with self._batch():  # kept, logged (final too) and queued together
            self._keep(st)
            self._log(st, kind, payload, self.me.device_id)
            if final:
                self._became_final(st)
            for to in recipients:
                self.outbox.queue(to.device_id, kind, payload)
        await self.outbox.flush()
        view = self.view(st)
        self._publish({"t": "statement", "statement": view})
        return view

    async def _recipients(self, other: str) -> list[DevicePublicKeys]:
        out = await self.peers.verified_devices([other, self.party], test_sets=False)
        if not any(k.party == other for k in out):
            raise LocalError(f"no device of {other} is verified here: nothing was sent",
                             code=ErrorCode.NOT_VERIFIED,
                             hint=f"verify {other}'s key first (its Safety number)")
        return out

    # -- what comes ---------------------------------------------------------------------

    def receive(self, envelope: Envelope, payload: dict[str, Any], trust: Trust) -> None:
        if trust is not Trust.VERIFIED:
            log.warning("ignored %s from %s: its key is not verified here", envelope.type,
                        envelope.sender)
            return
        sender = envelope.sender
        ident = payload.get("statement") or payload.get("core", {}).get("statement", "")
        before = self.book.statements.get(ident) if isinstance(ident, str) else None
        was_final = before is not None and before.final is not None
        if before is None and envelope.type == "statement.version" and sum(
                1 for st in self.book.statements.values()
                if st.final is None and st.versions[0].party != self.party) >= \
                MAX_OPEN_FROM_PEER:
            log.warning("a new statement from %s refused: %d drafted by the other side are"
                        " not final yet", sender, MAX_OPEN_FROM_PEER)
            return
        outcome: Outcome = self.book.apply(sender, envelope.type, payload, self._verify)
        if outcome.result != "applied" or outcome.statement is None:
            log.info("%s from %s: %s %s", envelope.type, sender, outcome.result, outcome.why)
            return
        st = outcome.statement
        with self._batch():
            self._keep(st)
            self._log(st, envelope.type, payload, sender)
            if not was_final and st.final is not None:
                self._became_final(st)
        log.info("%s from %s: statement %s (%s) now at version %d%s", envelope.type, sender,
                 st.statement_id, st.title, st.latest.number,
                 ", final" if st.final is not None else "")
        self._publish({"t": "statement", "statement": self.view(st)})

    def _verify(self, device: str, message: bytes, signature: bytes) -> bool:
        if device == self.me.device_id:
            return self.me.verify(signature, message)
        pin = self.store.pin(device)
        return pin is not None and pin.verify(signature, message)

    # -- the record -----------------------------------------------------------------------

    def _log(self, st: Statement, kind: str, payload: dict[str, Any], by: str) -> None:
        if kind == "statement.version":
            version = st.versions[payload["core"]["version"] - 1]
            self.record.add("statement", statement=st.statement_id, version=version.number,
                            event="proposed", sha256=version.sha256, title=st.title, by=by)
        else:
            version = st.versions[payload["version"] - 1]
            self.record.add("statement", statement=st.statement_id, version=version.number,
                            event="signed", sha256=version.sha256, title=st.title, by=by)

    def _became_final(self, st: Statement) -> None:
        version = st.latest
        self.record.add("statement", statement=st.statement_id, version=version.number,
                        event="final", sha256=version.sha256, title=st.title,
                        by=self.me.device_id, signatures=dict(st.signatures[version.number]))
        log.warning("statement %s (%s) is final: version %d, signed by %s", st.statement_id,
                    st.title, version.number, ", ".join(sorted(st.signatures[version.number])))
        self.record.soon()

    # -- what is shown ------------------------------------------------------------------

    def view(self, st: Statement) -> dict[str, Any]:
        latest = st.latest
        final = st.final
        recorded = self.recorded(st)
        return {
            "statement": st.statement_id, "title": st.title, "parties": st.parties,
            "with": self._other(st), "with_name": self.name_of(self._other(st)),
            "final": final, "latest": latest.number,
            "my_turn": final is None and latest.party != self.party,
            "signed_by_me": any(split_device_id(d)[0] == self.party
                                for d in st.signatures.get(latest.number, {})),
            "recorded": recorded,
            "in_both_logs": final is not None and len(recorded) >= 2,
            "versions": [{"version": v.number, "sha256": v.sha256, "by": v.by,
                          "title": v.core["title"], "text": v.text,
                          "attachments": v.core["attachments"], "time_ms": v.core["time_ms"],
                          "signatures": sorted(st.signatures.get(v.number, {}))}
                         for v in st.versions],
        }

    def recorded(self, st: Statement) -> dict[str, int]:
        """The logs that hold this statement's final entry: site -> index."""
        out: dict[str, int] = {}
        if st.final is None:
            return out
        self.record.sync()
        index = self.record.final_index(st.statement_id, st.final)
        if index is not None:
            out[self.me.device_id] = index
        sha = st.versions[st.final - 1].sha256
        for lg, idx, entry in self.store.db.execute(
                "SELECT log, idx, entry FROM record_peer_proofs WHERE statement=? AND"
                " version=?", (st.statement_id, st.final)):
            # The other party's log, recording this very version final (its hash).
            if split_device_id(lg)[0] != self.party and json.loads(entry)["sha256"] == sha:
                out[lg] = idx
        return out

    def all(self) -> list[dict[str, Any]]:
        return [self.view(st) for st in sorted(
            self.book.statements.values(), key=lambda s: -s.latest.core["time_ms"])]

    def get(self, statement_id: str) -> dict[str, Any]:
        return self.view(self.book.get(statement_id))

    def export(self, statement_id: str, *, paper: bool = False, proofs: bool = True
               ) -> dict[str, Any]:
        """The statement's bundle: its final (or latest) version, its signatures, its
        entries in both logs with their proofs."""
        st = self.book.get(statement_id)
        version = st.versions[(st.final or st.latest.number) - 1]
        item = {"core": version.core, "text": version.text,
                "signatures": dict(st.signatures.get(version.number, {}))}
        return self.record.export(statement=item, paper=paper, proofs=proofs)

    def paper(self, statement_id: str) -> tuple[dict[str, Any], str]:
        """The statement's view and the code its paper copy carries (core.bundle)."""
        st = self.book.get(statement_id)
        if st.final is None:
            raise LocalError(f"statement {statement_id} is not final: both sides sign it first",
                             code=ErrorCode.INVALID_STATE)
        code = bundle.to_paper(self.export(statement_id, paper=True))
        if len(code) > bundle.PAPER_MAX:
            # Logs so long that both inclusion proofs do not fit one QR code: the code keeps
            # the signatures and both co-signed checkpoints; the bundle file has the rest.
            log.warning("statement %s: the inclusion proofs do not fit its QR code; the paper"
                        " copy carries its signatures and checkpoints only", statement_id)
            code = bundle.to_paper(self.export(statement_id, paper=True, proofs=False))
        return self.view(st), code

    async def pdf(self, statement_id: str) -> bytes:
        """The printable copy (parley.paper): gathered here, set in a worker thread."""
        from parley.paper import statement_pdf

        view, code = self.paper(statement_id)
        st = self.book.get(statement_id)
        version = st.versions[view["final"] - 1]
        keys = {}
        for device in sorted(st.signatures[version.number]):
            pub = self.me if device == self.me.device_id else self.store.pin(device)
            if pub is not None:
                keys[device] = bundle.signing_key_text(pub.sign)
        view.update(signing_keys=keys, text_sha256=version.core["text_sha256"])
        final = self.record.entries(statement=statement_id, types={"statement"})
        final_ms = next((json.loads(d)["time_ms"] for _i, d in reversed(final)
                         if b'"event":"final"' in d), version.core["time_ms"])
        zones = [self.zone_of(p) for p in st.parties]
        names = {p: self.name_of(p) for p in st.parties}
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(
            statement_pdf, view, code, zones=zones, name_of=lambda p: names.get(p, p),
            final_ms=final_ms))

    # -- helpers ------------------------------------------------------------------------

    def _other(self, st: Statement) -> str:
        return next(p for p in st.parties if p != self.party)

    def _keep(self, st: Statement) -> None:
        self.store.db.execute(
            "INSERT INTO statements VALUES (?,?,?) ON CONFLICT(statement_id) DO UPDATE SET"
            " data=excluded.data, updated_ms=excluded.updated_ms",
            (st.statement_id, json.dumps(st.to_json()), now_ms()))

    def _batch(self) -> contextlib.AbstractContextManager[None]:
        return self.store.batch()
