"""Peers as this terminal sees them: directory listings weighed against local pins.

The directory (fetched from the server) answers "which devices does party X
have, and which are online". The pins (local) answer "which keys did our
operator verify". `PeerBook` combines the two through `core.trust.assess` and
is the one place where a peer is marked verified -- used alike by the running
terminal (UI button), and by `parley keys verify` when no terminal is running.

It is also where a *new device* is noticed. Every listing is compared with the
devices this terminal has seen before (kept in its store); a device a party
gains after the operator verified one of that party's devices raises a
``new_device`` alarm that stays until acknowledged -- a new device of a
verified party is exactly what a leaked enrollment code or a hostile server
would add. And when a party has several devices, the one rung is a verified
one first, then one that is online: a server that hides a verified device's
presence cannot steer a call to a device nobody verified.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from parley.clock import now_ms
from parley.core.bundle import signing_key_text
from parley.core.errors import ErrorCode, LocalError, ParleyError, alarm_title
from parley.core.keys import DevicePublicKeys
from parley.core.record import make_entry
from parley.core.safety import compare_safety_number, safety_number
from parley.core.trust import Trust, assess, verify_hint
from parley.terminal.link import ServerLink
from parley.terminal.store import AlarmRecord, TerminalStore

CACHE_MS = 60_000


@dataclass
class PartyListing:
    devices: dict[str, DevicePublicKeys]
    online: set[str]
    fetched_ms: int


@dataclass
class PeerBook:
    store: TerminalStore
    me: DevicePublicKeys
    link: ServerLink
    on_alarm: Callable[[AlarmRecord], None] | None = None
    # The device name of the sites' test sets (terminal.linetest): never rung for a real
    # call, never sent a person's messages.
    test_set_name: str | None = "testset"
    _parties: dict[str, PartyListing] = field(default_factory=dict)

    async def refresh(self, party: str) -> PartyListing:
        devices, online = await self.link.directory(party)
        listing = PartyListing({d.device_id: d for d in devices}, online, now_ms())
        self._parties[party] = listing
        self._notice_new_devices(party, listing)
        return listing

    def _notice_new_devices(self, party: str, listing: PartyListing) -> None:
        seen = self.store.seen_devices(party)
        new = [d for d in listing.devices.values() if d.device_id not in seen]
        if not new:
            return
        now = now_ms()
        verified = [d for d in seen | set(listing.devices) if self.store.pin(d) is not None]
        for device in new:
            self.store.saw_device(device.device_id, party, now)
            if not verified or self.store.pin(device.device_id) is not None:
                continue
            record = self.store.raise_alarm(
                code=str(ErrorCode.NEW_DEVICE),
                title=alarm_title(ErrorCode.NEW_DEVICE, about_call=False),
                message=f"{party}, whose device {', '.join(sorted(verified))} you verified, has"
                        f" a new device {device.device_id} (fingerprint {device.fingerprint})"
                        " that nobody here has verified",
                hint=f"ask {party}'s operator whether they enrolled it; calls go to the"
                     f" verified device. If it is theirs, compare its safety number"
                     f" ('parley keys show {party}') and verify it; if not, report it",
                call_id=None, subject=device.device_id, now_ms=now)
            if self.on_alarm is not None:
                self.on_alarm(record)

    async def listing(self, party: str, *, fresh: bool = False) -> PartyListing:
        cached = self._parties.get(party)
        if fresh or cached is None or now_ms() - cached.fetched_ms > CACHE_MS:
            return await self.refresh(party)
        return cached

    def pinned_listing(self, party: str) -> PartyListing:
        """What this terminal knows of `party` without the server: the devices it pinned."""
        pins = {keys.device_id: keys for keys, _, _ in self.store.pins() if keys.party == party}
        return PartyListing(pins, set(), 0)

    def cached(self, party: str) -> PartyListing | None:
        """The listing last fetched for `party`, however old (None: never fetched)."""
        return self._parties.get(party)

    def set_online(self, device: str, online: bool) -> None:
        listing = self._parties.get(device.split("/", 1)[0])
        if listing is not None:
            (listing.online.add if online else listing.online.discard)(device)

    async def trust(self, device_id: str, *, fresh: bool = False
                    ) -> tuple[Trust, DevicePublicKeys, DevicePublicKeys | None]:
        """(trust, keys to check against, keys the directory lists now)."""
        party = device_id.split("/", 1)[0]
        listed = (await self.listing(party, fresh=fresh)).devices.get(device_id)
        trust, keys = assess(self.store.pin(device_id), listed)
        return trust, keys, listed

    async def verified_devices(self, parties: list[str], *, test_sets: bool
                               ) -> list[DevicePublicKeys]:
        """Every device of these parties whose keys this terminal verified (their pinned
        keys), but this one; from the pins alone when the server does not answer."""
        out: dict[str, DevicePublicKeys] = {}
        for party in parties:
            try:
                listing = await self.listing(party)
            except ParleyError:
                listing = self.pinned_listing(party)
            for device in sorted(listing.devices):
                if device == self.me.device_id or device in out or (
                        not test_sets and self.is_test_set(device)):
                    continue
                trust, keys, _ = await self.trust(device)
                if trust is Trust.VERIFIED:
                    out[device] = keys
        return list(out.values())

    def is_test_set(self, device_id: str) -> bool:
        return self.test_set_name is not None and device_id.split("/", 1)[-1] == \
            self.test_set_name

    async def resolve(self, target: str) -> DevicePublicKeys:
        """'party' or 'party/device' -> the device to call (a party: never its test set)."""
        party = target.split("/", 1)[0]
        listing = await self.listing(party, fresh=True)
        if "/" in target:
            if target not in listing.devices:
                raise LocalError(f"{party} has no device {target}", code=ErrorCode.UNKNOWN_DEVICE)
            return listing.devices[target]
        if not listing.devices:
            raise LocalError(f"{party} has no enrolled device yet", code=ErrorCode.UNKNOWN_DEVICE,
                             hint=f"ask {party}'s operator to enroll a terminal")

        # Prefer a device we verified, then one that is online (the server says which
        # are online, and must not be able to steer a call to an unverified device).
        def rank(d: DevicePublicKeys) -> tuple[bool, bool, str]:
            return (self.store.pin(d.device_id) is None, d.device_id not in listing.online,
                    d.device_id)

        people = [d for d in listing.devices.values() if not self.is_test_set(d.device_id)]
        if not people:
            raise LocalError(f"{party} has only its test set enrolled",
                             code=ErrorCode.UNKNOWN_DEVICE,
                             hint=f"ask {party}'s operator to enroll a person's terminal")
        return sorted(people, key=rank)[0]

    async def describe(self, party: str) -> list[dict[str, Any]]:
        """What the verification screen and `parley keys show` display."""
        listing = await self.listing(party, fresh=True)
        out = []
        for device in listing.devices.values():
            pinned = self.store.pin(device.device_id)
            trust, _ = assess(pinned, device)
            out.append({
                "device": device.device_id,
                "party": party,
                "fingerprint": device.fingerprint,
                "signing_key": signing_key_text(device.sign),  # as paper names it
                "safety_number": safety_number(self.me, device),
                "trust": str(trust),
                "online": device.device_id in listing.online,
                "verified_fingerprint": pinned.fingerprint if pinned else None,
            })
        return out

    async def verify(self, target: str, typed_number: str | None, now_ms: int
                     ) -> DevicePublicKeys:
        """Pin the keys the directory lists for `target` now, after the operator compared."""
        party = target.split("/", 1)[0]
        listing = await self.listing(party, fresh=True)
        if "/" in target:
            device = listing.devices.get(target)
            if device is None:
                raise LocalError(f"{party} has no device {target}", code=ErrorCode.UNKNOWN_DEVICE)
        elif len(listing.devices) == 1:
            device = next(iter(listing.devices.values()))
        else:
            names = ", ".join(sorted(listing.devices)) or "none"
            raise LocalError(f"{party} has {len(listing.devices)} devices ({names})",
                             code=ErrorCode.UNKNOWN_DEVICE, hint="name one as party/device")
        number = safety_number(self.me, device)
        differ, typo = compare_safety_number(typed_number, number) \
            if typed_number is not None else ([], False)
        if typo:
            # A digit or two mistyped or misheard (see compare_safety_number).
            raise LocalError(
                f"group {differ[0]} of the safety number you entered does not match the one"
                " this terminal computes", code=ErrorCode.SAFETY_NUMBER_TYPO,
                hint=f"check that group with {party}'s operator and type it again; if they"
                     " read exactly what you typed, the keys differ: do not mark it"
                     " verified")
        if differ:
            raise LocalError(
                f"the safety number you entered does not match the one for {device.device_id}",
                code=ErrorCode.KEY_CHANGED,
                hint="do not mark it verified: the keys the server gave us differ from the keys"
                     f" {party}'s operator sees. " + verify_hint(party),
            )
        with self.store.batch():
            self.store.set_pin(device, number, now_ms)
            self.store.append_record(make_entry("verification", self.me.device_id, now_ms,
                                                device=device.device_id,
                                                fingerprint=device.fingerprint))
        return device


T = TypeVar("T")


async def with_peer_book(data: Path, fn: Callable[[PeerBook], Awaitable[T]],
                         server_url: str | None = None) -> T:
    """Run `fn` on the terminal in `data`'s PeerBook over a short, send-only session.

    For commands that run beside (or without) a running terminal: `parley keys`,
    and provisioning. The server is the one the terminal enrolled with, unless given.
    """
    store = TerminalStore(data)
    try:
        keys = store.load_keys()
        url = server_url or store.server_url
        if not url:
            raise LocalError("this terminal is not enrolled", code=ErrorCode.NOT_ENROLLED,
                             hint="run 'parley terminal enroll' first")
        link = ServerLink(url, store.device_id, keys, receive=False)
        try:
            await link.connect_once()
            return await fn(PeerBook(store, keys.public(store.device_id), link))
        finally:
            await link.close()
    finally:
        store.close()
