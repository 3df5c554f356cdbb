"""The terminal's messages: queued durably, sent with retries, received in order, once.

`Messenger` is the asyncio adapter around `core.messages`, as `Terminal` is
around `CallBook`. Sending: a message and an outbox entry per recipient
device are committed together (`MessageStore.batch`) before the person is
told "queued"; a sender task seals each entry when its turn comes and sends
it to the server as a *stored* envelope, until the server says it stored it
("sent"), retrying with backoff through disconnections, restarts of either
side and full mailboxes (``quota_exceeded``: later, and the person is told).
Receiving: `receive` is called by the terminal for each opened ``msg.*``
envelope inside the same transaction that remembers the envelope's id, and
the terminal acknowledges the envelope to the server only after that
transaction committed -- so a crash at any moment either leaves the envelope
on the server (it comes again) or has it committed here (it is recognised),
and a message is shown exactly once, in its sender's order.

Receipts owed are written with the message they acknowledge and sent in
batches by the same sender task; files are written where their chunks belong
as they come, and checked against their SHA-256 once whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.clock import now_ms
from parley.core import messages as core
from parley.core import schema
from parley.core.encoding import b64d, b64e, random_id
from parley.core.envelope import Envelope, seal_envelope
from parley.core.errors import ErrorCode, LocalError, ParleyError, RemoteError, SecurityAlarm
from parley.core.keys import DeviceKeys, DevicePublicKeys, split_device_id
from parley.core.trust import Trust, assess, verify_hint
from parley.terminal.link import ServerLink
from parley.terminal.message_store import Message, MessageStore, OutboxEntry
from parley.terminal.peers import PeerBook
from parley.terminal.record import Record
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.messages")

WINDOW = 64  # envelopes in flight to the server at once
HOLD_AFTER_FAILURE_MS = 2_000  # after a send the server did not take, none start this long
# Receipts owed are sent at the end of the turn that owed them: one receipt names every
# message of that turn (a mailbox arrives many to a turn), and none waits longer.
RECEIPT_DELAY_S = 0.0
TIMER_S = 1.0  # how often open gaps are looked at
BACKOFF_FIRST_MS = 1_000
BACKOFF_MAX_MS = 60_000
QUOTA_RETRY_MS = 30_000
RATE_RETRY_MS = 300
# Refusals a retry cannot mend: the entry is dropped and the message marked failed.
_FINAL = frozenset({ErrorCode.NO_LINE, ErrorCode.UNKNOWN_DEVICE, ErrorCode.DEVICE_REVOKED,
                    ErrorCode.TOO_LARGE, ErrorCode.BAD_MESSAGE})

AlarmSink = Callable[[str | None, ParleyError, str | None], None]
Publish = Callable[[dict[str, Any]], None]


@dataclass
class Sending:
    """One envelope on its way to the server (the task that sends it)."""

    entry: OutboxEntry
    task: asyncio.Task[None]


class Messenger:
    def __init__(self, *, keys: DeviceKeys, me: DevicePublicKeys, store: TerminalStore,
                 link: ServerLink, peers: PeerBook, require_verified: Callable[[], bool],
                 publish: Publish, alarm: AlarmSink, stored: bool = True,
                 listened: Callable[[], bool] = lambda: True,
                 record: Record | None = None) -> None:
        self._keys = keys
        self._record = record
        self.me = me
        self.device_id = me.device_id
        self.party = me.party
        self.store = store
        self.ms = MessageStore(store.db, store.data_dir)
        self.link = link
        self.peers = peers
        self._require_verified = require_verified
        self._publish = publish
        self._listened = listened  # is any page or client following events?
        self._alarm = alarm
        self._to_announce: dict[str, None] = {}  # message ids whose news goes out this turn
        # False only for the messages benchmark's baseline: the same path, relayed
        # ephemerally instead of stored by the server.
        self._stored = stored
        self._inflight: dict[str, Sending] = {}
        self._held_until_ms = 0  # no new sends before then (the link just failed one)
        self._wake = asyncio.Event()
        self._receipts_soon: asyncio.TimerHandle | None = None
        self._told_quota: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._sender()),
                       asyncio.ensure_future(self._gaps())]
        if self.ms.outbox_size():
            log.info("%d envelopes wait to be sent", self.ms.outbox_size())

    async def stop(self) -> None:
        for task in [*self._tasks, *(s.task for s in self._inflight.values())]:
            task.cancel()
        for task in [*self._tasks, *(s.task for s in self._inflight.values())]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._receipts_soon is not None:
            self._receipts_soon.cancel()

    def link_up(self) -> None:
        """The server is reachable again: whatever waits goes now, not at its next try."""
        self._held_until_ms = 0
        self.ms.retry_now(now_ms())
        self._wake.set()

    # -- what the person does ------------------------------------------------------------

    async def send_text(self, party: str, text: str) -> dict[str, Any]:
        try:
            core.check_text(text)
        except RemoteError as exc:
            raise LocalError(exc.message, code=exc.code, hint=exc.hint) from None
        recipients = await self._recipients(party)
        message = self._queue(party, recipients, "text", body=text)
        return self.info(message)

    async def send_file(self, party: str, data: bytes, name: str, type_: str,
                        caption: str = "") -> dict[str, Any]:
        if len(data) > core.MAX_FILE:
            raise LocalError(f"a file may be {core.MAX_FILE / 1e6:.0f} MB at most, not"
                             f" {len(data) / 1e6:.1f} MB", code=ErrorCode.TOO_LARGE)
        name = Path(name).name.strip()[:255] or "file"
        recipients = await self._recipients(party)
        msg_id = random_id()
        path = self.ms.file_path(msg_id, self.device_id)
        _write_private(path, data)  # our own copy: sent again from it after a restart
        message = self._queue(party, recipients, "file", body=caption, msg_id=msg_id,
                              file=(name, type_[:127] or "application/octet-stream", len(data),
                                    hashlib.sha256(data).hexdigest()))
        return self.info(message)

    def mark_read(self, party: str, upto: int | None = None) -> int:
        """The person has read `party`'s conversation, as far as `upto` (the `order` of the
        last message they were shown; None: all of it): read receipts to its senders."""
        now = now_ms()
        with self.ms.batch():
            read = self.ms.mark_read(party, self.ms.last_shown() if upto is None else upto,
                                     now)
            for message in read:
                self.ms.owe_receipt(message.sender, message.conv, "read", message.msg_id)
        if read:
            self._receipts_later()
            if self._listened():
                self._publish({"t": "messages.read", "party": party,
                               "unread": self.ms.unread()})
        return len(read)

    def conversation(self, party: str | None, limit: int = 200,
                     before: int | None = None) -> list[dict[str, Any]]:
        return [self.info(m) for m in self.ms.conversation(party, limit, before)]

    def search(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        return [self.info(m) for m in search(self.ms, query, limit)]

    def file(self, msg_id: str) -> tuple[Path, Message]:
        message = self.ms.get(msg_id)
        if message is None or message.kind != "file" or message.shown is None:
            raise LocalError(f"no file {msg_id!r}", code=ErrorCode.NO_SUCH_CALL)
        if message.sender != self.device_id and message.state != "complete":
            raise LocalError(f"{message.file_name} has not arrived whole"
                             f" ({message.chunks_done} of {message.chunks} parts"
                             f"{', and damaged' if message.state == 'corrupt' else ''})",
                             code=ErrorCode.INVALID_STATE)
        return self.ms.file_path(msg_id, message.sender), message

    def unread(self) -> dict[str, int]:
        return self.ms.unread()

    def info(self, message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {
            "msg_id": message.msg_id, "conv": message.conv, "party": message.party,
            "outgoing": message.outgoing, "sender": message.sender, "seq": message.seq,
            "kind": message.kind, "text": message.body, "state": message.state,
            "order": message.shown, "time_ms": message.time_ms,
            "received_ms": message.received_ms, "read_ms": message.read_ms,
            "error": message.error, "file": None, "deliveries": [],
            # Sent from this device (an outgoing message may be a copy of what another of
            # our own devices sent: it has no receipts here).
            "mine": message.sender == self.device_id, "late": message.late,
        }
        if message.kind == "file":
            out["file"] = {"name": message.file_name, "type": message.file_type,
                           "size": message.file_size, "sha256": message.file_sha256,
                           "chunks": message.chunks, "done": message.chunks_done}
        if out["mine"]:
            out["deliveries"] = self.ms.deliveries(message.msg_id)
            if message.kind == "file" and message.chunks is not None:
                total = (message.chunks + 1) * max(1, len(self.ms.recipients(message.msg_id)))
                out["file"]["done"] = round(
                    (total - self.ms.pending_for(message.msg_id)) / total * message.chunks)
        return out

    # -- queueing -----------------------------------------------------------------------------

    async def _recipients(self, party: str) -> tuple[list[str], list[str]]:
        """Every device of `party` we may send to; and our own other devices, which are
        sent a copy (so that the conversation reads the same on each)."""
        if party == self.party:
            raise LocalError("messages go to the other party of a line",
                             code=ErrorCode.BAD_CONFIG, hint="name the other party")
        try:
            # The cached listing (a minute old at most, and looked at again whenever the
            # server says the party's devices changed): not a round trip per message.
            listing = await self.peers.listing(party)
        except RemoteError as exc:
            if exc.code is not ErrorCode.SERVER_ERROR:
                raise
            # The server is away: queue it for the devices we know (it goes when it is back).
            listing = self.peers.cached(party) or self.peers.pinned_listing(party)
            if not listing.devices:
                raise
        chosen: list[str] = []
        refused: list[str] = []
        for device in sorted(listing.devices):
            if self.peers.is_test_set(device):
                continue  # a test set takes part in line tests, not in conversations
            trust = self._trust(device, listing.devices[device])
            (chosen if trust is not None else refused).append(device)
        if not chosen:
            if not listing.devices:
                raise LocalError(f"{party} has no enrolled device yet",
                                 code=ErrorCode.UNKNOWN_DEVICE,
                                 hint=f"ask {party}'s operator to enroll a terminal")
            raise LocalError(f"no device of {party} is verified here: the message was not"
                             " queued", code=ErrorCode.NOT_VERIFIED, hint=verify_hint(party))
        mine: list[str] = []
        with contextlib.suppress(ParleyError):  # our own other devices, where we can reach them
            own = await self.peers.listing(self.party)
            mine = [d for d in sorted(own.devices) if d != self.device_id
                    and not self.peers.is_test_set(d)
                    and self._trust(d, own.devices[d]) is not None]
        if refused:
            log.info("not sending to %s: not verified here", ", ".join(refused))
        return chosen, mine

    def _trust(self, device: str, listed: DevicePublicKeys | None) -> DevicePublicKeys | None:
        """The keys to seal to `device`, if our policy lets us send it anything."""
        trust, keys = assess(self.store.pin(device), listed) if listed or \
            self.store.pin(device) else (Trust.UNVERIFIED, None)
        if keys is None or trust is Trust.CHANGED:
            return None
        if trust is not Trust.VERIFIED and self._require_verified():
            return None
        return keys

    def _queue(self, party: str, recipients: tuple[list[str], list[str]], kind: str, *,
               body: str,
               msg_id: str | None = None,
               file: tuple[str, str, int, str] | None = None) -> Message:
        now = now_ms()
        conv = core.conversation_id(self.party, party)
        with self.ms.batch():
            seq = self.ms.next_seq(conv)
            name, type_, size, sha = file if file is not None else (None, None, None, None)
            chunks = core.chunk_count(size) if size is not None else None
            message = self.ms.add(Message(
                msg_id=msg_id or random_id(), conv=conv, party=party, outgoing=True,
                sender=self.device_id, seq=seq, kind=kind, body=body, file_name=name,
                file_type=type_, file_size=size, file_sha256=sha, chunks=chunks,
                chunks_done=0, state="queued", shown=None, time_ms=now, received_ms=None,
                read_ms=None, error=None), show=True)
            if self._record is not None:
                self._record.message(msg_id=message.msg_id, outgoing=True, party=party,
                                     sender=self.device_id, kind=kind, text=body,
                                     file_sha256=sha, size=size, name=name)
            others, mine = recipients
            for device in [*others, *mine]:
                self.ms.add_delivery(message.msg_id, device, own=device in mine)
                self.ms.first_sent(conv, device, seq)
                self._enqueue_message(message, device, now)
        self._announce([message.msg_id])
        self._wake.set()
        return message

    def _enqueue_message(self, message: Message, device: str, now: int) -> None:
        kind = "msg.file" if message.kind == "file" else "msg.text"
        self.ms.enqueue(random_id(), device, kind, now, msg_id=message.msg_id)
        for index in range(message.chunks or 0):
            self.ms.enqueue(random_id(), device, "msg.chunk", now, msg_id=message.msg_id,
                            chunk=index)

    # -- sending ---------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            try:
                if self.link.connected.is_set():
                    self._start_due()
            except Exception:
                log.exception("the message outbox could not be read; trying again")
            due = self.ms.next_due_ms()
            timeout = None if due is None else max(0.05, (due - now_ms()) / 1000)
            if not self.link.connected.is_set():
                timeout = 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()

    def _start_due(self) -> None:
        free = WINDOW - len(self._inflight)
        if free <= 0 or now_ms() < self._held_until_ms:
            return
        for entry in self.ms.due(now_ms(), free, set(self._inflight)):
            task = asyncio.ensure_future(self._send(entry))
            self._inflight[entry.envelope_id] = Sending(entry, task)

    async def _send(self, entry: OutboxEntry) -> None:
        try:
            try:
                envelope = await self._seal(entry)
                if envelope is None:
                    return
                await self.link.send_envelope(envelope, ephemeral=not self._stored)
            except RemoteError as exc:
                self._failed(entry, exc)
                return
            self._done(entry)
        except Exception:
            log.exception("sending %s to %s failed", entry.type, entry.recipient)
            self.ms.retry_later(entry.envelope_id, now_ms() + BACKOFF_MAX_MS, "internal error")
        finally:
            self._inflight.pop(entry.envelope_id, None)
            self._wake.set()

    async def _seal(self, entry: OutboxEntry) -> Envelope | None:
        party = split_device_id(entry.recipient)[0]
        listing = self.peers.cached(party) or await self.peers.listing(party)
        keys = self._trust(entry.recipient, listing.devices.get(entry.recipient))
        if keys is None:
            self._give_up(entry, f"{entry.recipient} is no longer verified here")
            return None
        payload = self._payload(entry)
        if payload is None:
            self.ms.sent(entry.envelope_id)  # what it was for is gone
            return None
        return seal_envelope(self._keys, self.device_id, keys, entry.type, payload, now_ms(),
                             entry.envelope_id)

    def _payload(self, entry: OutboxEntry) -> dict[str, Any] | None:
        if entry.payload is not None:
            return entry.payload
        message = self.ms.get(entry.msg_id or "")
        if message is None:
            return None
        if entry.type == "msg.chunk":
            assert entry.chunk is not None
            with self.ms.file_path(message.msg_id, message.sender).open("rb") as f:
                f.seek(entry.chunk * core.CHUNK_BYTES)
                data = f.read(core.CHUNK_BYTES)
            return {"msg_id": message.msg_id, "index": entry.chunk, "data": b64e(data)}
        first = self.ms.first_sent(message.conv, entry.recipient, message.seq)
        payload: dict[str, Any] = {"conv": message.conv, "seq": message.seq, "first": first,
                                   "msg_id": message.msg_id}
        if message.kind == "file":
            payload.update(name=message.file_name, type=message.file_type,
                           size=message.file_size, sha256=message.file_sha256,
                           chunks=message.chunks)
            if message.body:
                payload["text"] = message.body
        else:
            payload["text"] = message.body
        return payload

    def _done(self, entry: OutboxEntry) -> None:
        now = now_ms()
        with self.ms.batch():
            if not self.ms.sent(entry.envelope_id):
                return
            if entry.msg_id is None or entry.type not in ("msg.text", "msg.file", "msg.chunk"):
                return
            if entry.type != "msg.chunk":
                self.ms.delivered(entry.msg_id, entry.recipient, "stored_ms", now)
            done = self.ms.mark_sent_if_done(entry.msg_id)
        if entry.type != "msg.chunk" or done or (entry.chunk or 0) % 8 == 0:
            self._announce([entry.msg_id])

    def _failed(self, entry: OutboxEntry, exc: RemoteError) -> None:
        now = now_ms()
        if exc.code in _FINAL:
            self._give_up(entry, f"{exc.message} [{exc.code}]")
            return
        if exc.code is ErrorCode.QUOTA_EXCEEDED:
            delay = QUOTA_RETRY_MS
            if entry.recipient not in self._told_quota:
                self._told_quota.add(entry.recipient)
                self._publish({"t": "problem", "problem": {**exc.as_dict(),
                                                           "about": entry.recipient}})
        elif exc.code is ErrorCode.RATE_LIMITED:
            delay = RATE_RETRY_MS
        else:
            delay = min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** min(entry.attempts, 6))
            if exc.code is ErrorCode.SERVER_ERROR:
                # The link is going or gone: the rest of the outbox is not poured into it
                # before the terminal notices (then link_up lets it go at once).
                self._held_until_ms = now + HOLD_AFTER_FAILURE_MS
        delay = int(delay * random.uniform(0.8, 1.2))
        log.info("%s to %s not sent yet (%s); again in %.1f s", entry.type, entry.recipient,
                 exc.code, delay / 1000)
        self.ms.retry_later(entry.envelope_id, now + delay, str(exc.code))

    def _give_up(self, entry: OutboxEntry, why: str) -> None:
        log.warning("giving up on %s to %s: %s", entry.type, entry.recipient, why)
        with self.ms.batch():
            self.ms.sent(entry.envelope_id)
            message = self.ms.get(entry.msg_id) if entry.msg_id else None
            if message is not None and message.outgoing:
                self.ms.set_state(message.msg_id, "failed", f"not sent to {entry.recipient}:"
                                                            f" {why}")
        if message is not None:
            self._announce([message.msg_id])

    # -- receipts owed -----------------------------------------------------------------------

    def _receipts_later(self) -> None:
        if self._receipts_soon is None:
            self._receipts_soon = asyncio.get_running_loop().call_later(
                RECEIPT_DELAY_S, self._send_receipts)

    def _send_receipts(self) -> None:
        self._receipts_soon = None
        now = now_ms()
        with self.ms.batch():
            for device, conv, kind, ids in self.ms.receipts_owed(core.MAX_RECEIPT_IDS):
                self.ms.enqueue(random_id(), device, "msg.receipt", now,
                                payload={"conv": conv, "kind": kind, "ids": ids})
                self.ms.receipts_sent(device, conv, kind, ids)
        self._wake.set()

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, envelope: Envelope, payload: dict[str, Any], trust: Trust,
                now: int) -> None:
        """An opened msg.* envelope. Runs inside the transaction that remembers its id."""
        sender = envelope.sender
        if trust is not Trust.VERIFIED and self._require_verified():
            party = split_device_id(sender)[0]
            self._alarm(None, LocalError(
                f"a message from {sender} was refused: its key is not verified here",
                code=ErrorCode.NOT_VERIFIED, hint=verify_hint(party)), sender)
            return
        schema.validate(payload, core.PAYLOADS[envelope.type], what=envelope.type)
        if envelope.type in core.SEQUENCED:
            self._sequenced(envelope, payload, now)
        elif envelope.type == "msg.chunk":
            self._chunk(sender, payload, now)
        elif envelope.type == "msg.receipt":
            self._receipt(sender, payload, now)
        elif envelope.type == "msg.resend":
            self._resend(sender, payload, now)

    def _sequenced(self, envelope: Envelope, payload: dict[str, Any], now: int) -> None:
        sender = envelope.sender
        sender_party = split_device_id(sender)[0]
        conv, seq, first = payload["conv"], payload["seq"], payload["first"]
        core.check_conversation(conv, self.party, sender_party)
        if first > seq:
            raise RemoteError(f"{envelope.type} says its sender began at {first}, after {seq}")
        lo, hi = core.parse_conversation(conv)
        party = hi if lo == self.party else lo
        # A copy of what another of our own devices sent: ours, as the person sees it --
        # never unread here, never acknowledged with receipts.
        copy = sender_party == self.party
        msg_id = payload["msg_id"]
        existing = self.ms.get(msg_id)
        if existing is not None:
            if existing.sender != sender or existing.seq != seq:
                self._conflict(sender, f"message {msg_id} came again with another sender or"
                                       " number")
            elif not copy and (existing.kind == "text" or existing.state == "complete"):
                # The same message again: shown once already. Sent again because our
                # receipt never reached its sender, so the receipt goes again.
                self.ms.owe_receipt(sender, conv, "delivered", msg_id)
                self._announce([])
            return
        other = self.ms.by_seq(conv, sender, seq)
        if other is not None:
            self._conflict(sender, f"{sender} sent two different messages numbered {seq}")
            return
        kind = "file" if envelope.type == "msg.file" else "text"
        if kind == "file":
            core.check_file(payload["size"], payload["chunks"], payload["sha256"])
        stream = self.ms.stream(conv, sender)
        placement = core.place(stream, seq, first, now)
        if placement.duplicate:
            return  # shown already, or too long ago lost: never shown (again) now
        if placement.late:
            log.warning("message %d from %s, declared lost, came after all", seq, sender)
        message = Message(
            msg_id=msg_id, conv=conv, party=party, outgoing=copy, sender=sender, seq=seq,
            kind=kind, body=payload.get("text", ""),
            file_name=payload.get("name"), file_type=payload.get("type"),
            file_size=payload.get("size"), file_sha256=payload.get("sha256"),
            chunks=payload.get("chunks"), chunks_done=0,
            state="held" if placement.hold else ("receiving" if kind == "file" else "shown"),
            shown=None, time_ms=envelope.time_ms, received_ms=now, read_ms=None, error=None,
            late=placement.late)
        self.ms.add(message, show=not placement.hold)
        if self._record is not None:
            self._record.message(msg_id=msg_id, outgoing=copy, party=party, sender=sender,
                                 kind=kind, text=message.body, file_sha256=message.file_sha256,
                                 size=message.file_size, name=message.file_name)
        shown = [message] if not placement.hold else []
        for later in placement.show[1:]:
            held = self.ms.by_seq(conv, sender, later)
            if held is not None:
                self.ms.show(held.msg_id)
                shown.append(held)
        self.ms.save_stream(conv, sender, stream)
        if kind == "file" and message.chunks == 0:
            self._file_complete(message)  # an empty file: whole as it is
        elif kind == "text" and not copy:
            self.ms.owe_receipt(sender, conv, "delivered", msg_id)
        self._announce([m.msg_id for m in shown] or [msg_id])

    def _chunk(self, sender: str, payload: dict[str, Any], now: int) -> None:
        """A part of a file. Its sender sends a file's header before any of its parts (and
        again before them, if asked), so a part whose header is not here is dropped."""
        msg_id, index = payload["msg_id"], payload["index"]
        message = self.ms.get(msg_id)
        if message is None:
            log.warning("part %d of message %s from %s came before its header; dropped",
                        index, msg_id, sender)
            return
        if message.sender != sender or message.kind != "file":
            self._conflict(sender, f"a part for message {msg_id}, which is not {sender}'s file")
            return
        if message.state not in ("held", "receiving"):
            return  # whole (or damaged) already: what comes now changes nothing
        chunks, size = message.chunks or 0, message.file_size or 0
        if index >= chunks:
            raise RemoteError(f"part {index} of a file of {chunks} parts")
        data = b64d(payload["data"], what="msg.chunk.data", max_bytes=core.CHUNK_BYTES)
        want = core.CHUNK_BYTES if index < chunks - 1 else size - index * core.CHUNK_BYTES
        if len(data) != want:
            raise RemoteError(f"part {index} of {message.file_name!r} carries {len(data)}"
                              f" bytes, not {want}")
        if not self.ms.chunk_arrived(msg_id, index, sender):
            return  # came before
        with _open_private(self.ms.file_path(msg_id, sender)) as f:
            f.seek(index * core.CHUNK_BYTES)
            f.write(data)
        done = self.ms.chunk_done(msg_id)
        message.chunks_done = done
        if done == chunks:
            self._file_complete(message)
        elif done % 8 == 0:
            self._announce([msg_id])

    def _file_complete(self, message: Message) -> None:
        path = self.ms.file_path(message.msg_id, message.sender)
        with _open_private(path) as f:
            f.truncate(message.file_size or 0)
        self.ms.chunks_finished(message.msg_id)
        digest = _sha256(path)
        if digest != message.file_sha256:
            self.ms.set_state(message.msg_id, "corrupt", "its SHA-256 does not match")
            self._alarm(None, SecurityAlarm(
                f"{message.file_name} from {message.sender} arrived, but its SHA-256 does not"
                " match the one its sender signed", code=ErrorCode.BAD_SIGNATURE,
                hint="it is kept but not offered; ask for it again"), message.sender)
        else:
            # Held (an earlier message has not come yet), it is shown whole when its turn
            # comes (`MessageStore.show` keeps the state).
            self.ms.set_state(message.msg_id, "complete")
            if not message.outgoing:
                self.ms.owe_receipt(message.sender, message.conv, "delivered", message.msg_id)
        self._announce([message.msg_id])

    def _receipt(self, sender: str, payload: dict[str, Any], now: int) -> None:
        ids = core.check_receipt_ids(payload["ids"])
        column = "delivered_ms" if payload["kind"] == "delivered" else "read_ms"
        changed = [i for i in ids if self.ms.delivered(i, sender, column, now)]
        if changed and self._record is not None:
            self._record.add("receipt", **{"from": sender, "kind": payload["kind"][:16],
                                           "ids": changed})
        if len(changed) < len(ids):
            log.info("a %s receipt from %s named %d messages not sent to it", payload["kind"],
                     sender, len(ids) - len(changed))
        self._announce(changed)

    def _resend(self, sender: str, payload: dict[str, Any], now: int) -> None:
        """`sender` asks for our messages `from_seq` to `to_seq` again: each that was sent
        to it, that it has not confirmed, and that is not on its way to it already."""
        conv, lo, hi = payload["conv"], payload["from_seq"], payload["to_seq"]
        core.check_conversation(conv, self.party, split_device_id(sender)[0])
        if hi < lo or hi - lo >= core.MAX_RESEND:
            raise RemoteError(f"a resend request for {lo} to {hi}")
        again = 0
        for seq in range(lo, hi + 1):
            message = self.ms.by_seq(conv, self.device_id, seq)
            if message is None:
                continue
            confirmed = self.ms.recipients(message.msg_id).get(sender)
            if confirmed is None or confirmed or self.ms.pending_to(message.msg_id, sender):
                continue
            self._enqueue_message(message, sender, now)
            again += 1
        log.info("%s asked for messages %d to %d again; %d sent again", sender, lo, hi, again)
        self._after_commit(self._wake.set)

    def _conflict(self, sender: str, what: str) -> None:
        self._alarm(None, SecurityAlarm(
            f"{what}; it was not shown", code=ErrorCode.REPLAY,
            hint="a sending device should never do this: its key may be in other hands"),
            sender)

    def _after_commit(self, then: Callable[[], None]) -> None:
        # receive() runs inside the terminal's transaction: what it tells others waits for it.
        asyncio.get_running_loop().call_soon(then)

    def _announce(self, ids: list[str]) -> None:
        """Tell pages about these messages once this turn's work is committed, each once
        however often it changed; the unread counts once for all of them."""
        first = not self._to_announce
        self._to_announce.update(dict.fromkeys(ids))
        if first:
            asyncio.get_running_loop().call_soon(self._flush_announcements)

    def _flush_announcements(self) -> None:
        ids, self._to_announce = list(self._to_announce), {}
        if self.ms.db.execute("SELECT 1 FROM receipts_due LIMIT 1").fetchone():
            self._receipts_later()
        if not self._listened():
            return
        for msg_id in ids:
            message = self.ms.get(msg_id)
            if message is not None and (message.shown is not None or message.outgoing):
                self._publish({"t": "message", "message": self.info(message)})
        self._publish({"t": "messages.unread", "unread": self.ms.unread()})

    # -- gaps ------------------------------------------------------------------------------------

    async def _gaps(self) -> None:
        while True:
            await asyncio.sleep(TIMER_S)
            try:
                # Only while connected: a gap is asked about before it is declared lost,
                # and the time it waits is time its sender could answer in.
                if self.link.connected.is_set():
                    self.check_gaps(now_ms())
                self.ms.index_pending()
            except Exception:
                log.exception("looking at message gaps failed")

    def check_gaps(self, now: int) -> None:
        for conv, sender, stream in self.ms.streams_with_gaps():
            action = core.handle_gap(stream, now)
            if action.ask is None and action.lost is None:
                continue
            shown = []
            with self.ms.batch():
                if action.ask is not None:
                    log.warning("messages %d to %d from %s have not come; asking again",
                                *action.ask, sender)
                    self.ms.enqueue(random_id(), sender, "msg.resend", now, payload={
                        "conv": conv, "from_seq": action.ask[0], "to_seq": action.ask[1]})
                if action.lost is not None:
                    lo, hi = action.lost
                    lo_party, hi_party = core.parse_conversation(conv)
                    notice = self.ms.add(Message(
                        msg_id=f"lost-{random_id(12)}", conv=conv,
                        party=hi_party if lo_party == self.party else lo_party,
                        outgoing=False, sender=sender, seq=-lo, kind="lost",
                        body=f"message{'s' if hi > lo else ''} {lo}{f' to {hi}' if hi > lo else ''}"
                             f" from {sender} did not arrive, and {'were' if hi > lo else 'was'}"
                             " declared lost",
                        file_name=None, file_type=None, file_size=None, file_sha256=None,
                        chunks=None, chunks_done=0, state="lost", shown=None, time_ms=now,
                        received_ms=now, read_ms=None, error=None), show=True)
                    shown.append(notice.msg_id)
                    log.warning("%s", notice.body)
                    for seq in action.show:
                        held = self.ms.by_seq(conv, sender, seq)
                        if held is not None:
                            self.ms.show(held.msg_id)
                            shown.append(held.msg_id)
                self.ms.save_stream(conv, sender, stream)
            self._wake.set()
            if shown:
                self._announce(shown)


def search(ms: MessageStore, query: str, limit: int = 50) -> list[Message]:
    """What matches a person's search (nothing, for a search of no words)."""
    match = search_terms(query)
    if not match:
        return []
    try:
        return ms.search(match, limit)
    except sqlite3.OperationalError as exc:  # a query the index cannot take, however quoted
        raise LocalError(f"cannot search for {query[:60]!r}: {exc}",
                         code=ErrorCode.BAD_MESSAGE, hint="search for plain words") from None


def search_terms(query: str) -> str:
    """A person's search as an FTS5 query: each word a word (quoted, so that the person's
    text is never FTS5 syntax by accident), one ending in * a prefix."""
    terms = []
    clean = "".join(ch if ch.isprintable() else " " for ch in query)
    for word in clean.replace('"', " ").split():
        stem = word.rstrip("*")
        if stem:
            terms.append(f'"{stem}"' + ("*" if word.endswith("*") else ""))
    return " ".join(terms)


def _write_private(path: Path, data: bytes) -> None:
    with _open_private(path) as f:
        f.write(data)
        f.truncate()


def _open_private(path: Path) -> Any:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "r+b")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

