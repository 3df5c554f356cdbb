"""Sealed envelopes that must arrive: kept on disk until the server has stored them.

Scheduled talks, joint statements and the record's checkpoints are sent the
way messages are -- sealed, signed, stored by the server while the recipient
is away -- but a handful at a time, so they share one simple outbox instead
of the message pipeline: each envelope is written here (table
``talk_outbox``, the name it had when only talks used it) before anything
else is said, and `flush` sends what waits, oldest first, when it is made and
whenever the server is back. One that cannot go now waits; one for a device
whose key is no longer verified is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from parley.core.errors import ParleyError
from parley.core.trust import Trust
from parley.terminal.link import ServerLink
from parley.terminal.peers import PeerBook
from parley.terminal.store import TerminalStore

log = logging.getLogger("parley.terminal")


class SealedOutbox:
    def __init__(self, store: TerminalStore, peers: PeerBook, link: ServerLink) -> None:
        self.store = store
        self.peers = peers
        self.link = link
        self._lock = asyncio.Lock()

    def queue(self, device: str, kind: str, payload: dict[str, Any]) -> None:
        self.store.queue_sealed(device, kind, json.dumps(payload))

    async def flush(self) -> None:
        """Send what waits, oldest first; what fails waits on."""
        async with self._lock:  # one flush at a time: nothing goes twice
            for ident, device, kind, body in self.store.queued_sealed():
                try:
                    trust, keys, _ = await self.peers.trust(device)
                    if trust is not Trust.VERIFIED:
                        log.warning("%s for %s dropped: its key is no longer verified", kind,
                                    device)
                        self.store.sent_sealed(ident)
                        continue
                    await self.link.send_sealed(keys, kind, json.loads(body))
                except ParleyError as exc:
                    log.warning("%s to %s waits: %s", kind, device, exc)
                    continue
                self.store.sent_sealed(ident)
