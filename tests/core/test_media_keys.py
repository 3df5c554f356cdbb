"""The frame layer's keys in the call's envelopes: sent, paired, renewed, refused, erased."""

from __future__ import annotations

import os
from typing import Any

import pytest

from parley.core import sframe
from parley.core.call import Action, CallBook, CallState, MediaKeys, MediaKind, SendEnvelope
from parley.core.errors import ErrorCode, RemoteError
from parley.core.sframe import FrameOpener, FrameSealer, Kind
from parley.core.trust import Trust
from tests.core.keys_fixture import device
from tests.core.test_call_book import FP, M, W, sdp
from tests.core.test_reconnect import Reconnecting


class Keyed(Reconnecting):
    """The wire, keeping each side's MediaKeys in order."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys: dict[str, list[MediaKeys]] = {W: [], M: []}
        self.strip: set[str] = set()  # envelope types whose media key the "peer" leaves out

    def run(self, side: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, MediaKeys):
                self.keys[side].append(action)
            elif isinstance(action, SendEnvelope) and action.type in self.strip:
                payload = {k: v for k, v in action.payload.items()
                           if k not in ("media_key", "media_epoch")}
                super().run(side, [SendEnvelope(action.call_id, action.to, action.type,
                                                payload, action.envelope_id)])
            else:
                super().run(side, [action])

    def sending(self, side: str, gen: int = 0) -> list[sframe.StreamKeys]:
        return [k.send for k in self.keys[side] if k.send is not None and k.gen == gen]

    def receiving(self, side: str, gen: int = 0) -> list[sframe.StreamKeys]:
        return [k.receive for k in self.keys[side] if k.receive is not None and k.gen == gen]


def _frames_pass(send: sframe.StreamKeys, *receive: sframe.StreamKeys) -> bool:
    """Whether a frame sealed under `send` opens at a stack given `receive` in turn
    (two kept per stream, as a FrameOpener does)."""
    sealer, opener = FrameSealer(Kind.AUDIO), FrameOpener(Kind.AUDIO)
    sealer.use(send)
    for keys in receive:
        opener.add(keys)
    try:
        opener.open(sealer.seal(b"\x78" + os.urandom(40)))
    except sframe.SFrameError:
        return False
    return True


def test_each_direction_has_its_own_key_and_only_the_peer_can_open_it() -> None:
    wire = Keyed()
    call_id = wire.active_call()
    offer = next(a for s, a in wire.sent if a.type == "call.offer")
    answer = next(a for s, a in wire.sent if a.type == "call.answer")
    assert len(offer.payload["media_key"]) == len(answer.payload["media_key"]) == 43  # base64url
    assert offer.payload["media_epoch"] == answer.payload["media_epoch"] == 0
    (w_send,), (m_send,) = wire.sending(W), wire.sending(M)
    (w_recv,), (m_recv,) = wire.receiving(W), wire.receiving(M)
    assert w_send == m_recv and m_send == w_recv and w_send != m_send
    assert _frames_pass(w_send, m_recv) and _frames_pass(m_send, w_recv)
    assert not _frames_pass(w_send, w_recv)  # a frame of ours reflected back is refused
    for side in (W, M):
        info = wire.books[side].info(call_id)
        assert info.verified and info.media_protection == "sframe+dtls-srtp"
    assert repr(w_send) == "StreamKeys(epoch=0)"  # never the key itself in a log


def test_a_peer_that_sends_no_key_raises_the_alarm_and_the_call_is_not_verified() -> None:
    wire = Keyed()
    wire.strip = {"call.answer"}
    call_id = wire.active_call()
    (alarm,) = [a for a in wire.alarms[W] if a.code is ErrorCode.MEDIA_UNPROTECTED]
    assert "sent no media key" in alarm.message and "not protected end to end" in alarm.message
    info = wire.books[W].info(call_id)
    assert info.state is CallState.ACTIVE and not info.verified
    assert info.media_protection == "dtls-srtp"
    assert wire.receiving(W) == []
    # The other way round, the callee is told when the offer comes without one.
    wire2 = Keyed()
    wire2.strip = {"call.offer"}
    call_id2 = wire2.active_call()
    assert [a.code for a in wire2.alarms[M]] == [ErrorCode.MEDIA_UNPROTECTED]
    assert not wire2.books[M].info(call_id2).verified


@pytest.mark.parametrize("change", [{"media_key": "AAAA"}, {"media_key": "!" * 44},
                                    {"media_epoch": None}])
def test_a_key_that_is_not_32_bytes_with_its_epoch_is_refused(change: dict[str, Any]) -> None:
    wire = Keyed()
    wire.place()
    offer = next(a for s, a in wire.sent if a.type == "call.offer").payload
    bad = {k: v for k, v in {**offer, **change}.items() if v is not None}
    bad["call_id"] = "y" * 16  # a new call: the first was already taken
    with pytest.raises(RemoteError):
        wire.books[M].receive(wire.books[W].me, wire.trust_of[W], "call.offer", bad, wire.now)
    assert "y" * 16 not in {c.call_id for c in wire.books[M].calls()}


def _opens(wire: Keyed, sender: str) -> bool:
    """Whether the peer's media stack, holding every key it was given in turn, opens a
    frame sealed under the sender's key now."""
    return _frames_pass(wire.sending(sender)[-1], *wire.receiving(wire.other(sender)))


