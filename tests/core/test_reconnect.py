"""Calls that survive a lost media path: the reconnection state machine, no sockets.

Two real CallBooks, their envelopes sealed and opened for real (`Wire` of
test_call_book), with time moved by hand: a loss on either side, a new peer
connection offered inside the call and verified as the first, the same SAS or
a new one said to be new, what a held envelope cannot do, giving up.
"""

from __future__ import annotations

from typing import Any

from parley.core.call import (
    Action,
    AddRemoteIce,
    CallBook,
    CallState,
    EndReason,
    MediaKind,
    SendEnvelope,
    StartMedia,
)
from parley.core.envelope import open_envelope, seal_envelope
from parley.core.trust import Trust
from tests.core.keys_fixture import device
from tests.core.test_call_book import FP, M, W, Wire, sdp


class Reconnecting(Wire):
    """Wire, with each peer connection's generation carried, and envelopes' send times."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fp = dict(FP)  # what each side's media stack presents (and signs)
        self.ice: dict[str, list[AddRemoteIce]] = {W: [], M: []}
        self.held: list[tuple[str, SendEnvelope, int]] = []  # (side, envelope, sent at)
        self.hold: set[str] = set()  # envelope types the "server" holds back
        for book in self.books.values():
            book.reconnect_give_up_ms = 20_000

    def run(self, side: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendEnvelope) and action.type in self.hold:
                self.held.append((side, action, self.now))
            elif isinstance(action, SendEnvelope) and action.type not in self.drop:
                self.sent.append((side, action))
                self.deliver(side, action, self.now)
            elif isinstance(action, StartMedia):
                self.started[side].append(action)
                self.run(side, self.books[side].local_description(
                    action.call_id, sdp(self.fp[side]), self.fp[side], self.now,
                    gen=action.gen))
            elif isinstance(action, AddRemoteIce):
                self.ice[side].append(action)
            else:
                super().run(side, [action])

    def deliver(self, side: str, action: SendEnvelope, sent_ms: int) -> None:
        env = seal_envelope(device("w" if side == W else "m"), side, action.to, action.type,
                            action.payload, sent_ms, action.envelope_id)
        peer = self.other(side)
        payload = open_envelope(env, device("w" if peer == W else "m"), peer,
                                self.books[side].me)
        self.run(peer, self.books[peer].receive(self.books[side].me, self.trust_of[side],
                                                env.type, payload, self.now, sent_ms=sent_ms))

    def release(self) -> None:
        held, self.held = self.held, []
        for side, action, sent_ms in held:
            self.deliver(side, action, sent_ms)

    def active_call(self) -> str:
        call_id = self.place()
        self.run(M, self.books[M].accept(call_id, self.now))
        self.connect(call_id, seen_by_w=self.fp[M], seen_by_m=self.fp[W])
        assert self.state(W, call_id)[0] is self.state(M, call_id)[0] is CallState.ACTIVE
        return call_id

    def tick(self, ms: int) -> None:
        self.now += ms
        for side in (W, M):
            self.run(side, self.books[side].handle_timer(self.now))


def test_a_loss_at_the_callee_brings_a_new_peer_connection_and_the_same_sas() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    sas = wire.books[W].info(call_id).sas
    wire.now += 1000
    wire.run(M, wire.books[M].media_failed(call_id, "no media from the peer for 3 s", wire.now))
    # Both reconnecting; the caller offered generation 1, the callee answered it.
    assert wire.state(M, call_id)[0] is wire.state(W, call_id)[0] is CallState.RECONNECTING
    assert [(s.gen, s.restart, s.remote_sdp is None) for s in wire.started[W]][-1] == \
        (1, True, True)
    assert [(s.gen, s.restart) for s in wire.started[M]][-1] == (1, True)
    kinds = [a.type for _s, a in wire.sent]
    assert kinds[-3:] == ["call.reconnect", "call.reoffer", "call.reanswer"]
    # The new handshake, verified exactly like the first: active again, the same SAS.
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    for side in (W, M):
        info = wire.books[side].info(call_id)
        assert info.state is CallState.ACTIVE and info.verified and info.gen == 1
        assert info.sas == sas and not info.sas_changed and info.reconnecting_since_ms is None


def test_the_new_handshake_is_verified_like_the_first() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    wire.connect(call_id, seen_by_w=FP["attacker"], seen_by_m=wire.fp[W])
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)


def test_a_reconnect_held_back_by_the_server_cannot_tear_a_mended_call_down() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    wire.hold = {"call.reconnect"}
    wire.now += 1000
    wire.run(M, wire.books[M].media_failed(call_id, "no media", wire.now))
    wire.hold = set()
    # Meanwhile the caller lost it too, and the two reconnected without that request.
    wire.now += 500
    wire.run(W, wire.books[W].media_failed(call_id, "no media", wire.now))
    wire.now += 500
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    assert wire.state(W, call_id)[0] is CallState.ACTIVE
    started = len(wire.started[W])
    wire.now += 2000
    wire.release()  # the old request, delivered late: it speaks of a mended loss
    assert wire.state(W, call_id)[0] is CallState.ACTIVE and len(wire.started[W]) == started


def test_another_certificate_is_a_new_sas_said_to_be_new_and_refused_unverified() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    old = wire.books[W].info(call_id).sas
    wire.fp[M] = "CC:" * 31 + "03"  # moscow's new peer connection has another certificate
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    w, m = wire.books[W].info(call_id), wire.books[M].info(call_id)
    assert w.state is CallState.ACTIVE and w.sas == m.sas != old
    assert w.sas_changed and m.sas_changed

    # Not verified: the SAS is all there is, and its nonces are known -- refused.
    wire = Reconnecting(trust_w=Trust.UNVERIFIED, trust_m=Trust.UNVERIFIED,
                        require_verified=False)
    call_id = wire.active_call()
    wire.fp[M] = "CC:" * 31 + "03"
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.FAILED)
    assert "call again" in (wire.books[W].info(call_id).alarm or "")


def test_giving_up_ends_the_call_at_both_sides_as_lost() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    wire.drop = {"call.reoffer"}  # nothing gets through to moscow any more
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    attempts = len(wire.started[W])
    for _ in range(7):  # 17.5 s of the 20 it gives itself
        wire.tick(2_500)
    assert wire.state(W, call_id)[0] is CallState.RECONNECTING
    assert len(wire.started[W]) > attempts  # it kept trying
    assert wire.state(M, call_id)[0] is CallState.ACTIVE  # moscow never lost it
    wire.tick(2_500)
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.CONNECTION_LOST)
    assert "the connection was lost" in (wire.books[W].info(call_id).alarm or "")
    # Moscow, told, ends too, whatever state it was in.
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.CONNECTION_LOST)


def test_a_reconnection_of_a_call_that_ended_here_is_told_it_ended() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    wire.drop = {"call.end"}
    wire.run(M, wire.books[M].hangup(call_id, wire.now))  # its hang-up lost on the way
    wire.drop = set()
    wire.run(W, wire.books[W].media_failed(call_id, "no media", wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.REMOTE_HUNG_UP)


def test_candidates_of_a_replaced_peer_connection_are_dropped() -> None:
    wire = Reconnecting()
    call_id = wire.active_call()
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    assert wire.books[M].info(call_id).gen == 1
    before = len(wire.ice[M])
    old = {"call_id": call_id, "candidate": "candidate:1 1 udp 1 10.0.0.1 9 typ host"}
    wire.run(M, wire.books[M].receive(wire.books[W].me, Trust.VERIFIED, "call.ice", old,
                                      wire.now, sent_ms=wire.now))
    assert len(wire.ice[M]) == before  # generation 0's: not for the new peer connection
    new = {**old, "gen": 1}
    wire.run(M, wire.books[M].receive(wire.books[W].me, Trust.VERIFIED, "call.ice", new,
                                      wire.now, sent_ms=wire.now))
    assert [i.gen for i in wire.ice[M][before:]] == [1]


def test_a_line_test_call_ends_on_a_loss_instead() -> None:
    book = CallBook(device("w"), W, test_set=True)
    call_id, _actions = book.place(device("m").public(M), Trust.VERIFIED, MediaKind.VIDEO, 1,
                                   test_id="t1")
    call = book.get(call_id)
    call.state = CallState.ACTIVE  # as after a verified handshake
    book.media_failed(call_id, "no media", 2)
    assert book.info(call_id).state is CallState.ENDED
    assert book.info(call_id).end_reason is EndReason.FAILED


def test_an_attempt_whose_media_setup_failed_does_not_stop_the_next() -> None:
    """The caller's media stack could not make an attempt's offer (no TURN credentials
    with the server away, say): the next attempt makes a new one, and the call comes back."""

    class Failing(Reconnecting):
        def __init__(self) -> None:
            super().__init__()
            self.fail_gens: set[int] = set()

        def run(self, side: str, actions: list[Action]) -> None:
            for action in actions:
                if isinstance(action, StartMedia) and side == W and action.gen in self.fail_gens:
                    self.started[side].append(action)
                    self.run(side, self.books[side].media_failed(
                        action.call_id, "media setup failed", self.now, gen=action.gen))
                else:
                    super().run(side, [action])

    wire = Failing()
    call_id = wire.active_call()
    wire.fail_gens = {1, 2}
    wire.run(W, wire.books[W].media_failed(call_id, "ice failed", wire.now))
    for _ in range(3):
        wire.tick(2_500)
    gens = [s.gen for s in wire.started[W] if s.restart]
    assert gens[:3] == [1, 2, 3], gens  # each failed attempt was followed by a new one
    wire.connect(call_id, seen_by_w=wire.fp[M], seen_by_m=wire.fp[W])
    assert wire.state(W, call_id)[0] is wire.state(M, call_id)[0] is CallState.ACTIVE
