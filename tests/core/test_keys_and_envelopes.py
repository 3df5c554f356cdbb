from __future__ import annotations

import dataclasses
import json

import pytest

from parley.core.encoding import b64d, b64e
from parley.core.envelope import Envelope, open_envelope, seal_envelope
from parley.core.errors import ErrorCode, LocalError, RemoteError, SecurityAlarm, alarm_title
from parley.core.keys import DeviceKeys, DevicePublicKeys
from parley.core.kinds import KINDS, ends_calls, kind_of
from parley.core.kinds import max_age_ms as kinds_max_age
from parley.core.replay import ReplayGuard
from parley.core.safety import call_sas, normalize_safety_number, safety_number, sas_commitment
from parley.core.trust import Trust, assess, party_trust, party_warning
from tests.core.keys_fixture import device

W, M, X = "washington/desk", "moscow/desk", "moscow/spare"
NOW = 1_800_000_000_000


def pub(name: str, ident: str) -> DevicePublicKeys:
    return device(name).public(ident)


def test_key_file_round_trip_and_public_bundle_validation() -> None:
    keys = device("w")
    again = DeviceKeys.from_private_bytes(keys.to_private_bytes())
    assert again.public(W) == keys.public(W)
    bundle = keys.public(W).to_json()
    assert DevicePublicKeys.from_json(json.loads(json.dumps(bundle))) == keys.public(W)


def test_sealing_key_not_signed_by_signing_key_is_an_alarm() -> None:
    forged = dataclasses.replace(pub("w", W), sign=pub("m", M).sign)
    with pytest.raises(SecurityAlarm) as err:
        DevicePublicKeys.from_json(forged.to_json())
    assert err.value.code is ErrorCode.BAD_SIGNATURE


@pytest.mark.parametrize("bad", [{"id": W}, {"id": "no-slash", "sign": "", "kem": "",
                                              "kem_sig": ""}, "text", {"id": W, "sign": "!!"}])
def test_malformed_public_bundles_are_remote_errors(bad: object) -> None:
    with pytest.raises(RemoteError):
        DevicePublicKeys.from_json(bad)


def test_unreadable_key_file_says_how_to_recover() -> None:
    with pytest.raises(LocalError) as err:
        DeviceKeys.from_private_bytes(b'{"format": "something else"}')
    assert "parley terminal init" in err.value.hint


def test_envelope_round_trip() -> None:
    env = seal_envelope(device("w"), W, pub("m", M), "call.ringing", {"call_id": "c1"}, NOW)
    wire = Envelope.from_json(json.loads(json.dumps(env.to_json())))
    assert open_envelope(wire, device("m"), M, pub("w", W)) == {"call_id": "c1"}
    assert b"call_id" not in wire.ciphertext  # sealed (two bytes would turn up by chance)


