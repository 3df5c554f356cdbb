"""The call state machine, driven the way the terminal drives it, with no I/O at all.

Two CallBooks talk through real sealed envelopes; `Wire` plays the server and the
media stack's part only as far as the pure core sees them: it carries envelopes
and reports DTLS fingerprints.
"""

from __future__ import annotations

from typing import Any

import pytest

from parley.core.call import (
    CONNECT_TIMEOUT_MS,
    MEDIA_SETUP_TIMEOUT_MS,
    REACH_TIMEOUT_MS,
    RING_TIMEOUT_MS,
    Action,
    Alarm,
    ApplyAnswer,
    CallBook,
    CallChanged,
    CallState,
    EndReason,
    MediaKind,
    SendEnvelope,
    StartMedia,
    StopMedia,
)
from parley.core.encoding import b64d, b64e
from parley.core.envelope import open_envelope, seal_envelope
from parley.core.errors import ErrorCode, LocalError, RemoteError, SecurityAlarm
from parley.core.safety import sas_commitment
from parley.core.trust import Trust
from tests.core.keys_fixture import device

W, M = "washington/desk", "moscow/desk"
NOW = 1_800_000_000_000
FP = {W: "AA:" * 31 + "01", M: "BB:" * 31 + "02", "attacker": "EE:" * 31 + "99"}


def sdp(fingerprint: str, proto: str = "UDP/TLS/RTP/SAVPF") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
            f"m=audio 9 {proto} 111\r\nc=IN IP4 127.0.0.1\r\n"
            f"a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\n")


class Wire:
    """Carries actions between two books: seals, opens, reports media."""

    def __init__(self, *, trust_w: Trust = Trust.VERIFIED, trust_m: Trust = Trust.VERIFIED,
                 require_verified: bool = True) -> None:
        self.books = {W: CallBook(device("w"), W, require_verified=require_verified),
                      M: CallBook(device("m"), M, require_verified=require_verified)}
        self.trust_of = {W: trust_w, M: trust_m}  # how far the other side trusts this device
        self.now = NOW
        self.sent: list[tuple[str, SendEnvelope]] = []
        self.alarms: dict[str, list[Alarm]] = {W: [], M: []}
        self.started: dict[str, list[StartMedia]] = {W: [], M: []}
        self.stopped: dict[str, list[str]] = {W: [], M: []}
        self.answers: list[ApplyAnswer] = []
        self.drop: set[str] = set()  # envelope types the "server" loses
        self.changes: dict[str, list[CallState]] = {W: [], M: []}  # CallChanged, in order

    def other(self, side: str) -> str:
        return M if side == W else W

    def run(self, side: str, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendEnvelope):
                self.sent.append((side, action))
                if action.type in self.drop:
                    continue
                env = seal_envelope(device("w" if side == W else "m"), side, action.to,
                                    action.type, action.payload, self.now, action.envelope_id)
                peer = self.other(side)
                payload = open_envelope(env, device("w" if peer == W else "m"), peer,
                                        self.books[side].me)
                self.run(peer, self.books[peer].receive(self.books[side].me, self.trust_of[side],
                                                        env.type, payload, self.now))
            elif isinstance(action, StartMedia):
                self.started[side].append(action)
                self.run(side, self.books[side].local_description(
                    action.call_id, sdp(FP[side]), FP[side], self.now))
            elif isinstance(action, ApplyAnswer):
                self.answers.append(action)
            elif isinstance(action, StopMedia):
                self.stopped[side].append(action.call_id)
            elif isinstance(action, Alarm):
                self.alarms[side].append(action)
            elif isinstance(action, CallChanged):
                self.changes[side].append(action.call.state)

    def place(self, **kwargs: Any) -> str:
        book = self.books[W]
        call_id, actions = book.place(self.books[M].me, self.trust_of[M], MediaKind.VIDEO,
                                      self.now, **kwargs)
        self.run(W, actions)
        return call_id

    def state(self, side: str, call_id: str) -> tuple[CallState, EndReason | None]:
        info = self.books[side].info(call_id)
        return info.state, info.end_reason

    def connect(self, call_id: str, *, seen_by_w: str = FP[M], seen_by_m: str = FP[W]) -> None:
        self.run(W, self.books[W].media_connected(call_id, seen_by_w, self.now))
        self.run(M, self.books[M].media_connected(call_id, seen_by_m, self.now))


