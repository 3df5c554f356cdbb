"""Trust in a peer device: verified, unverified, or changed.

Pins live in the terminal, never on the server. The server's directory says
which keys a device has *today*; a pin says which keys this terminal's operator
*verified* by comparing the safety number out of band. Envelopes are always
checked against the pinned keys when there are any, so a hostile server that
swaps a key in its directory gains nothing: its forgeries do not verify, and the
swap itself shows up as `Trust.CHANGED`, a loud warning, with calls refused
until the operator verifies again.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from .errors import ErrorCode, RemoteError
from .keys import DevicePublicKeys


class Trust(StrEnum):
    VERIFIED = "verified"  # pinned, and the directory agrees (or is silent)
    UNVERIFIED = "unverified"  # never verified here: directory keys, on trust
    CHANGED = "changed"  # pinned, but the directory now lists other keys


def assess(
    pinned: DevicePublicKeys | None, listed: DevicePublicKeys | None
) -> tuple[Trust, DevicePublicKeys]:
    """Which keys to check a peer's envelopes against, and how far to trust them."""
    if pinned is not None:
        if listed is not None and not pinned.same_keys(listed):
            return Trust.CHANGED, pinned
        return Trust.VERIFIED, pinned
    if listed is not None:
        return Trust.UNVERIFIED, listed
    raise RemoteError(
        "unknown device: neither pinned here nor listed by the server",
        code=ErrorCode.UNKNOWN_DEVICE,
    )


def verify_hint(party: str, *, changed: bool = False) -> str:
    """The operator's next step, in the words every surface uses."""
    first = (
        f"compare the new safety number with {party}'s operator out of band"
        if changed
        else f"compare the safety number with {party}'s operator out of band"
    )
    return (
        f"{first} ('parley keys show {party}'), then run"
        f" 'parley keys verify {party} --safety-number \"<the 60 digits>\"'"
    )


def party_trust(trusts: Iterable[Trust]) -> Trust | None:
    """A party's trust in one word: changed if any device's key changed since it was
    verified, verified if every device is, else unverified; None for no device."""
    seen = set(trusts)
    if not seen:
        return None
    if Trust.CHANGED in seen:
        return Trust.CHANGED
    return Trust.VERIFIED if seen == {Trust.VERIFIED} else Trust.UNVERIFIED


def party_warning(party: str, trust: Trust | None) -> str:
    """What the list of parties says under a party whose key changed ('' otherwise)."""
    if trust is not Trust.CHANGED:
        return ""
    return (f"A key of {party} changed since you verified it: calls to that device are"
            f" refused. Press Safety number and compare the new number with {party}'s"
            " operator out of band before you mark it verified.")
