"""A terminal's record: its log, the other site's checkpoints it witnesses, and bundles.

The log is the table ``record_entries`` of the terminal's database: one row
per entry (`core.record`), appended by whoever records something (the call
book's ending, the messages, line tests, talks, statements, a verification,
an alarm, an operator's note), in the same transaction as what it records
where there is one. The Merkle tree over it (`merkle.Tree`) is kept in
memory and brought up to date from the table (`sync`) before it is used;
rebuilding it from the table is how a terminal starts, and how it finds out
that its own log was changed on disk since it last signed a checkpoint.

Witnessing (``record.checkpoint`` / ``record.cosigned``, `core.record`): after
each call, when the server comes back, every `interval_s` and on demand, the
terminal signs its log's checkpoint and sends it, with a consistency proof
from what each witness last cosigned, to the verified devices of the other
parties of its lines. Each witness checks it (`checkpoint.Witness`) and
answers with its cosignature; a log that does not extend what it showed
before raises a ``record_forked`` alarm at the witness, which keeps both
signed checkpoints as evidence (table ``record_forks``) and writes the fork
into its own log.

Tables (besides ``record_entries``, kept by `TerminalStore`)::

    record_notes        every checkpoint of this log it ever signed (two at one size: its
                        log was changed on disk, and both are kept)
    record_cosigs       the witnesses' cosignatures on them
    record_have         per witness: the size it says it cosigned last
    record_seen         the other logs' checkpoints this terminal cosigned, with its line
    record_witness      per other log: the last checkpoint cosigned (what the next extends)
    record_forks        the evidence of a forked log: both signed checkpoints, and why
    record_peer_proofs  the other logs' entries of final statements, with inclusion proofs
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from parley.clock import now_ms
from parley.core import bundle, merkle, record
from parley.core import checkpoint as cp
from parley.core.encoding import b64e
from parley.core.envelope import Envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError, SecurityAlarm
from parley.core.keys import DeviceKeys, DevicePublicKeys
from parley.core.trust import Trust
from parley.terminal.link import ServerLink
from parley.terminal.peers import PeerBook
from parley.terminal.sealed import SealedOutbox
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.record")
EXCHANGE_EVERY_S = 3600.0
MAX_FORKS_KEPT = 100  # per log: the evidence of more is the same evidence again
SEEN_KEPT = 50  # per other log: its latest checkpoints cosigned (and any a statement needs)

SCHEMA = """
CREATE TABLE IF NOT EXISTS record_notes (size INTEGER NOT NULL, note TEXT NOT NULL,
                                         time_ms INTEGER NOT NULL, PRIMARY KEY (size, note));
CREATE TABLE IF NOT EXISTS record_cosigs (
    note TEXT NOT NULL, size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL,
    time_ms INTEGER NOT NULL, PRIMARY KEY (note, witness));
CREATE TABLE IF NOT EXISTS record_have (witness TEXT PRIMARY KEY, have INTEGER NOT NULL,
                                        sent INTEGER NOT NULL DEFAULT -1);
CREATE TABLE IF NOT EXISTS record_seen (
    log TEXT NOT NULL, size INTEGER NOT NULL, note TEXT NOT NULL, line TEXT NOT NULL,
    time_ms INTEGER NOT NULL, PRIMARY KEY (log, size));
CREATE TABLE IF NOT EXISTS record_witness (log TEXT PRIMARY KEY, note TEXT NOT NULL,
                                           sent_ms INTEGER NOT NULL, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS record_forks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, log TEXT NOT NULL, seen TEXT NOT NULL,
    now TEXT NOT NULL, why TEXT NOT NULL, time_ms INTEGER NOT NULL, UNIQUE (log, seen, now));
CREATE TABLE IF NOT EXISTS record_peer_proofs (
    log TEXT NOT NULL, statement TEXT NOT NULL, version INTEGER NOT NULL, idx INTEGER NOT NULL,
    entry TEXT NOT NULL, proof TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (log, statement, version));