def test_verified_call_from_request_to_hangup() -> None:
    wire = Wire()
    call_id = wire.place()
    assert wire.state(W, call_id)[0] is CallState.RINGBACK
    assert wire.state(M, call_id)[0] is CallState.RINGING
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    assert [s.remote_sdp is not None for s in wire.started[M]] == [True]
    assert wire.state(W, call_id)[0] is CallState.CONNECTING and len(wire.answers) == 1
    wire.connect(call_id)
    w, m = wire.books[W].info(call_id), wire.books[M].info(call_id)
    assert w.state is m.state is CallState.ACTIVE
    assert w.verified and m.verified and w.sas == m.sas and w.sas is not None
    wire.run(W, wire.books[W].hangup(call_id, wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.HUNG_UP)
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.REMOTE_HUNG_UP)
    assert wire.stopped == {W: [call_id], M: [call_id]}


def test_handshake_certificate_not_the_signed_one_hangs_up_as_intercepted() -> None:
    wire = Wire()
    call_id = wire.place()
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    wire.connect(call_id, seen_by_w=FP["attacker"])
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)
    assert wire.alarms[W][0].code is ErrorCode.FINGERPRINT_MISMATCH
    assert FP["attacker"] in wire.alarms[W][0].message
    assert wire.alarms[M], "the other side is told and alarms too"
    assert call_id in wire.stopped[W] and call_id in wire.stopped[M]
    assert not wire.books[W].info(call_id).verified


def test_lower_case_handshake_fingerprint_from_a_browser_matches() -> None:
    wire = Wire()
    call_id = wire.place()
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    wire.connect(call_id, seen_by_w=FP[M].lower())
    assert wire.state(W, call_id)[0] is CallState.ACTIVE


