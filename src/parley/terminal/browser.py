"""Browser media: the person's page does the WebRTC; the terminal keeps the protocol.

How it works
------------
A terminal run with ``--media browser`` has no media stack of its own. Its
`BrowserMedia` engine implements the same seam as robot media
(`media.engine.MediaEngine` / `MediaSession`), but each call's peer connection
lives in the person's web page, reached over the local events WebSocket
(`terminal.control`). The page is a thin view plus WebRTC: it never signs,
seals, verifies or decides. The terminal tells it what to create and checks
what it reports. The messages (mirrored in ``web/protocol.js``)::

    terminal -> page                          page -> terminal
    page.role       {media}                   page.hello        {}
    media.open      {call_id, media, ice,     media.description {call_id, sdp}
                     offer?}                  media.candidate   {call_id, candidate, mid?, mline?}
    media.answer    {call_id, sdp}            media.connected   {call_id, certificates}
    media.remote_candidate                    media.failed      {call_id, reason}
                    {call_id, candidate, ...} media.stats       {call_id, stats}
    media.local     {call_id, audio, video}   media.unprotected {call_id, detail}
    media.keys      {call_id, send?, receive?}
    media.close     {call_id}

A call's media runs like this. `media.open` asks the page for an offer (no
``offer``) or for an answer to ``offer``; the page gets the camera and
microphone, builds an `RTCPeerConnection` with exactly the ICE servers given
(never a public default) and replies with its SDP. The DTLS fingerprint that
the terminal then signs is read *by the terminal* from that SDP, which must
name exactly one. Candidates trickle both ways (`call.ice` between
terminals). When the connection is up, the page reports the certificate the
peer presented in the handshake (from its DTLS transport's remote certificates,
hashed with SubtleCrypto; getStats as a fallback) and the terminal hands it to
`CallBook.media_connected`, exactly as robot media does: a certificate that
is not the one the peer signed hangs up as intercepted. The page attaches
remote audio and video to the screen only once the terminal says the call is
active and verified, so an interceptor's media is never played.

Every frame is sealed and opened with the end-to-end layer (`core.sframe`) in
an encoded transform (``RTCRtpScriptTransform``, its worker ``web/sframe-worker.js``
with ``web/sframe.js``, WebCrypto). `media.keys` gives the page the SFrame base
keys the call book derived for this peer connection, over this local channel
only; the page reports a stream whose frames keep failing the layer with
`media.unprotected`, and the terminal raises the alarm.

Which page: the most recent page that said `page.hello` does the media for new
calls (older tabs are told they are not the media page; the CLI and the demo
follow events without saying hello). With no such page, a call fails at once
with a reason that says to open the UI; if the page holding a call's peer
connection closes or reloads, that call fails -- nothing hangs waiting.

ICE: with ``--ice-host`` the terminal forwards only host candidates on those
addresses (robot media offers only those, too), so a terminal told to use
loopback keeps its browser on loopback.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any

from parley.core import schema
from parley.core.call import MediaKind
from parley.core.errors import ErrorCode, LocalError, RemoteError
from parley.core.safety import check_fingerprint, normalize_fingerprint
from parley.core.sdp import MAX_SDP, dtls_fingerprints
from parley.core.sframe import StreamKeys
from parley.media.engine import LocalDescription, MediaEvents
from parley.media.ice import IceConfig

if TYPE_CHECKING:
    from parley.terminal.control import ControlServer, Page

log = logging.getLogger("parley.browser")

# A person may first have to allow the camera; the call book's own media-setup
# deadline (60 s) is the backstop, this one gives the clearer reason first.
DESCRIBE_TIMEOUT_S = 55.0
MAX_STATS_KEYS = 40
MAX_CERTIFICATES = 4

_CALL_ID = schema.text(32)


def _certificates(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_CERTIFICATES:
        raise RemoteError(f"certificates must be a list of at most {MAX_CERTIFICATES}")
    for cert in value:
        schema.validate(cert, {"algorithm": schema.text(16),
                               "fingerprint": schema.Field(str, max_len=200)},
                        what="media.connected certificate")


def _is_fingerprint(value: str) -> bool:
    try:
        check_fingerprint(value)
    except RemoteError:
        return False
    return True


def _stats(value: Any, depth: int = 0) -> None:
    """A flat report of numbers, with one level of nesting (per kind of media)."""
    if not isinstance(value, dict) or len(value) > MAX_STATS_KEYS:
        raise RemoteError(f"stats must be an object of at most {MAX_STATS_KEYS} entries")
    for key, item in value.items():
        if len(key) > 40:
            raise RemoteError("stats keys are at most 40 characters")
        if isinstance(item, dict) and depth == 0:
            _stats(item, depth + 1)
        elif not (item is None or isinstance(item, int | float | bool)
                  or (isinstance(item, str) and len(item) <= 64)):
            raise RemoteError(f"stats.{key} must be a number, a short string or null")


# What the page may send, checked before anything looks at it.
# Which peer connection of its call a page message is about: the page echoes the number
# its media.open gave (a reconnection opens a new one), so a late word from a peer
# connection already replaced is dropped.
_ATTEMPT = schema.integer(0, 1_000_000, required=False)
PAGE_MESSAGES: dict[str, dict[str, schema.Field]] = {
    "page.hello": {"t": schema.text(16)},
    "media.description": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                          "sdp": schema.text(MAX_SDP)},
    "media.candidate": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                        "candidate": schema.text(1024),  # "" means end of candidates
                        "mid": schema.text(32, required=False),
                        "mline": schema.integer(0, 64, required=False)},
    "media.connected": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                        "certificates": schema.Field(list, check=_certificates)},
    "media.failed": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                     "reason": schema.text(300)},
    "media.stats": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                    "stats": schema.obj(check=_stats)},
    "media.unprotected": {"t": schema.text(32), "call_id": _CALL_ID, "attempt": _ATTEMPT,
                          "detail": schema.text(200)},
}


def host_candidate_allowed(candidate: str, host_addresses: tuple[str, ...] | None) -> bool:
    """Whether to forward a browser's ICE candidate, given the --ice-host list.

    Host candidates (and mDNS names standing for them) must be on a listed
    address; server-reflexive and relay candidates come from the configured
    ICE servers and pass. With no list, everything passes.
    """
    if host_addresses is None or not candidate:
        return True
    fields = candidate.removeprefix("a=").removeprefix("candidate:").split()
    if len(fields) < 8 or fields[6] != "typ":
        return False
    address, kind = fields[4], fields[7]
    if kind != "host":
        return True
    try:
        return str(ip_address(address)) in host_addresses
    except ValueError:
        return False  # an mDNS name: we cannot tell which interface it stands for


class BrowserSession:
    """One call's media, done by one page."""

    def __init__(self, engine: BrowserMedia, call_id: str, media: MediaKind,
                 events: MediaEvents, attempt: int = 0, ice: IceConfig | None = None) -> None:
        self.engine = engine
        self.ice = ice or engine.ice
        self.call_id = call_id
        self.attempt = attempt
        self.media = media
        self.events = events
        self.page: Page | None = None
        self.stats_report: dict[str, Any] = {}
        self.state = "new"  # new -> describing -> described -> connected -> closed
        self._description: asyncio.Future[str] | None = None
        # media.keys given before a page was chosen (_describe) go to it once it is.
        self._keys: list[dict[str, Any]] = []

    # -- MediaSession ------------------------------------------------------------------

    async def create_offer(self) -> LocalDescription:
        return await self._describe(None)

    async def create_answer(self, remote_sdp: str) -> LocalDescription:
        return await self._describe(remote_sdp)

    async def apply_answer(self, sdp: str) -> None:
        self._send({"t": "media.answer", "call_id": self.call_id, "sdp": sdp})

    async def add_ice(self, candidate: str, mid: str | None, mline: int | None) -> None:
        if mid is None and mline is None:
            mline = 0  # a candidate that names no media section: all media is bundled on one
        self._send({"t": "media.remote_candidate", "call_id": self.call_id,
                    "candidate": candidate, "mid": mid, "mline": mline})

    def set_local_media(self, audio: bool, video: bool) -> None:
        self._send({"t": "media.local", "call_id": self.call_id, "audio": audio,
                    "video": video})

    def set_keys(self, send: StreamKeys | None, receive: StreamKeys | None) -> None:
        message: dict[str, Any] = {"t": "media.keys", "call_id": self.call_id,
                                   "attempt": self.attempt}
        if send is not None:
            message["send"] = send.as_json()
        if receive is not None:
            message["receive"] = receive.as_json()
        self._keys = [*self._keys[-3:], message]  # the latest are all a page needs
        self._send(message)

    async def stats(self) -> dict[str, Any]:
        return {**self.stats_report, "state": self.state,
                "page": self.page.number if self.page is not None else None}

    async def close(self) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        if self._description is not None and not self._description.done():
            self._description.set_exception(LocalError("the call ended before its media was"
                                                       " set up", code=ErrorCode.INVALID_STATE))
        self._send({"t": "media.close", "call_id": self.call_id})
        self._keys.clear()
        self.engine.forget(self)

    # -- from the page -------------------------------------------------------------------

    def on_description(self, sdp: str) -> None:
        if self._description is not None and not self._description.done():
            self._description.set_result(sdp)

    def on_candidate(self, candidate: str, mid: str | None, mline: int | None) -> None:
        if self.ice.relay_only and candidate and " typ relay" not in candidate:
            # A line whose media goes through the relay only: the browser was told so; a
            # host or reflexive candidate it offers anyway would tell the peer where we are.
            log.warning("call %s: the page offered a %s candidate on a relay-only line;"
                        " not forwarded", self.call_id, candidate.split(" typ ")[-1][:8])
            return
        if not host_candidate_allowed(candidate, self.engine.ice.host_addresses):
            log.debug("call %s: not forwarding candidate %s", self.call_id, candidate)
            return
        # The call book holds candidates that come before our offer/answer has gone.
        self.events.local_ice(self.call_id, candidate, mid, mline)

    def on_connected(self, certificates: list[dict[str, str]]) -> None:
        if self.state != "described":
            return
        prints = {normalize_fingerprint(c["fingerprint"]) for c in certificates}
        algorithms = {c["algorithm"].lower() for c in certificates}
        if not prints:
            self.fail("the browser's connection came up without a peer certificate")
        elif algorithms != {"sha-256"}:
            self.fail(f"the browser hashed the peer certificate with {sorted(algorithms)},"
                      " not sha-256")
        elif not all(_is_fingerprint(p) for p in prints):
            # A page that cannot write a fingerprint is broken, not intercepted.
            self.fail("the browser reported a malformed certificate fingerprint")
        elif len(prints) > 1:
            self.fail("the browser's connection presented several different peer certificates")
        else:
            self.state = "connected"
            self.events.media_connected(self.call_id, prints.pop())

    def fail(self, reason: str) -> None:
        if self.state == "closed":
            return
        if self._description is not None and not self._description.done():
            self._description.set_exception(LocalError(reason, code=ErrorCode.BAD_CONFIG))
            return
        self.events.media_failed(self.call_id, reason)

    # -- internals -----------------------------------------------------------------------

    async def _describe(self, offer: str | None) -> LocalDescription:
        self.page = self.engine.media_page()
        self.state = "describing"
        self._description = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"t": "media.open", "call_id": self.call_id,
                                   "attempt": self.attempt, "media": str(self.media),
                                   "ice": self.ice.browser_configuration()}
        if offer is not None:
            message["offer"] = offer
        self._send(message)
        for keys in self._keys:  # given before the page was chosen
            self._send(keys)
        try:
            sdp = await asyncio.wait_for(self._description, DESCRIBE_TIMEOUT_S)
        except TimeoutError:
            raise LocalError(
                f"the browser page did not set up the call's media within"
                f" {DESCRIBE_TIMEOUT_S:.0f} s", code=ErrorCode.BAD_CONFIG,
                hint="allow the page to use the camera and microphone") from None
        if self.ice.relay_only:
            sdp = "".join(line for line in sdp.splitlines(keepends=True)
                          if not line.startswith("a=candidate:") or " typ relay" in line)
        prints = dtls_fingerprints(sdp)
        if len(prints) != 1:
            raise LocalError(f"the browser's session description names {len(prints)} sha-256"
                             " DTLS fingerprints; exactly one is needed",
                             code=ErrorCode.INSECURE_MEDIA)
        self.state = "described"
        return LocalDescription(sdp, prints.pop())

    def _send(self, message: dict[str, Any]) -> None:
        if self.page is not None:
            self.page.send(message)