def test_keys_are_renewed_on_a_schedule_and_used_once_the_peer_has_them() -> None:
    wire = Keyed()
    for book in wire.books.values():
        book.rekey_ms = 60_000
    call_id = wire.active_call()
    # The server loses every call.rekeyed for three rounds: each side sends its one
    # pending key again, never a newer one, so the key in use is never pushed out.
    wire.drop = {"call.rekeyed"}
    for _ in range(3):
        wire.tick(60_000)
        assert _opens(wire, W) and _opens(wire, M)
    rekeys = [a for s, a in wire.sent if a.type == "call.rekey"]
    assert len(rekeys) == 6 and {a.payload["media_epoch"] for a in rekeys} == {1}
    assert len(wire.sending(W)) == len(wire.sending(M)) == 1  # not acknowledged: not used
    assert [k.epoch for k in wire.receiving(M)] == [0, 1]
    wire.drop = set()
    wire.tick(60_000)  # sent again, acknowledged this time: now sealed under it
    assert [k.epoch for k in wire.sending(W)] == [0, 1] and _opens(wire, W) and _opens(wire, M)
    wire.tick(60_000)
    sends, recvs = wire.sending(W), wire.receiving(M)
    assert [k.epoch for k in sends] == [0, 1, 2] and [k.epoch for k in recvs] == [0, 1, 2]
    assert sends[-1] == recvs[-1] and _opens(wire, W)
    assert wire.books[W].info(call_id).verified
    # A re-key for an older epoch changes nothing.
    old = next(a for s, a in wire.sent if a.type == "call.rekey" and s == W)
    before = len(wire.keys[M])
    assert wire.books[M].receive(wire.books[W].me, wire.trust_of[W], "call.rekey",
                                 old.payload, wire.now) == []
    assert len(wire.keys[M]) == before


def test_a_reconnection_after_re_keys_the_peer_installed_takes_a_later_epoch() -> None:
    wire = Keyed()
    for book in wire.books.values():
        book.rekey_ms = 60_000
    call_id = wire.active_call()
    wire.drop = {"call.rekeyed"}
    wire.tick(60_000)  # each side's epoch 1 installed by the peer, never acknowledged
    wire.drop = set()
    wire.run(M, wire.books[M].media_failed(call_id, "no media for 3 s", wire.now))
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    for side in (W, M):
        assert wire.state(side, call_id)[0] is CallState.ACTIVE
        (keys,) = wire.sending(side, gen=1)
        assert keys.epoch == 2  # above the re-key the peer already had
        assert wire.receiving(wire.other(side), gen=1) == [keys]


def test_a_reconnection_brings_new_keys_with_later_epochs() -> None:
    wire = Keyed()
    call_id = wire.active_call()
    wire.now += 1000
    wire.run(M, wire.books[M].media_failed(call_id, "no media for 3 s", wire.now))
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    (w1,), (m1,) = wire.sending(W, gen=1), wire.sending(M, gen=1)
    assert w1.epoch == m1.epoch == 1
    assert wire.receiving(M, gen=1) == [w1] and wire.receiving(W, gen=1) == [m1]
    assert w1 != wire.sending(W)[0]
    # A re-offer whose epoch does not move on is refused.
    reoffer = [a for s, a in wire.sent if a.type == "call.reoffer"][-1].payload
    stale = {**reoffer, "gen": 2, "media_epoch": 1}
    with pytest.raises(RemoteError):
        wire.books[M].receive(wire.books[W].me, wire.trust_of[W], "call.reoffer", stale,
                              wire.now)


def test_the_media_stack_can_raise_the_alarm_and_the_secrets_go_with_the_call() -> None:
    wire = Keyed()
    call_id = wire.active_call()
    wire.run(W, wire.books[W].frames_unprotected(call_id, "25 audio frames: auth", wire.now))
    wire.run(W, wire.books[W].frames_unprotected(call_id, "again", wire.now))
    alarms = [a for a in wire.alarms[W] if a.code is ErrorCode.MEDIA_UNPROTECTED]
    assert len(alarms) == 1 and "were dropped (25 audio frames: auth)" in alarms[0].message
    assert not wire.books[W].info(call_id).verified
    wire.run(W, wire.books[W].hangup(call_id, wire.now))
    call = wire.books[W].get(call_id)
    assert call.rekey_pending is None and call.peer_secret is None and call.rekey_ms is None


def test_a_book_without_the_layer_sends_no_key_and_never_shows_verified() -> None:
    book = CallBook(device("w"), W, frame_layer=False)
    call_id, _ = book.place(device("m").public(M), Trust.VERIFIED, MediaKind.VIDEO, 0)
    actions = book.local_description(call_id, sdp(FP[W]), FP[W], 1)
    offer = next(a for a in actions if isinstance(a, SendEnvelope))
    assert "media_key" not in offer.payload
    assert not any(isinstance(a, MediaKeys) for a in actions)
    assert book.info(call_id).media_protection == "dtls-srtp"