@pytest.mark.parametrize("op,caller_end,callee_end", [
    ("decline", EndReason.DECLINED, EndReason.REJECTED),
    ("cancel", EndReason.HUNG_UP, EndReason.MISSED),
])
def test_decline_and_cancel(op: str, caller_end: EndReason, callee_end: EndReason) -> None:
    wire = Wire()
    call_id = wire.place()
    if op == "decline":
        wire.run(M, wire.books[M].decline(call_id, wire.now))
    else:
        wire.run(W, wire.books[W].hangup(call_id, wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, caller_end)
    assert wire.state(M, call_id) == (CallState.ENDED, callee_end)


def test_busy_callee_refuses_a_second_call() -> None:
    wire = Wire()
    first = wire.place()
    wire.run(M, wire.books[M].accept(first, wire.now))
    # A second caller device: reuse washington's keys under the book of a third device.
    third = CallBook(device("x"), "london/desk")
    call_id, actions = third.place(wire.books[M].me, Trust.VERIFIED, MediaKind.AUDIO, wire.now)
    offer = next(a for a in actions if isinstance(a, StartMedia))
    sent = third.local_description(offer.call_id, sdp(FP[W]), FP[W], wire.now)
    env = next(a for a in sent if isinstance(a, SendEnvelope))
    reply = wire.books[M].receive(third.me, Trust.VERIFIED, env.type, env.payload, wire.now)
    end = next(a for a in reply if isinstance(a, SendEnvelope))
    assert end.type == "call.end" and end.payload["reason"] == "busy"
    third.receive(wire.books[M].me, Trust.VERIFIED, end.type, end.payload, wire.now)
    assert third.info(call_id).end_reason is EndReason.BUSY
    assert wire.state(M, first)[0] is CallState.CONNECTING  # the first call is untouched


def test_no_answer_times_out_on_both_sides() -> None:
    wire = Wire()
    call_id = wire.place()
    deadline = wire.books[W].next_deadline()
    assert deadline is not None and deadline <= NOW + RING_TIMEOUT_MS
    wire.now = NOW + RING_TIMEOUT_MS + 1
    wire.run(W, wire.books[W].handle_timer(wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.NO_ANSWER)
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.MISSED)


def test_unreachable_when_the_server_cannot_deliver_or_nobody_rings() -> None:
    wire = Wire()
    wire.drop = {"call.offer"}
    call_id = wire.place()
    wire.run(W, wire.books[W].delivery_failed(call_id, ErrorCode.RECIPIENT_OFFLINE, wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.UNREACHABLE)
    wire2 = Wire()
    wire2.drop = {"call.offer"}
    call_id = wire2.place()
    wire2.now += REACH_TIMEOUT_MS + 1
    wire2.run(W, wire2.books[W].handle_timer(wire2.now))
    assert wire2.state(W, call_id) == (CallState.ENDED, EndReason.UNREACHABLE)


def test_media_that_never_connects_fails_the_call() -> None:
    wire = Wire()
    call_id = wire.place()
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    wire.now += CONNECT_TIMEOUT_MS + 1
    wire.run(W, wire.books[W].handle_timer(wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.FAILED)
    assert wire.state(M, call_id)[1] is EndReason.FAILED


def test_placing_a_call_to_an_unverified_peer_is_refused_with_the_fix() -> None:
    wire = Wire(trust_m=Trust.UNVERIFIED)
    with pytest.raises(LocalError) as err:
        wire.place()
    assert err.value.code is ErrorCode.NOT_VERIFIED
    assert "parley keys verify moscow" in err.value.hint
    assert "parley keys show moscow" in err.value.hint


def test_changed_key_is_refused_even_without_require_verified() -> None:
    wire = Wire(trust_m=Trust.CHANGED, require_verified=False)
    with pytest.raises(LocalError) as err:
        wire.place()
    assert err.value.code is ErrorCode.KEY_CHANGED


def test_incoming_call_from_unverified_peer_is_refused_and_caller_told() -> None:
    wire = Wire(trust_w=Trust.UNVERIFIED)
    # Washington trusts moscow; moscow never verified washington.
    call_id = wire.place()
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.NOT_VERIFIED)
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.NOT_VERIFIED)
    assert wire.alarms[M][0].code is ErrorCode.NOT_VERIFIED
    assert not wire.started[M], "no media for a refused call"


def test_without_require_verified_unverified_calls_connect_but_are_not_marked_verified() -> None:
    wire = Wire(trust_w=Trust.UNVERIFIED, trust_m=Trust.UNVERIFIED, require_verified=False)
    call_id = wire.place()
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    wire.connect(call_id)
    info = wire.books[W].info(call_id)
    assert info.state is CallState.ACTIVE and not info.verified and info.sas is not None


def _offer_payload(fingerprint_in_sdp: str, signed: str, proto: str = "UDP/TLS/RTP/SAVPF",
                   signer: str = "w") -> dict[str, Any]:
    from parley.core.call import dtls_statement
    from parley.core.encoding import b64e

    return {"call_id": "c-1", "sdp": sdp(fingerprint_in_sdp, proto), "dtls": signed,
            "media": "video", "expires": NOW + REACH_TIMEOUT_MS, "sas_commit": "C" * 43,
            "dtls_sig": b64e(device(signer).sign(dtls_statement("c-1", "caller", W, signed)))}


@pytest.mark.parametrize("payload,code", [
    (_offer_payload(FP["attacker"], FP[W]), ErrorCode.FINGERPRINT_MISMATCH),
    (_offer_payload(FP[W], FP[W], signer="attacker"), ErrorCode.FINGERPRINT_MISMATCH),
    (_offer_payload(FP[W], FP[W], proto="RTP/AVP"), ErrorCode.INSECURE_MEDIA),
])
def test_offers_with_unsigned_or_unencrypted_media_are_refused(payload: dict[str, Any],
                                                               code: ErrorCode) -> None:
    moscow = CallBook(device("m"), M)
    with pytest.raises(SecurityAlarm) as err:
        moscow.receive(device("w").public(W), Trust.VERIFIED, "call.offer", payload, NOW)
    assert err.value.code is code
    assert moscow.calls() == []


def test_tamper_report_naming_our_envelope_ends_the_call() -> None:
    wire = Wire()
    call_id = wire.place()
    offer = next(a for side, a in wire.sent if side == W and a.type == "call.offer")
    report = {"envelope_id": offer.envelope_id, "envelope_type": "call.offer",
              "code": "bad_signature"}
    actions = wire.books[W].tamper_reported(M, report, wire.now, wire.now)
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)
    assert any(isinstance(a, Alarm) for a in actions)
    unknown = wire.books[W].tamper_reported(M, {**report, "envelope_id": "not-ours"}, wire.now,
                                           wire.now)
    assert [type(a) for a in unknown] == [Alarm]
    with pytest.raises(RemoteError):
        wire.books[W].tamper_reported(M, {"envelope_id": 5}, wire.now, wire.now)


