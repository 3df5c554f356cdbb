"""ICE configuration: only the servers we were given, and loopback when asked.

Two aiortc/aioice defaults are wrong for Parley and are overridden here:

* With no ICE servers configured, aiortc adds a public STUN server. Parley
  always passes an explicit list (possibly empty), so nothing is contacted
  that the operator did not configure.
* aioice never offers 127.0.0.1 as a host candidate, so two robot terminals on
  one machine with no other interface could not connect. `--ice-host` (robot
  media option ``ice_host_addresses``) replaces the host-address list for the
  whole process, e.g. ``--ice-host 127.0.0.1`` for demos and tests on loopback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_address
from typing import Any

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from parley.core.errors import ErrorCode, LocalError

_original_get_host_addresses = aioice.ice.get_host_addresses


@dataclass(frozen=True)
class IceConfig:
    servers: tuple[RTCIceServer, ...] = ()
    host_addresses: tuple[str, ...] | None = None  # None: every interface but loopback
    # Relayed candidates only (a line whose media must go through TURN: core.turn).
    relay_only: bool = False

    def rtc_configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=list(self.servers), iceTransportPolicy=(
            RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL))

    def browser_configuration(self) -> dict[str, Any]:
        """The page's RTCConfiguration: exactly these ICE servers (never a browser default),
        and all media on one transport, so that there is one handshake certificate to check."""
        return {"iceServers": [{"urls": s.urls, **({"username": s.username,
                                                     "credential": s.credential}
                                                    if s.username else {})}
                               for s in self.servers],
                "iceTransportPolicy": "relay" if self.relay_only else "all",
                "bundlePolicy": "max-bundle", "rtcpMuxPolicy": "require"}

    def with_turn(self, servers: Sequence[RTCIceServer], relay_only: bool) -> IceConfig:
        """These settings plus the TURN servers the line server issued for one call,
        first (aiortc uses the first TURN server it is given, and only that one)."""
        return replace(self, servers=(*servers, *self.servers), relay_only=relay_only)

    def has_turn(self) -> bool:
        urls = [u for s in self.servers for u in ([s.urls] if isinstance(s.urls, str) else s.urls)]
        return any(u.startswith(("turn:", "turns:")) for u in urls)


def parse_ice_server(text: str) -> RTCIceServer:
    """'stun:host:port' or 'turn:user:pass@host:port?transport=udp'."""
    scheme, _, rest = text.partition(":")
    if scheme not in ("stun", "turn", "turns") or not rest:
        raise LocalError(f"invalid ICE server {text!r}", code=ErrorCode.BAD_CONFIG,
                         hint="use stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT")
    if scheme.startswith("turn") and "@" in rest:
        creds, _, hostpart = rest.rpartition("@")
        user, _, password = creds.partition(":")
        return RTCIceServer(urls=f"{scheme}:{hostpart}", username=user, credential=password)
    return RTCIceServer(urls=text)


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Make aioice offer exactly `addresses` as host candidates (process-wide)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    checked = []
    for a in addresses:
        try:
            checked.append(str(ip_address(a)))
        except ValueError:
            raise LocalError(f"invalid ICE host address {a!r}", code=ErrorCode.BAD_CONFIG,
                             hint="give an IP address such as 127.0.0.1") from None

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in checked if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses
