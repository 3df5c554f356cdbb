"""TURN credentials the line server hands its logged-in devices: coturn's shared secret.

Two sites whose firewalls let no packet of one reach the other still talk
through a TURN relay; media stays DTLS-SRTP (and the frame layer inside it) end
to end, and the relay sees ciphertext only. The server holds a secret it shares
with the TURN server (coturn's ``use-auth-secret`` / ``static-auth-secret``)
and gives a device, when it asks for a call, time-limited credentials in the
scheme of the TURN REST API (draft-uberti-behave-turn-rest-00, section 2.2)::

    username   = "<expiry, Unix seconds>:<device id>"
    credential = base64(HMAC-SHA1(secret, username))

The TURN server recomputes the credential from the username and refuses it
after the expiry, so nothing about a device need be configured there, and a
credential that leaks is worth nothing after its time.

A line's policy says whether its calls may go directly (``any``: host and
server-reflexive candidates as well as relayed ones) or through the relay only
(``relay``: each site's addresses stay hidden from the other).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

from .errors import ErrorCode, LocalError, RemoteError

POLICIES = ("any", "relay")
DEFAULT_TTL_S = 24 * 3600  # a credential outlives the longest talk and its reconnections
MIN_SECRET_BYTES = 16
MAX_SERVERS = 8


# RFC 7065's turn: and turns: URIs, as both media stacks take them: an IPv4 address or a
# host name (aiortc refuses IPv6 literals), a port, and for turn: a transport.
_URL = re.compile(r"^(?:turn:[A-Za-z0-9.-]{1,180}(?::\d{1,5})?(?:\?transport=(?:udp|tcp))?"
                  r"|turns:[A-Za-z0-9.-]{1,180}(?::\d{1,5})?(?:\?transport=tcp)?)$")


def _check_url(url: str) -> str:
    port = url.split("?")[0].rsplit(":", 1)[-1] if url.count(":") > 1 else "3478"
    if not _URL.match(url) or not 0 < int(port) < 65536:
        raise LocalError(f"invalid TURN server {url!r}", code=ErrorCode.BAD_CONFIG,
                         hint="use turn:HOST:PORT (optionally ?transport=udp or tcp) or"
                              " turns:HOST:PORT, HOST an IPv4 address or a name; the"
                              " credentials come from the secret")
    return url


@dataclass(frozen=True)
class TurnConfig:
    urls: tuple[str, ...]
    secret: bytes
    ttl_s: int = DEFAULT_TTL_S

    def __post_init__(self) -> None:
        if not 1 <= len(self.urls) <= MAX_SERVERS:
            raise LocalError(f"give 1 to {MAX_SERVERS} TURN servers",
                             code=ErrorCode.BAD_CONFIG)
        for url in self.urls:
            _check_url(url)
        if len(self.secret) < MIN_SECRET_BYTES:
            raise LocalError(f"the TURN secret is {len(self.secret)} bytes; at least"
                             f" {MIN_SECRET_BYTES} are needed", code=ErrorCode.BAD_CONFIG,
                             hint="make one with: head -c 32 /dev/urandom | base64")
        if not 60 <= self.ttl_s <= 7 * 24 * 3600:
            raise LocalError("the TURN credentials' lifetime must be 1 minute to 7 days",
                             code=ErrorCode.BAD_CONFIG)

    def __repr__(self) -> str:  # never the secret in a log
        return f"TurnConfig(urls={self.urls!r}, ttl_s={self.ttl_s})"


def credential(secret: bytes, username: str) -> str:
    return base64.b64encode(hmac.digest(secret, username.encode(), hashlib.sha1)).decode()


@dataclass(frozen=True)
class TurnServer:
    urls: tuple[str, ...]
    username: str
    credential: str

    def __repr__(self) -> str:  # never the credential in a log
        return f"TurnServer(urls={self.urls!r}, username={self.username!r})"


@dataclass(frozen=True)
class Grant:
    """What the server issued for calls on one line: relays, until when, the policy."""

    servers: tuple[TurnServer, ...]
    expires_ms: int
    policy: str

    @property
    def relay_only(self) -> bool:
        return self.policy == "relay"


def parse_grant(reply: dict[str, Any]) -> Grant:
    """A server's ``turn`` answer (its fields already checked by wire's schema)."""
    servers = []
    for entry in reply["servers"]:
        if not isinstance(entry, dict):
            raise RemoteError("a TURN server entry must be an object")
        urls = entry.get("urls")
        urls = [urls] if isinstance(urls, str) else urls
        username, secret = entry.get("username"), entry.get("credential")
        if not (isinstance(urls, list) and 1 <= len(urls) <= MAX_SERVERS
                and all(isinstance(u, str) for u in urls)
                and isinstance(username, str) and 0 < len(username) <= 300
                and isinstance(secret, str) and 0 < len(secret) <= 300):
            raise RemoteError("a TURN server entry needs urls, a username and a credential")
        for url in urls:
            try:
                _check_url(url)
            except LocalError as exc:
                raise RemoteError(f"the server sent {exc.message}") from None
        servers.append(TurnServer(tuple(urls), username, secret))
    return Grant(tuple(servers), reply["expires_ms"], reply["policy"])


def grant(config: TurnConfig, device_id: str, now_ms: int, policy: str) -> dict[str, Any]:
    """What the server sends a device: the servers, its credentials, until when, the policy."""
    if policy not in POLICIES:
        raise ValueError(policy)
    expiry = now_ms // 1000 + config.ttl_s
    username = f"{expiry}:{device_id}"
    return {"servers": [{"urls": list(config.urls), "username": username,
                         "credential": credential(config.secret, username)}],
            "expires_ms": expiry * 1000, "policy": policy}