def _tampered(env: Envelope, **changes: object) -> Envelope:
    return dataclasses.replace(env, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("change,code", [
    ({"ciphertext": b"x"}, ErrorCode.BAD_SIGNATURE),
    ({"time_ms": NOW + 1}, ErrorCode.BAD_SIGNATURE),
    ({"type": "call.answer"}, ErrorCode.BAD_SIGNATURE),
    ({"id": "another-id"}, ErrorCode.BAD_SIGNATURE),
    ({"recipient": X}, ErrorCode.WRONG_RECIPIENT),
])
def test_any_change_to_an_envelope_is_an_alarm(change: dict[str, object],
                                               code: ErrorCode) -> None:
    env = seal_envelope(device("w"), W, pub("m", M), "call.ringing", {"call_id": "c1"}, NOW)
    with pytest.raises(SecurityAlarm) as err:
        open_envelope(_tampered(env, **change), device("m"), M, pub("w", W))
    assert err.value.code is code


def test_envelope_signed_by_another_key_does_not_verify_against_the_pin() -> None:
    forged = seal_envelope(device("attacker"), W, pub("m", M), "call.ringing",
                           {"call_id": "c1"}, NOW)
    with pytest.raises(SecurityAlarm) as err:
        open_envelope(forged, device("m"), M, pub("w", W))
    assert err.value.code is ErrorCode.BAD_SIGNATURE


def test_envelope_sealed_to_another_device_cannot_be_opened() -> None:
    env = seal_envelope(device("w"), W, pub("x", M), "call.ringing", {"call_id": "c1"}, NOW)
    with pytest.raises(SecurityAlarm) as err:
        open_envelope(env, device("m"), M, pub("w", W))
    assert err.value.code is ErrorCode.DECRYPT_FAILED


@pytest.mark.parametrize("field,value", [("v", 2), ("sig", "short"), ("time", -1),
                                         ("type", "Bad Type"), ("from", "nobody"),
                                         ("extra", 1), ("ct", 5)])
def test_malformed_envelopes_are_rejected_with_the_field_named(field: str,
                                                               value: object) -> None:
    env = seal_envelope(device("w"), W, pub("m", M), "call.ringing", {"call_id": "c1"},
                        NOW).to_json()
    env[field] = value
    with pytest.raises(RemoteError):
        Envelope.from_json(env)


def test_replay_guard_drops_repeats_and_stale_and_future_envelopes() -> None:
    guard = ReplayGuard()
    env = seal_envelope(device("w"), W, pub("m", M), "call.offer", {"x": 1}, NOW)
    guard.check(env, NOW + 10)
    guard.remember(env)
    with pytest.raises(SecurityAlarm) as err:
        guard.check(env, NOW + 20)
    assert err.value.code is ErrorCode.REPLAY
    future = seal_envelope(device("w"), W, pub("m", M), "call.offer", {"x": 1}, NOW + 3_600_000)
    with pytest.raises(SecurityAlarm) as err:
        guard.check(future, NOW)
    assert err.value.code is ErrorCode.STALE
    # A kind with no age limit (stored until read) is accepted however late it comes.
    forever = ReplayGuard(max_age=lambda _type: None)
    late = seal_envelope(device("w"), W, pub("m", M), "msg.text", {"x": 1}, NOW)
    forever.check(late, NOW + 7 * 86_400_000)
    assert forever.remember(late) is None


@pytest.mark.parametrize("kind", sorted(k for k in KINDS if KINDS[k].max_age_ms is not None))
def test_every_kind_is_refused_once_older_than_its_declared_age(kind: str) -> None:
    age = KINDS[kind].max_age_ms
    assert age is not None
    env = seal_envelope(device("w"), W, pub("m", M), kind, {"x": 1}, NOW)
    ReplayGuard().check(env, NOW + age)  # at the limit: still good
    with pytest.raises(SecurityAlarm) as err:
        ReplayGuard().check(env, NOW + age + 1)
    assert err.value.code is ErrorCode.STALE and f"limit {age // 1000} s" in err.value.message
    # Its id is kept for exactly as long as it could be accepted, then forgotten.
    assert ReplayGuard().remember(env) == NOW + age + 60_000


def test_unknown_kinds_are_short_lived_and_known_kinds_say_how_they_travel() -> None:
    assert kind_of("msg.from-the-future") is None
    assert kinds_max_age("msg.from-the-future") == KINDS["call.ice"].max_age_ms
    assert KINDS["call.offer"].max_age_ms < KINDS["call.end"].max_age_ms  # offers expire first
    assert not any(KINDS[k].stored for k in KINDS if k.startswith("call."))
    assert KINDS["notice.tamper"].stored and not KINDS["notice.tamper"].call_signaling
    assert ends_calls("call.answer") and not ends_calls("notice.tamper")
    # Messages are stored, wait a month at most, and touch no call.
    for kind in ("msg.text", "msg.file", "msg.chunk", "msg.receipt", "msg.resend"):
        assert KINDS[kind].stored and KINDS[kind].max_age_ms == 30 * 86_400_000
        assert not ends_calls(kind)
    late = seal_envelope(device("w"), W, pub("m", M), "msg.text", {"x": 1}, NOW)
    ReplayGuard().check(late, NOW + 29 * 86_400_000)


def test_the_replay_table_forgets_each_id_once_it_could_no_longer_be_accepted() -> None:
    guard = ReplayGuard(max_age=lambda type_: 1_000 if type_ == "call.ice" else 100_000)
    short = [seal_envelope(device("w"), W, pub("m", M), "call.ice", {"x": i}, NOW)
             for i in range(3_000)]
    long = seal_envelope(device("w"), W, pub("m", M), "msg.text", {"x": 1}, NOW)
    for env in [*short, long]:
        guard.check(env, NOW)
        guard.remember(env)
    assert len(guard) == 3_001
    probe = seal_envelope(device("w"), W, pub("m", M), "call.ice", {"x": -1}, NOW + 70_000)
    guard.check(probe, NOW + 70_000)  # past the short ids' time: they are gone
    assert len(guard) == 1 and guard.seen(long.id) and not guard.seen(short[0].id)
    with pytest.raises(SecurityAlarm):  # the one still remembered is still caught
        guard.check(long, NOW + 70_000)


def test_safety_number_is_symmetric_60_digits_and_changes_with_any_key() -> None:
    a, b = pub("w", W), pub("m", M)
    number = safety_number(a, b)
    assert number == safety_number(b, a)
    assert len(number.split()) == 12 and all(len(g) == 5 and g.isdigit() for g in number.split())
    assert safety_number(a, pub("x", M)) != number
    assert normalize_safety_number(number.replace(" ", "-")) == number


def test_sas_depends_on_call_fingerprints_identities_and_both_nonces() -> None:
    a, b = pub("w", W), pub("m", M)
    fp1, fp2 = "AB:" * 31 + "CD", "12:" * 31 + "34"
    n1, n2 = b"\x01" * 16, b"\x02" * 16
    sas = call_sas("call-1", a, fp1, n1, b, fp2, n2)
    assert len(sas) == 7 and sas[3] == " "
    assert call_sas("call-1", a, fp1.lower(), n1, b, fp2, n2) == sas  # Chromium's lower case
    assert call_sas("call-2", a, fp1, n1, b, fp2, n2) != sas
    assert call_sas("call-1", a, fp2, n1, b, fp1, n2) != sas
    assert call_sas("call-1", a, fp1, n1, pub("x", M), fp2, n2) != sas
    assert call_sas("call-1", a, fp1, b"\x03" * 16, b, fp2, n2) != sas
    assert call_sas("call-1", a, fp1, n1, b, fp2, b"\x03" * 16) != sas
    # The commitment binds the nonce, the call and the committing device.
    commit = sas_commitment("call-1", W, n1)
    assert commit == sas_commitment("call-1", W, n1) and len(commit) == 43
    assert commit not in {sas_commitment("call-1", W, n2), sas_commitment("call-2", W, n1),
                          sas_commitment("call-1", M, n1)}


def test_trust_assessment() -> None:
    pinned, listed = pub("m", M), pub("m", M)
    assert assess(pinned, listed) == (Trust.VERIFIED, pinned)
    assert assess(pinned, None) == (Trust.VERIFIED, pinned)
    assert assess(None, listed) == (Trust.UNVERIFIED, listed)
    swapped = pub("x", M)
    trust, keys = assess(pinned, swapped)
    assert trust is Trust.CHANGED and keys == pinned  # keep checking against the pin
    with pytest.raises(RemoteError):
        assess(None, None)


def test_b64_helpers_reject_junk() -> None:
    assert b64d(b64e(b"\x00\xff")) == b"\x00\xff"
    for junk in ("*&^", 5):
        with pytest.raises(RemoteError):
            b64d(junk)  # type: ignore[arg-type]


@pytest.mark.parametrize(("trusts", "expected"), [
    ([], None),
    ([Trust.VERIFIED], Trust.VERIFIED),
    ([Trust.VERIFIED, Trust.UNVERIFIED], Trust.UNVERIFIED),
    ([Trust.UNVERIFIED, Trust.CHANGED, Trust.VERIFIED], Trust.CHANGED),
])
def test_a_party_is_as_trusted_as_its_least_trusted_device(trusts: list[Trust],
                                                           expected: Trust | None) -> None:
    assert party_trust(trusts) is expected


def test_only_a_changed_key_puts_a_warning_under_a_party() -> None:
    assert party_warning("moscow", Trust.UNVERIFIED) == ""
    assert party_warning("moscow", None) == ""
    warning = party_warning("moscow", Trust.CHANGED)
    assert warning.startswith("A key of moscow changed since you verified it")
    # It is shown on the page: it names the page's button, not a command to type.
    assert "Press Safety number and compare the new number with moscow's operator" in warning
    assert "parley" not in warning


def test_tampering_with_a_call_is_called_an_interception() -> None:
    for code in (ErrorCode.BAD_SIGNATURE, ErrorCode.DECRYPT_FAILED,
                 ErrorCode.FINGERPRINT_MISMATCH, ErrorCode.INTERCEPTED):
        assert alarm_title(code, about_call=True) == "Call intercepted"
    assert alarm_title(ErrorCode.BAD_SIGNATURE, about_call=False) == "Forged or altered message"
    assert alarm_title(ErrorCode.REPLAY, about_call=True) == "Replayed message"
    assert alarm_title(ErrorCode.SERVER_ERROR, about_call=False) == "Security alarm"