class BrowserMedia:
    """The MediaEngine of a person's terminal: peer connections live in its web page."""

    frame_layer = True  # the page seals and opens every frame (web/sframe.js)

    def __init__(self, ice: IceConfig | None = None) -> None:
        self.ice = ice or IceConfig()
        self.sessions: dict[str, BrowserSession] = {}
        self._attempts: dict[str, int] = {}  # peer connections opened for each call so far
        self._pages: list[Page] = []  # pages that said hello, oldest first

    def attach(self, control: ControlServer) -> None:
        """Take the page's media messages from the terminal's local API server."""
        for kind in PAGE_MESSAGES:
            control.page_handlers[kind] = self._on_page_message
        control.page_closed.append(self._on_page_closed)

    # -- MediaEngine ---------------------------------------------------------------------

    def open(self, call_id: str, media: MediaKind, events: MediaEvents,
             ice: IceConfig | None = None) -> BrowserSession:
        attempt = self._attempts.get(call_id, -1) + 1
        self._attempts[call_id] = attempt
        while len(self._attempts) > 64:  # the calls of a long while; each only while it lasts
            del self._attempts[next(iter(self._attempts))]
        session = BrowserSession(self, call_id, media, events, attempt, ice)
        self.sessions[call_id] = session
        return session

    @property
    def page_open(self) -> bool:
        return bool(self._pages)

    def media_page(self) -> Page:
        if not self._pages:
            raise LocalError(
                "no browser page is open to do this call's media",
                code=ErrorCode.BAD_CONFIG,
                hint="open the UI address this terminal printed (the line that starts with"
                     " 'ui: ') in a browser on this machine, then call again")
        return self._pages[-1]

    def forget(self, session: BrowserSession) -> None:
        if self.sessions.get(session.call_id) is session:
            del self.sessions[session.call_id]

    # -- pages ---------------------------------------------------------------------------

    async def _on_page_message(self, page: Page, data: dict[str, Any]) -> None:
        kind = data["t"]
        schema.validate(data, PAGE_MESSAGES[kind], what=kind)
        if kind == "page.hello":
            self._hello(page)
            return
        session = self.sessions.get(data["call_id"])
        if session is None or session.page is not page:
            log.debug("%r: %s for a call it does not hold", page, kind)
            return
        if data.get("attempt", session.attempt) != session.attempt:
            log.debug("%r: %s for a peer connection already replaced", page, kind)
            return
        if kind == "media.description":
            session.on_description(data["sdp"])
        elif kind == "media.candidate":
            session.on_candidate(data["candidate"], data.get("mid"), data.get("mline"))
        elif kind == "media.connected":
            session.on_connected(data["certificates"])
        elif kind == "media.failed":
            session.fail(f"the browser reported: {data['reason']}")
        elif kind == "media.stats":
            session.stats_report = data["stats"]
        elif kind == "media.unprotected":
            session.events.frames_unprotected(session.call_id, data["detail"])

    def _hello(self, page: Page) -> None:
        if page in self._pages:
            self._pages.remove(page)
        for older in self._pages:
            older.send({"t": "page.role", "media": False})
        self._pages.append(page)
        page.send({"t": "page.role", "media": True})
        log.info("%r is now the page that does this terminal's media", page)

    def _on_page_closed(self, page: Page) -> None:
        if page not in self._pages:
            return
        was_current = self._pages[-1] is page
        self._pages.remove(page)
        if was_current and self._pages:
            self._pages[-1].send({"t": "page.role", "media": True})
        for session in list(self.sessions.values()):
            if session.page is page:
                session.fail("the browser page doing this call's media was closed or reloaded")


__all__ = ["PAGE_MESSAGES", "BrowserMedia", "BrowserSession", "host_candidate_allowed"]