def test_a_forgery_tells_the_genuine_device_once_and_ends_calls_with_it() -> None:
    wire = Wire()
    call_id = wire.place()
    book, moscow = wire.books[W], wire.books[M].me
    forged = SecurityAlarm("the signature does not verify", code=ErrorCode.BAD_SIGNATURE)
    actions = book.envelope_tampered(M, "env-1", "call.ice", forged, moscow, wire.now)
    sent = [a for a in actions if isinstance(a, SendEnvelope)]
    assert sent[0].type == "notice.tamper" and sent[0].to is moscow  # the notice comes first
    assert sent[0].payload == {"envelope_id": "env-1", "envelope_type": "call.ice",
                               "code": "bad_signature"}
    assert book.info(call_id).end_reason is EndReason.INTERCEPTED
    # Again within the interval: no second notice (no amplification); with no call left
    # and no pinned key, the alarm stands alone.
    again = book.envelope_tampered(M, "env-2", "call.ice", forged, moscow, wire.now + 1)
    assert [type(a) for a in again] == [Alarm]
    stranger = book.envelope_tampered("london/desk", "env-3", "msg.text", forged, None,
                                      wire.now + 10_000)
    assert [type(a) for a in stranger] == [Alarm]


def test_every_state_change_is_published() -> None:
    wire = Wire()
    call_id = wire.place()
    with pytest.raises(LocalError):
        wire.books[W].accept(call_id, NOW)  # cannot accept our own outgoing call
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    wire.connect(call_id)
    wire.run(M, wire.books[M].hangup(call_id, wire.now))
    # Every state each side passed through was published (this Wire runs actions as they
    # come, depth first, so the order here is not the order a terminal would see).
    states = {CallState.CONNECTING, CallState.ACTIVE, CallState.ENDED}
    assert set(wire.changes[W]) == {CallState.DIALING, CallState.RINGBACK, *states}
    assert set(wire.changes[M]) == {CallState.RINGING, *states}
    assert wire.changes[W][-1] is wire.changes[M][-1] is CallState.ENDED


