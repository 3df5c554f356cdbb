"""A hostile server for tests: the real one behind a relay that rewrites what passes.

`hostile` (a fixture) fronts the real server with a `HostileRelay` completely:
the server's public URL is the relay's, as a hostile operator would set it up,
and the terminals enroll, verify and log in through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from parley.clock import now_ms
from parley.core.call import dtls_statement
from parley.core.encoding import b64e
from parley.core.envelope import Envelope, seal_envelope
from parley.core.keys import DeviceKeys
from parley.media.robot import dtls_fingerprint
from parley.media.tracks import SynthAudioTrack, TestPatternTrack
from parley.terminal.app import Terminal
from tests.harness import HostileRelay, LocalLine

W, M = "washington/hotline", "moscow/hotline"


class Hostile:
    def __init__(self, line: LocalLine, relay: HostileRelay, dirs: dict[str, Path]) -> None:
        self.line, self.relay, self.dirs = line, relay, dirs
        self.attacker = DeviceKeys.generate()
        self.peers: list[RTCPeerConnection] = []

    def public(self, device: str) -> Any:
        assert self.line.server is not None
        return self.line.server.store.device(device)  # the server's directory, as the relay has it

    async def attacker_offer(self, claimed_sender: str, call_id: str) -> dict[str, Any]:
        """A genuine offer from the attacker's own aiortc peer, in someone else's name."""
        pc = RTCPeerConnection()  # never started towards anyone: no ICE servers used
        self.peers.append(pc)
        pc.addTrack(SynthAudioTrack())
        pc.addTrack(TestPatternTrack(160, 120))
        await pc.setLocalDescription(await pc.createOffer())
        fingerprint = dtls_fingerprint(pc.getTransceivers()[0].sender.transport)
        return {"call_id": call_id, "sdp": pc.localDescription.sdp, "dtls": fingerprint,
                "media": "video", "dtls_sig": b64e(self.attacker.sign(
                    dtls_statement(call_id, "caller", claimed_sender, fingerprint)))}

    def forge(self, sender: str, recipient: str, type_: str, payload: dict[str, Any],
              envelope_id: str | None = None) -> Envelope:
        """Sealed properly to the recipient (its key is public), signed by the attacker."""
        return seal_envelope(self.attacker, sender, self.public(recipient), type_, payload,
                             now_ms(), envelope_id)

    async def close(self) -> None:
        for pc in self.peers:
            await pc.close()


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[Hostile]:
    relay = HostileRelay()
    await relay.bind()
    line = LocalLine(tmp_path)
    await line.start(public_url=relay.url)
    relay.upstream = line.url
    dirs = await line.provision(via=relay.url)
    h = Hostile(line, relay, dirs)
    try:
        yield h
    finally:
        await h.close()
        await line.stop()
        await relay.stop()


def on_send(type_: str, rewrite: Any, sender: str | None = None) -> Any:
    """A tamper hook that rewrites the envelope of each `send` of one type, on its way up."""

    async def tamper(direction: str, device: str | None,
                     frame: dict[str, Any]) -> dict[str, Any] | None:
        if direction == "up" and frame.get("t") == "send" and frame["env"]["type"] == type_ \
                and sender in (None, device):
            return {**frame, "env": await rewrite(frame["env"])}
        return frame

    return tamper


def alarm_codes(terminal: Terminal) -> list[str]:
    return [a["code"] for a in terminal.alarms]



__all__ = ["Hostile", "M", "W", "alarm_codes", "hostile", "on_send"]
