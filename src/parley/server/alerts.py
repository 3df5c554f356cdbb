"""Alerts: a line that changes state is told to webhooks, signed, until they take it.

Each change of a line's state (`core.relay.lines.Change`) becomes one HTTP POST
per configured webhook, its body in Alertmanager's webhook format (version 4),
so that whatever already reads Alertmanager's notifications reads these: a
line that leaves green *fires* (``severity`` warning for amber, critical for
red), one that returns to green is *resolved*. Deliveries are queued in the
store first (a crash loses none) and tried until the receiver answers 2xx,
with backoff (2 s, 4 s, ... up to 5 min) for a day.

Each body is signed with the server's alert key (Ed25519, `alert.key` in the
data directory, made at first use; ``parley server alert-key`` prints its
public half): header ``X-Parley-Signature: ed25519=<base64 signature over the
exact body bytes>``, and ``X-Parley-Key`` names the key. Alertmanager itself
cannot sign what it sends; a receiver of these can tell a forged alert, or a
forged "resolved", from the line's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ed25519

from parley.clock import now_ms
from parley.core import linetest
from parley.core.encoding import b64d, b64e
from parley.core.relay.lines import Change
from parley.files import check_private, write_private_file
from parley.server.store import ServerStore

log = logging.getLogger("parley.server.alerts")

KEY_FILE = "alert.key"
SIGNATURE_HEADER = "X-Parley-Signature"
KEY_HEADER = "X-Parley-Key"
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 300.0
GIVE_UP_MS = 86_400_000
POST_TIMEOUT_S = 10.0
ALERT_NAME = "ParleyLineNotGreen"
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"


def load_alert_key(data_dir: Path) -> ed25519.Ed25519PrivateKey:
    """The server's alert signing key, made on first use (0600)."""
    path = data_dir / KEY_FILE
    if not path.exists():
        write_private_file(path, ed25519.Ed25519PrivateKey.generate().private_bytes_raw())
    check_private([path], what="the server's alert key", secret=True)
    return ed25519.Ed25519PrivateKey.from_private_bytes(path.read_bytes())


def public_key_text(key: ed25519.Ed25519PrivateKey) -> str:
    return b64e(key.public_key().public_bytes_raw())


def sign_body(key: ed25519.Ed25519PrivateKey, body: bytes) -> dict[str, str]:
    return {SIGNATURE_HEADER: "ed25519=" + b64e(key.sign(body)), KEY_HEADER: public_key_text(key),
            "Content-Type": "application/json"}


def verify_body(public_key: str, body: bytes, signature_header: str) -> bool:
    """Does this header sign this body with this key? (For receivers, and the tests.)"""
    scheme, _, sig = signature_header.partition("=")
    if scheme != "ed25519":
        return False
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(b64d(public_key, max_bytes=32)).verify(
            b64d(sig, max_bytes=64), body)
    except Exception:
        return False
    return True


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def alert_body(change: Change, external_url: str, now: int) -> dict[str, Any]:
    """Alertmanager's webhook payload (version 4) for one line's change."""
    state = change.state
    resolved = state.status == linetest.GREEN
    shown = change.before if resolved and change.before else state.status
    labels = {"alertname": ALERT_NAME, "line": change.line, "status": shown,
              "severity": "critical" if shown == linetest.RED else "warning"}
    reasons = "; ".join(state.reasons) or "all figures within their thresholds"
    annotations = {
        "summary": (f"line {change.line} is green again" if resolved else
                    f"line {change.line} is {state.status}: {reasons}"),
        "reasons": reasons,
        "previous": change.before or "none",
        "test_id": change.test_id or "",
    }
    starts = change.before_since_ms if resolved and change.before_since_ms else now
    alert = {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": _time(starts),
        "endsAt": _time(now) if resolved else ZERO_TIME,
        "generatorURL": f"{external_url}/#line-{change.line}",
        "fingerprint": hashlib.sha256(f"{ALERT_NAME}:{change.line}".encode()).hexdigest()[:16],
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{line="{change.line}"}}',
        "truncatedAlerts": 0,
        "status": alert["status"],
        "receiver": "parley",
        "groupLabels": {"line": change.line},
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external_url,
        "alerts": [alert],
    }


class Alerter:
    """Queues each change for every webhook, and delivers what is due, signed."""

    def __init__(self, store: ServerStore, key: ed25519.Ed25519PrivateKey, urls: list[str],
                 external_url: str, active: Callable[[], bool] = lambda: True) -> None:
        self.store = store
        self._active = active  # of several nodes, one delivers
        self.key = key
        self.urls = list(urls)
        self.external_url = external_url
        self.delivered = 0
        self.failed = 0
        self.given_up = 0
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    def announce(self, changes: Iterable[Change]) -> None:
        now = now_ms()
        for change in changes:
            log.warning("line %s: %s -> %s%s", change.line, change.before or "new",
                        change.state.status,
                        f" ({'; '.join(change.state.reasons)})" if change.state.reasons else "")
            if not self.urls:
                continue
            body = json.dumps(alert_body(change, self.external_url, now),
                              separators=(",", ":")).encode()
            for url in self.urls:
                self.store.queue_alert(url, body, now)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                if not self._active():
                    await asyncio.sleep(1)
                    continue
                try:
                    await self._deliver_due()
                except Exception:  # the store was busy, say: the alerts wait, they are kept
                    log.exception("alert delivery failed; trying again shortly")
                    await asyncio.sleep(FIRST_RETRY_S)
                upcoming = self.store.next_alert_ms()
                timeout = None if upcoming is None else max(0.05, (upcoming - now_ms()) / 1000)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            if self._http is not None:
                await self._http.close()

    async def _deliver_due(self) -> None:
        """Deliver what is due: each webhook its alerts in order (while one waits for a
        retry, the later ones wait behind it, so a "resolved" never overtakes its
        "firing"), and the webhooks side by side (one that does not answer holds up no
        other)."""
        queues: dict[str, list[tuple[int, bytes, int, int, int]]] = {}
        for ident, url, body, attempts, created, next_ms in self.store.pending_alerts():
            queues.setdefault(url, []).append((ident, body, attempts, created, next_ms))
        await asyncio.gather(*(self._deliver_to(url, queue) for url, queue in queues.items()))

    async def _deliver_to(self, url: str, queue: list[tuple[int, bytes, int, int, int]]
                          ) -> None:
        for ident, body, attempts, created, next_ms in queue:
            if next_ms > now_ms():
                return
            try:
                await self._post(url, body)
            except Exception as exc:  # whatever the receiver did, the alert waits for it
                self.failed += 1
                error = str(exc) or type(exc).__name__
                now = now_ms()
                if now - created > GIVE_UP_MS:
                    self.given_up += 1
                    log.error("alert to %s given up after %d tries: %s", url, attempts + 1, error)
                    self.store.alert_done(ident)
                    continue
                delay = min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** attempts) * random.uniform(0.8, 1)
                log.warning("alert to %s failed (%s); again in %.0f s", url, error, delay)
                self.store.alert_failed(ident, now + int(delay * 1000), error)
                return
            self.delivered += 1
            self.store.alert_done(ident)

    async def _post(self, url: str, body: bytes) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(
                total=POST_TIMEOUT_S))
        async with self._http.post(url, data=body, headers=sign_body(self.key, body)) as resp:
            if resp.status // 100 != 2:
                raise RuntimeError(f"HTTP {resp.status}")