"""

AlarmSink = Callable[[ParleyError, str | None], None]


class Record:
    def __init__(self, *, keys: DeviceKeys, me: DevicePublicKeys, store: TerminalStore,
                 link: ServerLink, peers: PeerBook, outbox: SealedOutbox,
                 publish: Callable[[dict[str, Any]], None], alarm: AlarmSink,
                 test_set: bool = False, log_texts: bool = False,
                 interval_s: float = EXCHANGE_EVERY_S) -> None:
        self.keys = keys
        self.me = me
        self.site = me.device_id
        self.origin = record.origin_of(self.site)
        self.store = store
        self.db = store.db
        self.link = link
        self.peers = peers
        self.outbox = outbox
        self._publish = publish
        self._alarm = alarm
        self.test_set = test_set
        self.log_texts = log_texts
        self.interval_s = interval_s
        # Set by Statements: does this side hold that statement? (a peer's proofs about
        # statements it made up are not kept)
        self.knows_statement: Callable[[str], bool] = lambda _s: False
        self.db.executescript(SCHEMA)
        self.tree = merkle.Tree()
        self._last_seq = 0
        self._finals: dict[tuple[str, int], int] = {}  # (statement, version) -> index
        self._task: asyncio.Task[None] | None = None
        self._exchange_soon: asyncio.Event = asyncio.Event()
        self.sync()

    # -- the log ------------------------------------------------------------------------

    def add(self, type_: str, **fields: Any) -> None:
        """Record something (in the caller's transaction, if it has one open)."""
        try:
            entry = record.make_entry(type_, self.site, now_ms(), **fields)
        except RemoteError as exc:  # a bug, not an attack: say so, and lose nothing else
            log.error("could not record a %s entry: %s", type_, exc)
            return
        self.store.append_record(entry)

    def sync(self) -> int:
        """Bring the tree up to date with the table; its size."""
        if self.db.in_transaction:
            return self.tree.size  # what is not committed yet is not the log yet
        for seq, data in self.store.record_rows(self._last_seq):
            index = self.tree.append(record.leaf(bytes(data)))
            self._last_seq = seq
            if b'"event":"final"' in data and b'"type":"statement"' in data:
                with contextlib.suppress(RemoteError):
                    entry = record.parse_entry(bytes(data))
                    self._finals[(entry["statement"], entry["version"])] = index
        return self.tree.size

    @property
    def size(self) -> int:
        return self.sync()

    def final_index(self, statement: str, version: int) -> int | None:
        """Where this log records that statement's version final."""
        return self._finals.get((statement, version))

    def entries(self, *, after: int = -1, limit: int | None = None,
                types: set[str] | None = None, statement: str | None = None
                ) -> list[tuple[int, bytes]]:
        """(index, entry) of the log in order, those after index `after`."""
        self.sync()
        out = []
        rows = self.db.execute("SELECT entry FROM record_entries ORDER BY seq")
        for index, (data,) in enumerate(rows):
            if index <= after:
                continue
            data = bytes(data)
            if types is not None or statement is not None:
                try:
                    entry = record.parse_entry(data)
                except RemoteError:
                    continue
                if types is not None and entry["type"] not in types:
                    continue
                if statement is not None and entry.get("statement") != statement:
                    continue
            out.append((index, data))
        return out[-limit:] if limit is not None else out

    def view(self, limit: int = 200, types: set[str] | None = None) -> list[dict[str, Any]]:
        """The latest entries, newest first, each with a line for a person."""
        out = []
        for index, data in reversed(self.entries(limit=limit, types=types)):
            try:
                entry = record.parse_entry(data)
                text = record.describe(entry)
            except (RemoteError, KeyError) as exc:
                entry, text = {}, f"an entry that cannot be read: {exc}"
            out.append({"index": index, "entry": entry, "text": text,
                        "sha256": record.sha256_hex(data)})
        return out

    def note(self, text: str, by: str | None = None) -> dict[str, Any]:
        text = text.strip()
        if not text or len(text) > record.MAX_TEXT:
            raise LocalError(f"a note is 1 to {record.MAX_TEXT} characters",
                             code=ErrorCode.INVALID_INPUT)
        self.add("note", text=text, by=by or None)
        self._publish({"t": "record", "size": self.size})
        return {"index": self.size - 1, "size": self.size}

    # -- what is recorded where it happens --------------------------------------------

    def call(self, info: dict[str, Any]) -> None:
        ended = info.get("ended_ms") or now_ms()
        started = info.get("active_ms") or info.get("started_ms")
        self.add("call", call_id=info["call_id"], peer=info["peer"],
                 direction=str(info.get("direction", ""))[:8],
                 media=str(info.get("media", ""))[:8], started_ms=started, ended_ms=ended,
                 duration_ms=max(0, ended - started) if started else 0,
                 verified=bool(info.get("verified")), sas=info.get("sas"),
                 end_reason=str(info.get("end_reason") or "")[:64],
                 alarm=str(info["alarm"])[:64] if info.get("alarm") else None,
                 test_id=info.get("test_id"))

    def message(self, *, msg_id: str, outgoing: bool, party: str, sender: str, kind: str,
                text: str = "", file_sha256: str | None = None, size: int | None = None,
                name: str | None = None) -> None:
        data = text.encode()
        self.add("message", msg_id=msg_id, dir="sent" if outgoing else "received",
                 party=party, sender=sender, kind=kind,
                 sha256=file_sha256 if kind == "file" and file_sha256 else
                 record.sha256_hex(data),
                 size=size if kind == "file" and size is not None else len(data),
                 name_sha256=record.sha256_hex(name.encode()) if name else None,
                 text=text if self.log_texts and kind == "text" and len(text) <=
                 record.MAX_TEXT else None)

    # -- checkpoints --------------------------------------------------------------------

    def checkpoint(self) -> tuple[int, str]:
        """This log's checkpoint now, signed (and kept)."""
        size = self.sync()
        root = self.tree.root(size)
        for (note,) in self.db.execute("SELECT note FROM record_notes WHERE size=?", (size,)):
            if cp.open_checkpoint(note, self.site, self.keys.public_key()).root == root:
                return size, str(note)
        note = cp.sign_checkpoint(cp.Checkpoint(self.origin, size, root), self.site, self.keys)
        self.db.execute("INSERT OR IGNORE INTO record_notes VALUES (?,?,?)",
                        (size, note, now_ms()))
        return size, note

    def check_own(self) -> None:
        """Does the log on disk still extend the last checkpoint this terminal signed?"""
        size = self.sync()
        try:
            for (note,) in self.db.execute("SELECT note FROM record_notes ORDER BY size DESC,"
                                           " time_ms LIMIT 1000"):
                signed = cp.open_checkpoint(note, self.site, self.keys.public_key())
                if size < signed.size:
                    raise RemoteError(f"it holds {size} entries, and {signed.size} were"
                                      " signed", code=ErrorCode.BAD_MESSAGE)
                if self.tree.root(signed.size) != signed.root:
                    raise RemoteError(f"its first {signed.size} entries are not the ones"
                                      " signed", code=ErrorCode.BAD_MESSAGE)
        except RemoteError as exc:
            self._alarm(SecurityAlarm(
                f"this terminal's record on disk does not extend a checkpoint it signed:"
                f" {exc.message}", code=ErrorCode.RECORD_FORKED,
                hint="entries were changed or removed on disk; the other site will see it"
                     " at the next exchange"), self.site)

    async def witnesses(self) -> list[DevicePublicKeys]:
        """The devices that witness this log: the verified devices of the other parties of
        this terminal's lines (a test set's: their test sets)."""
        peers = [p for p in self.link.peers if p != self.me.party]
        devices = await self.peers.verified_devices(peers, test_sets=self.test_set)
        if self.test_set:
            return [d for d in devices if self.peers.is_test_set(d.device_id)]
        return devices

    async def exchange(self, devices: list[DevicePublicKeys] | None = None) -> int:
        """Send this log's checkpoint to each witness; how many it went to."""
        targets = devices if devices is not None else await self.witnesses()
        for device in targets:
            self._send_checkpoint(device.device_id)
        await self.outbox.flush()
        return len(targets)

    def _send_checkpoint(self, device: str) -> None:
        size, note = self.checkpoint()
        row = self.db.execute("SELECT have FROM record_have WHERE witness=?",
                              (device,)).fetchone()
        have = int(row[0]) if row else 0
        proof: list[bytes] = []
        if 0 < have < size:
            proof = self.tree.consistency_proof(have, size)
        statements = [
            {"statement": st, "version": version, "index": index,
             "entry": self._entry_text(index), "proof": bundle.b64_hashes(
                 self.tree.inclusion_proof(index, size))}
            for (st, version), index in sorted(self._finals.items(), key=lambda i: i[1])
            if index >= have and index < size][-32:]
        payload: dict[str, Any] = {"note": note, "from_size": min(have, size),
                                   "proof": bundle.b64_hashes(proof)}
        if statements:
            payload["statements"] = statements
        self.outbox.queue(device, "record.checkpoint", payload)
        self.db.execute("INSERT INTO record_have (witness, have, sent) VALUES (?,?,?) ON"
                        " CONFLICT(witness) DO UPDATE SET sent=excluded.sent",
                        (device, have, size))

    def _entry_text(self, index: int) -> str:
        row = self.db.execute("SELECT entry FROM record_entries ORDER BY seq LIMIT 1"
                              " OFFSET ?", (index,)).fetchone()
        return bytes(row[0]).decode()

    # -- what comes ---------------------------------------------------------------------

    def receive(self, envelope: Envelope, payload: dict[str, Any], keys: DevicePublicKeys,
                trust: Trust) -> None:
        if trust is not Trust.VERIFIED:
            log.warning("ignored %s from %s: its key is not verified here", envelope.type,
                        envelope.sender)
            return
        if keys.party == self.me.party:
            log.warning("ignored %s from %s: a log is witnessed by the other party",
                        envelope.type, envelope.sender)
            return
        try:
            if envelope.type == "record.checkpoint":
                self._witness(envelope.sender, keys, payload, envelope.time_ms)
            else:
                self._cosigned(envelope.sender, keys, payload)
        except SecurityAlarm:
            raise  # a forgery: the terminal deals with it as with any
        except (RemoteError, ValueError, KeyError, OverflowError) as exc:
            # Malformed in a way the schema cannot see: dropped (and acknowledged), never
            # left to come back at every login.
            log.warning("dropped %s from %s: %s", envelope.type, envelope.sender, exc)
            return
        with contextlib.suppress(RuntimeError):  # no loop: a test driving this directly
            asyncio.get_running_loop().create_task(self.outbox.flush())

    def _witness(self, sender: str, keys: DevicePublicKeys, payload: dict[str, Any],
                 sent_ms: int) -> None:
        row = self.db.execute("SELECT note, sent_ms, key FROM record_witness WHERE log=?",
                              (sender,)).fetchone()
        if row is not None and bytes(row[2]) != keys.sign:
            # Re-verified with a new key: its log starts again from what it shows now (the
            # checkpoints of the old key stay in record_seen).
            log.warning("witnessing %s afresh: its key changed and was verified again", sender)
            row = None
        witness = cp.Witness(self.site, self.keys, sender, keys.verifier(),
                             last=str(row[0]) if row else None)
        note = payload["note"]
        now = now_ms()
        # Sent no later than the one cosigned last (the same millisecond is no later: the
        # server may have delivered them in either order), and another: late, not news.
        if row is not None and sent_ms <= int(row[1]) and note != row[0]:
            self._late(sender, keys, note, witness)
            return
        reply: dict[str, Any] = {"note": note}
        try:
            line = witness.observe(note, record.decode_proof(payload["proof"]), now // 1000,
                                   from_size=payload["from_size"])
        except SecurityAlarm as alarm:
            if alarm.code is not ErrorCode.RECORD_FORKED:
                raise  # not signed by it: a forgery, dealt with as one
            self._keep_fork(sender, witness.forks, alarm)
            reply.update(have=cp.open_checkpoint(str(row[0]), sender, keys.verifier()).size
                         if row else 0, refused=alarm.message[:400])
            self.outbox.queue(sender, "record.cosigned", reply)
            return
        checked = cp.open_checkpoint(note, sender, keys.verifier())
        if checked.origin != record.origin_of(sender):
            log.warning("%s sent a checkpoint of %s: not its own log", sender, checked.origin)
            return
        if line is not None:
            self.db.execute("INSERT OR REPLACE INTO record_witness VALUES (?,?,?,?)",
                            (sender, note, sent_ms, keys.sign))
            self.db.execute("INSERT OR IGNORE INTO record_seen VALUES (?,?,?,?,?)",
                            (sender, checked.size, note, line, now))
            self.db.execute(
                "DELETE FROM record_seen WHERE log=? AND size NOT IN (SELECT size FROM"
                " record_peer_proofs WHERE log=?) AND size NOT IN (SELECT size FROM"
                " record_seen WHERE log=? ORDER BY size DESC LIMIT ?)",
                (sender, sender, sender, SEEN_KEPT))
            self._keep_statement_proofs(sender, checked, payload.get("statements") or [])
            reply["cosignature"] = line
            log.info("cosigned %s's record at size %d", sender, checked.size)
        reply["have"] = witness.have
        self.outbox.queue(sender, "record.cosigned", reply)
        # Witnessing is mutual: ours goes back if it has grown since it last went there.
        sent = self.db.execute("SELECT sent FROM record_have WHERE witness=?",
                               (sender,)).fetchone()
        if sent is None or int(sent[0]) < self.size:
            self._send_checkpoint(sender)
        self._publish({"t": "record", "size": self.size})

    def _keep_statement_proofs(self, sender: str, checked: cp.Checkpoint,
                               items: list[dict[str, Any]]) -> None:
        for item in items:
            data = item["entry"].encode()
            try:
                entry = record.parse_entry(data)
                if entry["v"] != record.VERSION or entry["site"] != sender or \
                        entry["type"] != "statement" or entry.get("event") != "final" or \
                        (entry["statement"], entry["version"]) != (item["statement"],
                                                                   item["version"]):
                    raise RemoteError("not the final entry of that statement in its log")
                if not self.knows_statement(item["statement"]):
                    raise RemoteError(f"statement {item['statement']} is not one of this"
                                      " side's")
                merkle.verify_inclusion(item["index"], checked.size, record.leaf(data),
                                        record.decode_proof(item["proof"]), checked.root)
            except RemoteError as exc:
                log.warning("a statement proof from %s does not hold: %s", sender, exc)
                continue
            self.db.execute("INSERT OR REPLACE INTO record_peer_proofs VALUES (?,?,?,?,?,?,?)",
                            (sender, item["statement"], item["version"], item["index"],
                             item["entry"], json.dumps(item["proof"]), checked.size))
            self._publish({"t": "statement.recorded", "statement": item["statement"],
                           "log": sender, "size": checked.size})

    def _late(self, sender: str, keys: DevicePublicKeys, note: str,
              witness: cp.Witness) -> None:
        """A checkpoint sent before the one cosigned last, delivered only now (the server
        held it): no news, unless it contradicts one of that size seen before."""
        checked = cp.open_checkpoint(note, sender, keys.verifier())
        seen = self.db.execute("SELECT note FROM record_seen WHERE log=? AND size=?",
                               (sender, checked.size)).fetchone()
        if seen is None or cp.open_checkpoint(seen[0], sender, keys.verifier()).root == \
                checked.root:
            log.info("%s's checkpoint at size %d came late (sent before the one cosigned"
                     " last): nothing to do", sender, checked.size)
            return
        why = f"two different trees of the same size {checked.size}"
        self._keep_fork(sender, [cp.Fork(checked.origin, seen[0], note, why)], SecurityAlarm(
            f"the log {checked.origin} of {sender} does not extend what it showed before"
            f" (size {checked.size}): {why}", code=ErrorCode.RECORD_FORKED,
            hint="both signed checkpoints are kept as evidence"))

    def _keep_fork(self, sender: str, forks: list[cp.Fork], alarm: SecurityAlarm) -> None:
        for fork in forks:
            kept = self.db.execute(
                "INSERT OR IGNORE INTO record_forks (log, seen, now, why, time_ms) SELECT"
                " ?,?,?,?,? WHERE (SELECT count(*) FROM record_forks WHERE log=?) < ?",
                (sender, fork.seen, fork.now, fork.why, now_ms(), sender, MAX_FORKS_KEPT))
            if kept.rowcount:
                seen = cp.parse_checkpoint(fork.seen.partition("\n\n")[0] + "\n")
                new = cp.parse_checkpoint(fork.now.partition("\n\n")[0] + "\n")
                self.add("fork", origin=fork.origin, seen_size=seen.size, now_size=new.size,
                         seen_sha256=record.sha256_hex(fork.seen.encode()),
                         now_sha256=record.sha256_hex(fork.now.encode()), why=fork.why[:400])
        self._alarm(alarm, sender)

    def _cosigned(self, sender: str, keys: DevicePublicKeys, payload: dict[str, Any]) -> None:
        note = payload["note"]
        try:
            mine = cp.open_checkpoint(note, self.site, self.keys.public_key())
        except SecurityAlarm:
            log.warning("%s answered about a checkpoint this terminal did not sign", sender)
            return
        self.db.execute("INSERT INTO record_have (witness, have) VALUES (?,?) ON"
                        " CONFLICT(witness) DO UPDATE SET have=excluded.have",
                        (sender, payload["have"]))
        if payload.get("refused"):
            self._alarm(SecurityAlarm(
                f"{sender} refuses to cosign this terminal's record at size {mine.size}:"
                f" {payload['refused']}", code=ErrorCode.RECORD_FORKED,
                hint="the other site holds a checkpoint of this log that the log on disk no"
                     " longer extends: entries were changed or removed here"), sender)
            return
        line = payload.get("cosignature")
        if line is None:
            # The witness had seen another size than we thought: a proof from there.
            if payload["have"] <= self.size:
                self._send_checkpoint(sender)
            return
        try:
            when = cp.verify_cosignature(note, line, sender, keys.verifier())
        except SecurityAlarm as exc:
            log.warning("a cosignature from %s does not hold: %s", sender, exc)
            return
        self.db.execute("INSERT OR REPLACE INTO record_cosigs VALUES (?,?,?,?,?)",
                        (note, mine.size, sender, line, when * 1000))
        log.info("%s cosigned this record at size %d", sender, mine.size)
        self._publish({"t": "record", "size": self.size, "cosigned": {
            "by": sender, "size": mine.size}})

    # -- state for people -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        size = self.size
        cosigned = [{"by": w, "size": s, "time_ms": t} for w, s, t in self.db.execute(
            "SELECT witness, max(size), time_ms FROM record_cosigs GROUP BY witness")]
        seen = [{"log": lg, "size": s} for lg, s in self.db.execute(
            "SELECT log, max(size) FROM record_seen GROUP BY log")]
        forks = [{"id": i, "log": lg, "why": why, "time_ms": t, "seen": seen_note,
                  "now": now_note} for i, lg, why, t, seen_note, now_note in self.db.execute(
            "SELECT id, log, why, time_ms, seen, now FROM record_forks ORDER BY id")]
        return {"site": self.site, "origin": self.origin, "size": size,
                "root": b64e(self.tree.root(size)), "cosigned": cosigned, "witnessed": seen,
                "forks": forks}

    # -- bundles --------------------------------------------------------------------------

    def export(self, *, statement: dict[str, Any] | None = None, last: int | None = 100,
               types: set[str] | None = None, paper: bool = False, proofs: bool = True
               ) -> dict[str, Any]:
        """A bundle (core.bundle) of these entries, proven into co-signed checkpoints.

        `statement`: a joint statement's final version and signatures (Statements.export),
        with its entries in this log and in the other's; `paper`: only what a QR code
        needs (the final entries, signing keys, no text)."""
        size = self.sync()
        st_id = statement["core"]["statement"] if statement else None
        if st_id is not None:
            chosen = self.entries(statement=st_id)
            if paper:
                chosen = [(i, d) for i, d in chosen if b'"event":"final"' in d]
        else:
            chosen = self.entries(limit=last, types=types)
        if not proofs:
            chosen = []
        keys: dict[str, DevicePublicKeys] = {self.site: self.me}
        logs: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        own = self._own_checkpoints(max((i for i, _ in chosen), default=-1), size)
        logs.append({"origin": self.origin, "key": self.site, "checkpoints": [
            {"note": note, "cosignatures": cosigs} for note, cosigs, _s in own]})
        for index, data in chosen:
            k = next(j for j, (_n, _c, s) in enumerate(own) if index < s)
            items.append({"log": 0, "checkpoint": k, "index": index, "entry": data.decode(),
                          "proof": bundle.b64_hashes(self.tree.inclusion_proof(index,
                                                                              own[k][2]))})
        for _n, cosigs, _s in own:
            for c in cosigs:
                keys.setdefault(c["by"], self._key(c["by"]))
        if st_id is not None:
            for lg, version, index, entry, proof, p_size in self.db.execute(
                    "SELECT log, version, idx, entry, proof, size FROM record_peer_proofs"
                    " WHERE statement=? ORDER BY log", (st_id,)):
                if version != statement["core"]["version"]:  # type: ignore[index]
                    continue
                seen = self.db.execute("SELECT note, line FROM record_seen WHERE log=? AND"
                                       " size=?", (lg, p_size)).fetchone()
                signers = list(json.loads(entry).get("signatures") or {})
                known = {d: self.me if d == self.site else self.store.pin(d)
                         for d in [lg, *signers]}
                if seen is None or None in known.values():
                    log.info("export: %s's proof of statement %s left out (its checkpoint, or"
                             " a signer's key, is not here)", lg, st_id)
                    continue
                for device, pub in known.items():
                    if pub is not None:
                        keys.setdefault(device, pub)
                logs.append({"origin": record.origin_of(lg), "key": lg, "checkpoints": [
                    {"note": seen[0], "cosignatures": [{"by": self.site, "line": seen[1]}]}]})
                if proofs:
                    items.append({"log": len(logs) - 1, "checkpoint": 0, "index": index,
                                  "entry": entry, "proof": json.loads(proof)})
            for device in statement["signatures"]:  # type: ignore[index]
                keys.setdefault(device, self._key(device))
        out = {"format": bundle.FORMAT, "version": 1, "made_by": self.site,
               "made_ms": now_ms(),
               "keys": {d: bundle.public_key_json(k, whole=not paper)
                        for d, k in sorted(keys.items())},
               "logs": logs, "entries": items,
               "statements": [statement] if statement else []}
        if paper and statement:
            out["statements"] = [{k: v for k, v in statement.items() if k != "text"}]
        return bundle.sign(out, self.keys.sign)

    def _own_checkpoints(self, top: int, size: int) -> list[tuple[str, list[dict[str, str]],
                                                                    int]]:
        """The checkpoints the chosen entries are proven into: the latest one cosigned that
        covers entry `top` (or the latest cosigned and one signed now for the rest)."""
        out: list[tuple[str, list[dict[str, str]], int]] = []
        for note_size, note in self.db.execute(
                "SELECT DISTINCT size, note FROM record_cosigs WHERE size <= ? AND size > 0"
                " ORDER BY size DESC LIMIT 20", (size,)):
            # One this log still extends (not one of before a change on disk).
            if cp.open_checkpoint(note, self.site, self.keys.public_key()).root == \
                    self.tree.root(note_size):
                cosigs = [{"by": w, "line": line} for w, line in self.db.execute(
                    "SELECT witness, line FROM record_cosigs WHERE note=? ORDER BY witness",
                    (note,))]
                out.append((str(note), cosigs, int(note_size)))
                break
        if not out or top >= out[-1][2]:
            now_size, note = self.checkpoint()
            if now_size > 0 and (not out or now_size > out[-1][2]):
                out.append((note, [], now_size))
        if not out:
            raise LocalError("the record is empty: there is nothing to export",
                             code=ErrorCode.INVALID_STATE)
        return out

    def _key(self, device: str) -> DevicePublicKeys:
        if device == self.site:
            return self.me
        pin = self.store.pin(device)
        if pin is None:
            raise LocalError(f"no verified key for {device}", code=ErrorCode.NOT_VERIFIED)
        return pin

    # -- the schedule ---------------------------------------------------------------------

    def start(self) -> None:
        self.check_own()
        self._task = asyncio.ensure_future(self._every())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def soon(self) -> None:
        """Exchange checkpoints shortly (after a call; the server back)."""
        self._exchange_soon.set()

    async def _every(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._exchange_soon.wait(), self.interval_s)
            self._exchange_soon.clear()
            await asyncio.sleep(0.2)  # what else the moment brings goes into the same one
            if not self.link.connected.is_set():
                continue
            try:
                await self.exchange()
            except ParleyError as exc:
                log.info("record exchange put off: %s", exc)
            except Exception:
                log.exception("record exchange failed; tried again later")


def fork_evidence(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The evidence of each fork: both signed checkpoints, as they came."""
    return [{"log": f["log"], "why": f["why"], "seen": f["seen"], "now": f["now"]}
            for f in state["forks"]]