def test_candidates_found_before_our_offer_follow_it_and_setup_time_is_ours() -> None:
    wire = Wire()
    book = wire.books[W]
    call_id, _ = book.place(wire.books[M].me, Trust.VERIFIED, MediaKind.VIDEO, NOW)
    # The media stack (a browser waiting for camera permission) is slow; the peer's
    # reach timeout must not run meanwhile, and early candidates must wait.
    assert book.local_ice(call_id, "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "0", 0) == []
    assert book.handle_timer(NOW + 30_000) == []
    out = book.local_description(call_id, sdp(FP[W]), FP[W], NOW + 30_000)
    types = [a.type for a in out if isinstance(a, SendEnvelope)]
    assert types == ["call.offer", "call.ice"]
    assert book.next_deadline() == NOW + 30_000 + REACH_TIMEOUT_MS
    # The peer rings for the whole ring time, counted from when it starts ringing.
    ringing = wire.books[M].receive(book.me, Trust.VERIFIED, "call.offer",
                                    next(a.payload for a in out if isinstance(a, SendEnvelope)
                                         and a.type == "call.offer"), NOW + 30_000)
    wire.now = NOW + 30_000
    wire.run(M, ringing)
    assert wire.state(W, call_id)[0] is CallState.RINGBACK
    assert book.next_deadline() == NOW + 30_000 + RING_TIMEOUT_MS
    assert book.handle_timer(NOW + RING_TIMEOUT_MS + 1) == []
    assert wire.state(W, call_id)[0] is CallState.RINGBACK
    other = CallBook(device("x"), "london/desk")
    call2, _ = other.place(wire.books[M].me, Trust.VERIFIED, MediaKind.VIDEO, NOW)
    ended = other.handle_timer(NOW + MEDIA_SETUP_TIMEOUT_MS + 1)
    info = other.info(call2)
    assert info.end_reason is EndReason.FAILED and "media" in (info.alarm or "")
    # The offer never went, so the peer knows no such call: nothing is sent to it.
    assert not [a for a in ended if isinstance(a, SendEnvelope)]
    # Hanging up before the offer went is as quiet; after it, the callee hears "cancelled".
    call3, _ = other.place(wire.books[M].me, Trust.VERIFIED, MediaKind.VIDEO, NOW)
    assert not [a for a in other.hangup(call3, NOW) if isinstance(a, SendEnvelope)]
    call4, _ = other.place(wire.books[M].me, Trust.VERIFIED, MediaKind.VIDEO, NOW)
    other.local_description(call4, sdp(FP[W]), FP[W], NOW)
    told = [a.payload for a in other.hangup(call4, NOW) if isinstance(a, SendEnvelope)]
    assert told == [{"call_id": call4, "reason": "cancelled"}]


def test_an_offer_held_past_its_expiry_rings_nothing_and_opens_no_media() -> None:
    wire = Wire()
    wire.drop = {"call.offer"}  # the server holds it and tells the caller it was delivered
    call_id = wire.place()
    offer = next(a for side, a in wire.sent if a.type == "call.offer")
    assert offer.payload["expires"] == NOW + REACH_TIMEOUT_MS
    # The caller gives up at its reach timeout; its cancel is dropped as well.
    wire.drop.add("call.end")
    wire.now = NOW + REACH_TIMEOUT_MS + 1
    wire.run(W, wire.books[W].handle_timer(wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.UNREACHABLE)
    # Now the held offer is delivered: the callee keeps a record, and nothing else happens.
    callee = wire.books[M]
    actions = callee.receive(wire.books[W].me, Trust.VERIFIED, "call.offer", offer.payload,
                             wire.now)
    assert not [a for a in actions if isinstance(a, SendEnvelope | StartMedia | Alarm)]
    info = callee.info(call_id)
    assert (info.state, info.end_reason) == (CallState.ENDED, EndReason.MISSED)
    assert "after its caller gave up" in (info.alarm or "")
    assert [a.call.state for a in actions if isinstance(a, CallChanged)] == [CallState.ENDED]
    with pytest.raises(LocalError):
        callee.accept(call_id, wire.now)  # nothing to accept
    # One delivered just in time still rings.
    wire2 = Wire()
    wire2.drop = {"call.offer"}
    call2 = wire2.place()
    offer2 = next(a for side, a in wire2.sent if a.type == "call.offer")
    wire2.now = NOW + REACH_TIMEOUT_MS
    wire2.run(M, wire2.books[M].receive(wire2.books[W].me, Trust.VERIFIED, "call.offer",
                                        offer2.payload, wire2.now))
    assert wire2.state(M, call2)[0] is CallState.RINGING


def test_the_callee_shows_no_sas_and_is_not_active_until_the_commitment_is_opened() -> None:
    wire = Wire()
    wire.drop = {"call.confirm"}
    call_id = wire.place()
    offer = next(a for side, a in wire.sent if a.type == "call.offer")
    assert "sas_nonce" not in offer.payload and len(offer.payload["sas_commit"]) == 43
    wire.run(M, wire.books[M].accept(call_id, wire.now))
    answer = next(a for side, a in wire.sent if a.type == "call.answer")
    confirm = next(a for side, a in wire.sent if a.type == "call.confirm")
    assert sas_commitment(call_id, W, b64d(confirm.payload["sas_nonce"])) == \
        offer.payload["sas_commit"]
    assert "sas_nonce" in answer.payload
    wire.connect(call_id)
    assert wire.state(W, call_id)[0] is CallState.ACTIVE and wire.books[W].info(call_id).sas
    callee = wire.books[M].info(call_id)
    assert callee.state is CallState.CONNECTING and callee.sas is None
    # A confirm that opens to another nonce: the callee hangs up, intercepted.
    forged = {**confirm.payload, "sas_nonce": b64e(b"\x07" * 16)}
    wire.run(M, wire.books[M].receive(wire.books[W].me, Trust.VERIFIED, "call.confirm",
                                      forged, wire.now))
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)
    assert wire.alarms[M][-1].code is ErrorCode.COMMITMENT_MISMATCH
    assert wire.alarms[M][-1].message.startswith("interception")
    # The genuine one, delivered: active, with the caller's SAS.
    wire2 = Wire()
    wire2.drop = {"call.confirm"}
    call2 = wire2.place()
    wire2.run(M, wire2.books[M].accept(call2, wire2.now))
    wire2.connect(call2)
    genuine = next(a for side, a in wire2.sent if a.type == "call.confirm")
    wire2.run(M, wire2.books[M].receive(wire2.books[W].me, Trust.VERIFIED, "call.confirm",
                                        genuine.payload, wire2.now))
    w, m = wire2.books[W].info(call2), wire2.books[M].info(call2)
    assert m.state is CallState.ACTIVE and m.sas == w.sas and m.verified


def _old_sas(call_id: str, caller: Any, caller_dtls: str, callee: Any, callee_dtls: str) -> str:
    """What the SAS was before the commitment: no nonces, everything known to an attacker."""
    import hashlib

    from parley.core.encoding import canonical_json

    digest = hashlib.sha256(b"parley-call-sas-v1\x00" + canonical_json(
        [call_id, caller.device_id, caller.fingerprint_bytes.hex(), caller_dtls,
         callee.device_id, callee.fingerprint_bytes.hex(), callee_dtls])).digest()
    return f"{int.from_bytes(digest[:8], 'big') % 1_000_000:06d}"


def test_a_grinding_man_in_the_middle_gets_one_chance_per_call() -> None:
    """Two legs through an attacker who holds keys of its own (nothing is verified).

    The attacker runs the leg to the callee first and learns that leg's SAS; on the
    leg to the caller it answers last, and tries certificates until its answer would
    give the same code. Without the commitment every input is known by then and it
    wins whenever it can afford the tries (shown on the first two digits, where 1,000
    tries win nearly always). With it, the caller's nonce is hidden behind its
    commitment until the answer is taken, only the first answer counts, and the
    attacker wins no more often than chance: one in a hundred for two digits.
    """
    attacker = device("x")
    calls, grind, old_wins, wins = 150, 1_000, 0, 0
    for n in range(calls):
        # Leg 2: the attacker, as washington, calls the real moscow.
        fake_w = CallBook(attacker, W, require_verified=False)
        moscow = CallBook(device("m"), M, require_verified=False)
        cid2, _ = fake_w.place(moscow.me, Trust.UNVERIFIED, MediaKind.VIDEO, NOW)
        offer2 = next(a for a in fake_w.local_description(cid2, sdp(FP["attacker"]),
                                                           FP["attacker"], NOW)
                      if isinstance(a, SendEnvelope))
        moscow.receive(fake_w.me, Trust.UNVERIFIED, "call.offer", offer2.payload, NOW)
        moscow.accept(cid2, NOW)
        answer2 = next(a for a in moscow.local_description(cid2, sdp(FP[M]), FP[M], NOW)
                       if isinstance(a, SendEnvelope) and a.type == "call.answer")
        confirm2 = next(a for a in fake_w.receive(moscow.me, Trust.UNVERIFIED, "call.answer",
                                                   answer2.payload, NOW)
                        if isinstance(a, SendEnvelope) and a.type == "call.confirm")
        moscow.receive(fake_w.me, Trust.UNVERIFIED, "call.confirm", confirm2.payload, NOW)
        moscow.media_connected(cid2, FP["attacker"], NOW)
        target = moscow.info(cid2).sas
        assert target is not None and target == fake_w.info(cid2).sas
        # Leg 1: the real washington calls "moscow", which is the attacker.
        washington = CallBook(device("w"), W, require_verified=False)
        fake_m = CallBook(attacker, M, require_verified=False)
        cid1, _ = washington.place(fake_m.me, Trust.UNVERIFIED, MediaKind.VIDEO, NOW)
        offer1 = next(a for a in washington.local_description(cid1, sdp(FP[W]), FP[W], NOW)
                      if isinstance(a, SendEnvelope))
        # The attacker grinds its certificate against everything it can see.
        chosen = FP["attacker"]
        for i in range(grind):
            candidate = f"{i:04X}"[:2] + ":" + f"{i:04X}"[2:] + ":" + "EE:" * 29 + f"{n % 256:02X}"
            if _old_sas(cid1, washington.me, FP[W], fake_m.me, candidate)[:2] == target[:2]:
                chosen = candidate
                break
        old_wins += _old_sas(cid1, washington.me, FP[W], fake_m.me, chosen)[:2] == target[:2]
        fake_m.receive(washington.me, Trust.UNVERIFIED, "call.offer", offer1.payload, NOW)
        fake_m.accept(cid1, NOW)
        answer1 = next(a for a in fake_m.local_description(cid1, sdp(chosen), chosen, NOW)
                       if isinstance(a, SendEnvelope) and a.type == "call.answer")
        washington.receive(fake_m.me, Trust.UNVERIFIED, "call.answer", answer1.payload, NOW)
        # A second answer, ground afresh, is not taken: the first one stands.
        again = fake_m._calls[cid1]
        again.local_nonce = b"\x09" * 16
        answer_b = next(a for a in fake_m.local_description(cid1, sdp(FP["attacker"]),
                                                             FP["attacker"], NOW)
                        if isinstance(a, SendEnvelope) and a.type == "call.answer")
        assert washington.receive(fake_m.me, Trust.UNVERIFIED, "call.answer",
                                  answer_b.payload, NOW) == []
        washington.media_connected(cid1, chosen, NOW)
        sas1 = washington.info(cid1).sas
        assert sas1 is not None
        wins += sas1[:2] == target[:2]
    assert old_wins >= calls * 0.95, "without the commitment, grinding wins"
    # Chance is 1 in 100 per call (1.5 expected here); 10 or more would take odds of
    # about 1 in 10^5.
    assert wins < 10, f"the attacker matched {wins} of {calls} two-digit codes"


def test_a_tamper_notice_ends_only_calls_that_were_live_when_it_was_sent() -> None:
    wire = Wire()
    report = {"envelope_id": "forged-1", "envelope_type": "call.offer", "code": "bad_signature"}
    sent_ms = NOW
    wire.now = NOW + 5_000
    call_id = wire.place()  # placed after the (held) notice was sent
    actions = wire.books[W].tamper_reported(M, report, sent_ms, wire.now)
    assert [type(a) for a in actions] == [Alarm]
    assert wire.state(W, call_id)[0] is CallState.RINGBACK
    # One sent while this call was live ends it.
    wire.run(W, wire.books[W].tamper_reported(M, report, wire.now, wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)


def test_tampering_ends_calls_only_where_it_touched_call_signaling() -> None:
    wire = Wire()
    call_id = wire.place()
    book, moscow = wire.books[W], wire.books[M].me
    forged = SecurityAlarm("the signature does not verify", code=ErrorCode.BAD_SIGNATURE)
    actions = book.envelope_tampered(M, "env-9", "notice.tamper", forged, moscow, wire.now)
    assert [type(a) for a in actions] == [Alarm]  # and no notice about a notice
    assert wire.state(W, call_id)[0] is CallState.RINGBACK
    book.envelope_tampered(M, "env-10", "call.media", forged, moscow, wire.now)
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.INTERCEPTED)


def test_a_callee_that_answers_a_call_already_given_up_is_told_once() -> None:
    wire = Wire()
    wire.drop = {"call.offer", "call.end"}
    call_id = wire.place()
    offer = next(a for side, a in wire.sent if a.type == "call.offer")
    wire.now = NOW + REACH_TIMEOUT_MS - 1  # it reaches the callee just in time...
    wire.drop = {"call.ringing", "call.end"}  # ...but its ringing, and the cancel, are lost
    wire.run(M, wire.books[M].receive(wire.books[W].me, Trust.VERIFIED, "call.offer",
                                      offer.payload, wire.now))
    wire.now = NOW + REACH_TIMEOUT_MS + 1
    wire.run(W, wire.books[W].handle_timer(wire.now))
    assert wire.state(W, call_id) == (CallState.ENDED, EndReason.UNREACHABLE)
    assert wire.state(M, call_id)[0] is CallState.RINGING
    ringing = next(a for side, a in wire.sent if a.type == "call.ringing")
    wire.drop = set()
    wire.run(W, wire.books[W].receive(wire.books[M].me, Trust.VERIFIED, "call.ringing",
                                      ringing.payload, wire.now))
    assert wire.state(M, call_id) == (CallState.ENDED, EndReason.MISSED)  # it stops ringing
    again = wire.books[W].receive(wire.books[M].me, Trust.VERIFIED, "call.ringing",
                                  ringing.payload, wire.now)
    assert again == []  # told once, no loop
