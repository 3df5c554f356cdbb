"""The seam between a terminal's calls and whatever does the media.

A terminal's call logic (`core.call.CallBook`) asks for an offer or an answer and
is told when DTLS is up; it does not care whether the peer connection lives in
aiortc inside this process (`robot.RobotMedia`) or in the person's browser
(the web UI's bridge). Both implement these protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from parley.core.call import MediaKind
from parley.core.sframe import StreamKeys
from parley.media.ice import IceConfig


@dataclass(frozen=True)
class LocalDescription:
    sdp: str
    dtls: str  # sha-256 fingerprint of our own DTLS certificate, "AB:CD:..."


class MediaEvents(Protocol):
    """What a media session reports back to the terminal."""

    def media_connected(self, call_id: str, handshake_dtls: str) -> None:
        """DTLS is up; `handshake_dtls` hashes the certificate the peer presented."""

    def media_failed(self, call_id: str, reason: str) -> None: ...

    def frames_unprotected(self, call_id: str, detail: str) -> None:
        """The peer's frames keep failing the end-to-end layer (core.sframe): dropped."""

    def local_ice(self, call_id: str, candidate: str, mid: str | None,
                  mline: int | None) -> None: ...


class MediaSession(Protocol):
    async def create_offer(self) -> LocalDescription: ...

    async def create_answer(self, remote_sdp: str) -> LocalDescription: ...

    async def apply_answer(self, sdp: str) -> None: ...

    async def add_ice(self, candidate: str, mid: str | None, mline: int | None) -> None: ...

    def set_local_media(self, audio: bool, video: bool) -> None: ...

    def set_keys(self, send: StreamKeys | None, receive: StreamKeys | None) -> None:
        """Seal what we send under `send` from now on; open what comes under `receive` too."""

    async def stats(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class MediaEngine(Protocol):
    frame_layer: bool  # its sessions seal and open every frame (core.sframe)

    @property
    def ice(self) -> IceConfig:
        """Its own ICE settings: the servers and host addresses it was configured with."""

    def open(self, call_id: str, media: MediaKind, events: MediaEvents,
             ice: IceConfig | None = None) -> MediaSession:
        """A session for one peer connection of a call; `ice`, when given, instead of
        the engine's own ICE settings (the TURN servers issued for this call added)."""
