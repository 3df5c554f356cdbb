"""The line server's limits: every one a setting, with a default that suits a real line.

A line carries a handful of devices per site, a few calls a day and messages
by the hundred; the defaults leave it plenty of room while keeping what one
misbehaving client -- enrolled or not -- can take from the others to a small,
known share. Each is a `parley server` option (``--max-connections`` ...), an
environment variable (``PARLEY_MAX_CONNECTIONS``) and a key of ``[server]``
in ``parley.toml``; `LIMIT_HELP` is the text every surface shows for it.

Connections (before anyone has proved who they are):

* ``max_connections`` in all, ``max_connections_per_source`` from one address;
* ``max_unauthenticated`` not yet logged in, ``max_unauthenticated_per_source``
  from one address: past either, the newest connection pushes out the oldest
  one that has not logged in (from the address with the most of them), so
  that whoever holds connections open without logging in cannot keep a
  genuine terminal out, even one that shares its address;
* ``login_timeout``: a WebSocket that has not logged in by then is closed;
  ``header_timeout``: a connection that has not sent a whole HTTP request by
  then (and an idle one between requests) is closed; ``read_timeout``: the
  longest an HTTP request body may take;
* before login the only frame allowed is the ``hello``: anything else is
  answered once and the connection closed, so errors to someone who has not
  logged in are never amplified;
* ``unauthenticated_kib``: what a connection may send before it logs in;
* ``hold_refused``: a connection refused, pushed out, sending more than that,
  or closed for junk or a refused login is not read any more and is held that
  many seconds before it is closed (at most ``max_held`` at once; past that,
  closed at once). A flood whose connections were simply closed would open
  them again at once, and the server would spend itself accepting them;
  held, each costs one file descriptor, one timer and what it sent (at most
  ``unauthenticated_kib``) until then.

Devices (after login):

* ``max_sessions_per_device``: a newer session of a device closes its oldest;
* ``rate_limit`` frames and ``byte_rate_limit`` bytes a second *per device*,
  whichever of its connections they come on, in bursts of twice that;
* ``bad_frame_limit``: frames refused as malformed a device may send, in
  bursts of ``BAD_FRAME_BURST``; past that its connection is closed;
* ``mailbox_envelopes`` / ``mailbox_mib``: what may wait on the server for
  one device; ``sender_envelopes`` / ``sender_mib``: what one device may
  have waiting for others; ``sender_share``: the part of one mailbox one
  sender may fill. Past any of them the sender gets ``quota_exceeded``;
* ``mailbox_window`` / ``mailbox_window_kib``: stored envelopes sent to a
  device and not yet acknowledged; the rest follow as acknowledgements come.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import ErrorCode, LocalError

BAD_FRAME_BURST = 32


@dataclass(frozen=True)
class Limits:
    max_connections: int = 4096
    max_connections_per_source: int = 1024
    max_unauthenticated: int = 512
    max_unauthenticated_per_source: int = 64
    login_timeout: float = 10.0
    header_timeout: float = 5.0
    read_timeout: float = 10.0
    hold_refused: float = 5.0
    max_held: int = 2048
    unauthenticated_kib: float = 128.0
    max_sessions_per_device: int = 8
    rate_limit: float = 2000.0
    byte_rate_limit: float = 8 * 1024 * 1024
    bad_frame_limit: float = 60.0
    mailbox_envelopes: int = 50_000
    mailbox_mib: float = 256.0
    sender_envelopes: int = 50_000
    sender_mib: float = 256.0
    sender_share: float = 0.5
    mailbox_window: int = 500
    mailbox_window_kib: float = 4096.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "sender_share" and isinstance(value, int | float) and value > 1:
                raise LocalError(f"sender_share is a fraction of a mailbox, not {value!r}",
                                 code=ErrorCode.BAD_CONFIG,
                                 hint="set --sender-share between 0 and 1 (default 0.5)")
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                flag = "--" + spec.name.replace("_", "-")
                raise LocalError(
                    f"the limit {spec.name} must be a positive number, not {value!r}",
                    code=ErrorCode.BAD_CONFIG,
                    hint=f"set {flag} (default {getattr(Limits, spec.name)})")

    @property
    def mailbox_bytes(self) -> int:
        return int(self.mailbox_mib * 1024 * 1024)

    @property
    def sender_bytes(self) -> int:
        return int(self.sender_mib * 1024 * 1024)

    @property
    def mailbox_window_bytes(self) -> int:
        return int(self.mailbox_window_kib * 1024)


LIMIT_HELP = {
    "max_connections": "connections the server holds at once, in all",
    "max_connections_per_source": "connections from one address",
    "max_unauthenticated": "connections not yet logged in, in all (the newest pushes out the"
                           " oldest)",
    "max_unauthenticated_per_source": "connections not yet logged in from one address",
    "login_timeout": "seconds a WebSocket may take to log in",
    "header_timeout": "seconds a connection may take to send a whole HTTP request, and may"
                        " stay idle between requests",
    "read_timeout": "seconds an HTTP request body may take",
    "hold_refused": "seconds a refused or pushed-out connection, or one closed for junk before"
                    " login, is held unread before it is closed (so a flood cannot reconnect"
                    " at once)",
    "max_held": "connections held that way at once; past that they are closed at once",
    "unauthenticated_kib": "KiB a connection may send before it logs in (an enrollment, a"
                           " login or a page of the status is far less); past that it is held",
    "max_sessions_per_device": "sessions one device may hold; a newer one closes the oldest",
    "rate_limit": "frames per second each device may send (all its connections together), in"
                  " bursts of twice that; more are refused with rate_limited",
    "byte_rate_limit": "bytes per second each device may send, in bursts of twice that",
    "bad_frame_limit": "malformed frames a device may send per minute before its connection"
                          " is closed",
    "mailbox_envelopes": "envelopes that may wait on the server for one device",
    "mailbox_mib": "MiB that may wait on the server for one device",
    "sender_envelopes": "envelopes one device may have waiting for others",
    "sender_mib": "MiB one device may have waiting for others",
    "sender_share": "the share of one device's mailbox (in envelopes and in bytes) that any one"
                    " sender may fill, so that one peer cannot shut the others out",
    "mailbox_window": "stored envelopes sent to a device before it acknowledges them",
    "mailbox_window_kib": "KiB of stored envelopes sent to a device before it acknowledges them",
}
assert set(LIMIT_HELP) == {f.name for f in fields(Limits)}


def limits_markdown() -> str:
    """docs/server-limits.md, generated from `Limits` so that the two cannot drift apart."""
    lines = ["# Line server limits", "",
             "Generated from `Limits` in `src/parley/core/relay/limits.py` by `scripts/gen-docs`;",
             "a test fails when this file and the code disagree. Each is a `parley server`",
             "option, an environment variable and a key of `[server]` in `parley.toml`.", "",
             "| option | environment | default | what it limits |", "|---|---|---|---|"]
    for spec in fields(Limits):
        flag = spec.name.replace("_", "-")
        default = spec.default
        shown = f"{default:g}" if isinstance(default, float) else f"{default:,}"
        lines.append(f"| `--{flag}` | `PARLEY_{spec.name.upper()}` | {shown} |"
                     f" {LIMIT_HELP[spec.name]} |")
    return "\n".join(lines) + "\n"
