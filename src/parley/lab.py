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
from parley.core.linetest import TEST_SET_DEVICE
from parley.server.store import open_store
from parley.terminal.enroll import enroll
from parley.terminal.peers import PeerBook, with_peer_book
from parley.terminal.store import TerminalStore

PARTIES = {"washington": ("The White House", "America/New_York"),
           "moscow": ("The Kremlin", "Europe/Moscow")}
DEVICE = "hotline"


def create_parties(server_data: Path, parties: dict[str, tuple[str, str]],
                   lines: list[tuple[str, str]], database: str | None = None
                   ) -> dict[str, str]:
    """Parties and lines on the server; returns a fresh enrollment code per party."""
    admin = open_store(database, server_data)
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
    """The safety number this terminal computes for `peer` ('party/device', or a party's
    only device)."""
    async def one(book: PeerBook) -> str:
        devices = await book.describe(peer.split("/", 1)[0])
        if "/" in peer:
            devices = [d for d in devices if d["device"] == peer]
        if len(devices) != 1:
            raise LocalError(f"{peer} has {len(devices)} devices", code=ErrorCode.UNKNOWN_DEVICE)
        return str(devices[0]["safety_number"])

    return await with_peer_book(data, one, server_url)


async def cross_verify(dirs: dict[str, Path], server_url: str, a: str, b: str, *,
                       ids: dict[str, str] | None = None) -> str:
    """Both sides compute the safety number; if equal, each pins the other with it.

    `a` and `b` name directories in `dirs`; `ids` gives each one's device id where
    its party has more than one device (by default the party is the name).
    """
    ids = ids or {}
    peer_a, peer_b = ids.get(a, a), ids.get(b, b)
    seen_by_a = await safety_number_seen(dirs[a], server_url, peer_b)
    seen_by_b = await safety_number_seen(dirs[b], server_url, peer_a)
    if seen_by_a != seen_by_b:
        raise LocalError(f"{a} and {b} computed different safety numbers",
                         code=ErrorCode.KEY_CHANGED, hint="the directory was tampered with")
    # Each side types in the number the other side read out.
    await with_peer_book(dirs[a], lambda book: book.verify(peer_b, seen_by_b, now_ms()),
                         server_url)
    await with_peer_book(dirs[b], lambda book: book.verify(peer_a, seen_by_a, now_ms()),
                         server_url)
    return seen_by_a


def test_set_dir(root: Path, party: str) -> Path:
    return root / f"{party}-{TEST_SET_DEVICE}"


async def provision_line(server_data: Path, server_url: str, root: Path, *,
                         parties: dict[str, tuple[str, str]] = PARTIES, verify: bool = True,
                         test_sets: bool = False, database: str | None = None,
                         say: Callable[[str], None] = lambda _text: None) -> dict[str, Path]:
    """Two parties, the line between them, one enrolled terminal each, keys verified.

    With `test_sets`, each site also gets its test set (``<party>/testset``, in
    ``<party>-testset``; returned under that name): the two test sets verify
    each other, and each person's terminal verifies both, so that it can check
    the line's test results itself.
    """
    names = list(parties)
    codes = create_parties(server_data, parties, [(names[0], names[1])], database)
    say(f"parties {' and '.join(names)} created, line opened")
    dirs = {}
    for name in names:
        dirs[name] = root / name
        public = await enroll_terminal(dirs[name], DEVICE, server_url, codes[name])
        say(f"{public.device_id} enrolled (code {codes[name]}), fingerprint {public.fingerprint}")
    ids = {name: f"{name}/{DEVICE}" for name in names}
    if test_sets:
        admin = open_store(database, server_data)
        try:
            more = {name: admin.create_enroll_code(name, 10 * 60_000, now_ms())
                    for name in names}
        finally:
            admin.close()
        for name in names:
            key = f"{name}-{TEST_SET_DEVICE}"
            dirs[key] = test_set_dir(root, name)
            ids[key] = f"{name}/{TEST_SET_DEVICE}"
            public = await enroll_terminal(dirs[key], TEST_SET_DEVICE, server_url, more[name])
            say(f"{public.device_id} enrolled as {name}'s test set")
    if verify:
        # With test sets each party has two devices: every check names the device.
        number = await cross_verify(dirs, server_url, names[0], names[1],
                                    ids=ids if test_sets else None)
        say(f"safety number, the same on both sides: {number}")
        say("each side verified and pinned the other's keys")
        if test_sets:
            sets = [f"{name}-{TEST_SET_DEVICE}" for name in names]
            await cross_verify(dirs, server_url, sets[0], sets[1], ids=ids)
            for name in names:
                for test_set in sets:
                    await cross_verify(dirs, server_url, name, test_set, ids=ids)
            say("the test sets verified each other, and each site verified both")
    return dirs
