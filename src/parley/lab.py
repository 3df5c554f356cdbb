"""A whole line on one machine: provisioning shared by the demo, the tests and the benchmarks.

Everything here does what operators do by hand on a real line -- create the
parties and the line on the server, enroll each terminal with a one-time code,
compare safety numbers out of band and pin each other's keys -- only on one
machine, with both sides' data directories at hand.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from parley.clock import now_ms
from parley.core.errors import ErrorCode, LocalError
from parley.core.keys import DevicePublicKeys
from parley.server.store import ServerStore
from parley.terminal.enroll import enroll
from parley.terminal.peers import PeerBook, with_peer_book
from parley.terminal.store import TerminalStore

PARTIES = {"washington": ("The White House", "America/New_York"),
           "moscow": ("The Kremlin", "Europe/Moscow")}
DEVICE = "hotline"


def create_parties(server_data: Path, parties: dict[str, tuple[str, str]],
                   lines: list[tuple[str, str]]) -> dict[str, str]:
    """Parties and lines on the server; returns a fresh enrollment code per party."""
    admin = ServerStore(server_data / "server.db")
    try:
        for name, (display, tz) in parties.items():
            if admin.principal(name) is None:
                admin.add_principal(name, display, tz, now_ms())
        for a, b in lines:
            admin.add_line(a, b, now_ms())
        return {name: admin.create_enroll_code(name, 10 * 60_000, now_ms())
                for name in parties}
    finally:
        admin.close()


async def enroll_terminal(data: Path, device: str, server_url: str, code: str
                          ) -> DevicePublicKeys:
    store = TerminalStore.init(data, device)
    try:
        return await enroll(store, server_url, code)
    finally:
        store.close()


async def safety_number_seen(data: Path, server_url: str, peer: str) -> str:
    """The safety number this terminal computes for `peer` (its only device)."""
    async def one(book: PeerBook) -> str:
        devices = await book.describe(peer)
        if len(devices) != 1:
            raise LocalError(f"{peer} has {len(devices)} devices", code=ErrorCode.UNKNOWN_DEVICE)
        return str(devices[0]["safety_number"])

    return await with_peer_book(data, one, server_url)


async def cross_verify(dirs: dict[str, Path], server_url: str, a: str, b: str) -> str:
    """Both sides compute the safety number; if equal, each pins the other with it."""
    seen_by_a = await safety_number_seen(dirs[a], server_url, b)
    seen_by_b = await safety_number_seen(dirs[b], server_url, a)
    if seen_by_a != seen_by_b:
        raise LocalError(f"{a} and {b} computed different safety numbers",
                         code=ErrorCode.KEY_CHANGED, hint="the directory was tampered with")
    # Each side types in the number the other side read out.
    await with_peer_book(dirs[a], lambda book: book.verify(b, seen_by_b, now_ms()), server_url)
    await with_peer_book(dirs[b], lambda book: book.verify(a, seen_by_a, now_ms()), server_url)
    return seen_by_a


async def provision_line(server_data: Path, server_url: str, root: Path, *,
                         parties: dict[str, tuple[str, str]] = PARTIES, verify: bool = True,
                         say: Callable[[str], None] = lambda _text: None) -> dict[str, Path]:
    """Two parties, the line between them, one enrolled terminal each, keys verified."""
    names = list(parties)
    codes = create_parties(server_data, parties, [(names[0], names[1])])
    say(f"parties {' and '.join(names)} created, line opened")
    dirs = {}
    for name in names:
        dirs[name] = root / name
        public = await enroll_terminal(dirs[name], DEVICE, server_url, codes[name])
        say(f"{public.device_id} enrolled (code {codes[name]}), fingerprint {public.fingerprint}")
    if verify:
        number = await cross_verify(dirs, server_url, names[0], names[1])
        say(f"safety number, the same on both sides: {number}")
        say("each side verified and pinned the other's keys")
    return dirs
