"""This node among the others that serve one PostgreSQL database.

Any number of `parley server` processes may serve one database; a terminal
logs in to any of them. The database is the system of record (an envelope
is in the mailbox table, committed, before its sender hears "sent"); the
nodes only tell each other what happened, with PostgreSQL's LISTEN/NOTIFY,
so that each acts at once instead of polling (see `core.relay.peers` for
the events, ids and counts only):

* **the doorbell**: a node that stores an envelope tells the others its
  mailbox position; a node where the recipient has a receiving session reads
  it from the mailbox and sends it (`Relay.ring`). A notification is sent by
  PostgreSQL with the commit that stored the envelope, never before it and
  never without it; one that is lost (a node cut off) costs a delay, never
  an envelope: what waits is read again at the next acknowledgement or login.
* **acknowledgements**: the recipient's and the sender's quotas shrink on
  every node, and a session of the same device on another node stops waiting
  for it.
* **sessions**: each login is a row (`node_sessions`, in the order every node
  agrees on) and an event, so presence is the device's on every node, and a
  device's newest session replaces its oldest whichever nodes they are on.
* **rates**: a device logged in on several nodes spends one rate: each node
  tells the others, four times a second, what it spent there.
* **call signaling** for a device on another node waits in the `transit`
  table (its id in the event), a minute at most.
* **line tests** filed on one node are read anew by the others; one node at a
  time (the leader, an advisory lock) judges the lines, sends the alerts and
  sweeps the shared tables.

Each node holds a lock of its own; the others look every second at which are
held, and forget the sessions of a node whose lock went with its connection
(a crash, a kill). A node that loses its own connection to the database, or
fails to commit (what it told the others may not have happened), closes its
sessions (the terminals fail over or come back) and joins again under a new
node id: the others forget it as if it had died.

Writes to one recipient's mailbox take turns across the nodes (`lock_mailboxes`),
and every notification is sealed with a key only the line's role reads
(`peers.Seal`): PostgreSQL lets any role that connects notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from parley.clock import now_ms
from parley.core.errors import RemoteError
from parley.core.relay import peers
from parley.core.relay.lines import LineBoard
from parley.core.relay.relay import Relay
from parley.server.store import EVENTS_CHANNEL, ServerStore, _Postgres

log = logging.getLogger("parley.server.cluster")

CHECK_MS = 1000  # how often the nodes alive are looked at (and the leader lock tried)
# How often what waits is counted again from the mailbox: quotas are kept up to date by
# the events, and this corrects what a notification missed (a node cut off) left wrong.
QUOTA_RECOUNT_MS = 60_000
REFUSALS_LOGGED_MS = 10_000
TRANSIT_KEPT_MS = 60_000


class Cluster:
    """Tells the other nodes what this one did (the relay's `Peers`), and has the relay
    act on what they did."""

    def __init__(self, store: ServerStore, relay: Relay, lines: LineBoard,
                 wrote: Callable[[], None]) -> None:
        backend = store.backend
        assert isinstance(backend, _Postgres)
        self.store, self.backend, self.relay, self.lines = store, backend, relay, lines
        self._wrote = wrote  # the store's group has writes to commit
        # Every node's logged-in sessions, this one's too: device -> sid -> (seq, node,
        # receive). Seq is the order of the logins, the same on every node.
        self.view: dict[str, dict[str, tuple[int, int, bool]]] = {}
        self.live: set[int] = set()
        self.events = 0
        self.refused = 0
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._connects = 0
        self._next_check_ms = 0
        self._next_recount_ms = 0
        self._next_refusal_log_ms = 0
        self._refusals_logged = 0
        self._lost = False
        self.seal = peers.Seal(store.node_key())
        if store.anyone_connects():
            log.warning("any role may connect to %s, and so notify the nodes (refused, unless"
                        " sealed) and read who is logged in where: REVOKE CONNECT ON DATABASE"
                        " ... FROM PUBLIC (docs/deployment.md, Several nodes)", store.where)
        store.seal = lambda body: self.seal.seal(self.node, body, now_ms())

    @property
    def node(self) -> int:
        return self.backend.node_id

    @property
    def leader(self) -> bool:
        return self.backend.leader

    def describe(self) -> str:
        """For the status page: which node this is, among how many."""
        others = len(self.live - {self.node})
        return (f"node {self.node} of {others + 1} serving {self.store.where}"
                + (" (judges the lines and sends the alerts)" if self.leader else ""))

    @property
    def broken(self) -> bool:
        """Lost what it heard from, or its own locks: it must close its sessions and join
        again (`rejoin`)."""
        return (self._lost or self._task is None or self._task.done()
                or self.backend.connects != self._connects)

    def lost(self) -> None:
        """A commit failed: what this node told the others (a login, a logout) may not
        have happened. It is to join again (`broken`)."""
        self._lost = True

    def leave(self) -> None:
        """Let go of this node's id (when it must join again): the others forget its
        sessions as those of a node that is gone. (A connection that broke took it.)"""
        self._lost = False
        # What it wrote and told under the old id goes with it (its sessions are closed):
        # an event of the old id sealed under the new would be refused.
        self.relay.drop_writes()
        try:
            self.store.abandon_group()
            if self.backend.connects == self._connects:
                self.backend.renew_node_id()
        except self.store.Error as exc:  # then the connection is gone, and the id with it
            log.warning("could not let go of node id %d: %s", self.node, exc)

    async def start(self) -> None:
        """Listen, then read what the others hold (in that order: nothing is missed)."""
        self._conn = await self.backend.listen(EVENTS_CHANNEL)
        self.seal.listening(now_ms())
        self.store.settle()
        self.backend.ensure_node_id()
        self._connects = self.backend.connects
        self.view.clear()
        self.live = self.backend.live_nodes()
        for seq, node, sid, device, receive in self.store.node_sessions():
            if node in self.live and node != self.node:
                self.view.setdefault(device, {})[sid] = (seq, node, receive)
        for device in set(self.relay.elsewhere) | set(self.relay.shared) | set(self.view):
            self._recount(device)
        self.relay.reload_quota()  # what the others stored while this one was away
        self.relay.housekeeping = self.backend.try_leader()
        self.relay.peers = self
        self._task = asyncio.ensure_future(self._listen())
        self._next_recount_ms = now_ms() + QUOTA_RECOUNT_MS
        # Sessions that logged in while it was not listening (joining again) may have
        # missed a doorbell: each reads its mailbox again (what it was sent is not sent
        # twice).
        for device in list(self.relay.online):
            self.relay.ring(device, 1)
        log.info("node %d serves %s beside %d other node(s)", self.node, self.store.where,
                 len(self.live - {self.node}))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None

    async def rejoin(self) -> None:
        await self.stop()
        await self.start()

    async def _listen(self) -> None:
        try:
            async for note in self._conn.notifies():
                try:
                    self.apply(note.payload)
                except Exception:
                    log.exception("an event from another node could not be applied")
        except Exception as exc:
            log.error("this node stopped hearing the other nodes (%s)", exc)

    # -- what the others did -------------------------------------------------------------

    def apply(self, payload: str) -> None:
        """One notification: sealed, then events, one per line."""
        rings: dict[str, int] = {}
        transits: list[peers.Event] = []
        try:
            node, body = self.seal.open(payload, now_ms())
        except RemoteError as exc:
            self._refuse(f"a notification on {EVENTS_CHANNEL}: {exc.message}")
            return
        for line in body.split("\n"):
            try:
                event = peers.parse_event(line)
                if event.node != node:
                    raise RemoteError(f"an event of node {event.node} sealed by node {node}")
            except RemoteError as exc:
                self._refuse(f"an event from the database: {exc.message}")
                continue
            self.events += 1
            try:
                self._apply(event, rings, transits)
            except Exception:  # one event that cannot be applied holds up no other
                log.exception("an event from another node could not be applied: %s", line)
        for device, seq in rings.items():
            try:
                self.relay.ring(device, seq)
            except Exception:
                log.exception("the doorbell for %s could not be answered", device)
        if transits:  # the call signaling of one commit, read in one statement
            found = self.store.transits([e.seq for e in transits])
            for event in transits:
                row = found.get(event.seq)
                if row is not None and row[0] == event.recipient:
                    self.relay.deliver_forwarded(event.recipient, row[1])
        if self.store.group_open:
            self._wrote()

    def _refuse(self, what: str) -> None:
        """Count a refusal; log it, at most once every `REFUSALS_LOGGED_MS` (whoever may
        notify could flood the log)."""
        self.refused += 1
        now = now_ms()
        if now >= self._next_refusal_log_ms:
            self._next_refusal_log_ms = now + REFUSALS_LOGGED_MS
            more = self.refused - self._refusals_logged - 1
            self._refusals_logged = self.refused
            log.warning("refused %s%s", what, f" (and {more} more since the last)" if more
                        else "")

    def _apply(self, event: peers.Event, rings: dict[str, int],
               transits: list[peers.Event]) -> None:
        kind, relay = event.kind, self.relay
        if kind == peers.SESSION_IN:
            self._session_in(event)
        elif kind == peers.SESSION_OUT:
            entries = self.view.get(event.device)
            if entries is not None and entries.pop(event.sid, None) is not None:
                self._recount(event.device)
        elif event.node == self.node:
            return  # done here already
        elif kind == peers.STORED:
            relay.quota.added(event.sender, event.recipient, event.size)
            if event.recipient in relay.online:
                rings[event.recipient] = min(rings.get(event.recipient, event.seq), event.seq)
        elif kind == peers.ACKED:
            relay.quota.removed(event.sender, event.recipient, event.size)
            relay.acknowledged(event.recipient, event.ident)
        elif kind == peers.TRANSIT:
            if event.recipient in relay.online:
                transits.append(event)
        elif kind == peers.SPENT:
            relay.spent_elsewhere(event.device, event.frames, event.size, now_ms())
        elif kind == peers.LINE_FILED:
            self.lines.forget(event.line)

    def _session_in(self, event: peers.Event) -> None:
        entries = self.view.setdefault(event.device, {})
        entries[event.sid] = (event.seq, event.node, bool(event.receive))
        excess = len(entries) - self.relay.limits.max_sessions_per_device
        if excess > 0:  # the oldest go, on whichever node they are
            for sid, (_, node, _) in sorted(entries.items(), key=lambda e: e[1][0])[:excess]:
                del entries[sid]
                if node == self.node:
                    for session in self.relay.sessions_of(event.device):
                        if session.sid == sid and not session.closed:
                            self.relay.replace(session)
        self._recount(event.device)

    def _recount(self, device: str) -> None:
        entries = self.view.get(device, {})
        others = [e for e in entries.values() if e[1] != self.node]
        self.relay.set_elsewhere(device, sum(1 for e in others if e[2]), bool(others))
        if not entries:
            self.view.pop(device, None)

    def tick(self, now: int) -> None:
        """Tell what this node's shared devices spent; every second, forget the nodes
        that are gone, and (one node) sweep the shared tables."""
        relay = self.relay
        if now >= self._next_recount_ms and not (relay.has_writes or self.store.committing):
            # (Its own group's writes it reads too: only those still in the relay are not
            # counted there yet.)
            self._next_recount_ms = now + QUOTA_RECOUNT_MS
            relay.reload_quota()
        if relay.spent:
            for device, (frames, size) in relay.spent.items():
                self.store.notify(peers.encode_event(peers.SPENT, self.node, device, frames,
                                                     size))
            relay.spent = {}
            self._wrote()
        if now < self._next_check_ms:
            return
        self._next_check_ms = now + CHECK_MS
        self.store.settle()  # (the node's own locks, asked of its connection)
        self.live = live = self.backend.live_nodes()
        gone = {node for entries in self.view.values() for _, node, _ in entries.values()
                if node not in live and node != self.node}
        for node in gone:
            log.warning("node %d is gone: its sessions are forgotten", node)
            for device in [d for d, entries in self.view.items()
                           if any(n == node for _, n, _ in entries.values())]:
                self.view[device] = {s: e for s, e in self.view[device].items() if e[1] != node}
                self._recount(device)
        relay.housekeeping = self.backend.try_leader()
        if relay.housekeeping:
            self.store.forget_nodes(live | {self.node})
            self.store.forget_transit(now - TRANSIT_KEPT_MS)
            self._wrote()

    # -- what this node did (the relay's Peers) ----------------------------------------

    def stored(self, seq: int, recipient: str, sender: str, size: int) -> None:
        self.store.notify(peers.encode_event(peers.STORED, self.node, seq, recipient, sender,
                                             size))

    def acked(self, recipient: str, sender: str, size: int, envelope_id: str) -> None:
        self.store.notify(peers.encode_event(peers.ACKED, self.node, recipient, sender, size,
                                             peers.encode_ident(envelope_id)))

    def logged_in(self, sid: str, device: str, receive: bool) -> None:
        seq = self.store.add_node_session(self.node, sid, device, receive)
        self.store.notify(peers.encode_event(peers.SESSION_IN, self.node, seq, sid, device,
                                             receive))

    def logged_out(self, sid: str, device: str) -> None:
        try:
            self.store.drop_node_session(sid)
            self.store.notify(peers.encode_event(peers.SESSION_OUT, self.node, sid, device))
        except self.store.Error as exc:  # a session ends whatever the database does
            log.warning("could not tell the other nodes that %s logged out: %s", device, exc)
        self._wrote()

    def forward(self, recipient: str, body: str) -> None:
        self.store.put_transit(recipient, body, now_ms(), self._transit_event)

    def _transit_event(self, seq: int, recipient: str) -> str:
        return peers.encode_event(peers.TRANSIT, self.node, seq, recipient)

    def line_filed(self, line: str) -> None:
        self.store.notify(peers.encode_event(peers.LINE_FILED, self.node, line))
