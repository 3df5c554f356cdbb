"""The line server's decisions, driven without a socket: the relay and the admission.

The store is the real SQLite one in a temporary directory; each connection is a
`Wire`, which keeps what the relay asked it to write and whether it was closed.
Time is handed in, so timeouts and token buckets are exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from parley.core import wire
from parley.core.encoding import b64e
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys
from parley.core.relay.admission import Admission
from parley.core.relay.limits import BAD_FRAME_BURST, Limits
from parley.core.relay.relay import Relay, Session
from parley.server.store import ServerStore

NOW = 1_800_000_000_000
ORIGIN = "http://127.0.0.1:8800"


class Wire:
    """One connection's far end: the frames the relay wrote to it, and how it closed."""

    def __init__(self, limit: int = 10_000) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None
        self._limit = limit

    def put(self, frame: str) -> None:
        assert "\n" not in frame
        self.frames.append(json.loads(frame))

    @property
    def full(self) -> bool:
        return len(self.frames) >= self._limit

    def close(self, code: int, reason: str) -> None:
        assert self.closed is None, "closed twice"
        self.closed = (code, reason)

    def take(self) -> list[dict[str, Any]]:
        out, self.frames = self.frames, []
        return out


class Line:
    """A store with two parties on a line and two devices each, and a relay over it."""

    def __init__(self, root: Path, limits: Limits | None = None) -> None:
        self.store = ServerStore(root / "server.db")
        self.keys: dict[str, DeviceKeys] = {}
        for party in ("washington", "moscow", "london"):
            self.store.add_principal(party, party, "UTC", NOW)
        self.store.add_line("washington", "moscow", NOW)
        for party in ("washington", "moscow", "london"):
            for name in ("desk", "robot"):
                self.enroll(party, name)
        self.limits = limits or Limits()
        self.relay = Relay(self.store, self.limits, ORIGIN, NOW)
        self.now = NOW

    def enroll(self, party: str, name: str) -> str:
        keys = DeviceKeys.generate()
        public = keys.public("x/x").to_json()
        code = self.store.create_enroll_code(party, 60_000, NOW)
        device = self.store.enroll(code, name, {k: public[k] for k in ("sign", "kem", "kem_sig")},
                                   NOW).device_id
        self.keys[device] = keys
        return device

    def connect(self, *, batched: bool = True, source: str = "10.0.0.1") -> tuple[Session, Wire]:
        port = Wire()
        session = self.relay.connect(port, source, self.now, batched=batched)
        challenge = port.take()
        assert challenge[0]["t"] == "challenge" and challenge[0]["server"] == ORIGIN
        return session, port

    def login(self, device: str, **hello: Any) -> tuple[Session, Wire]:
        session, port = self.connect()
        sig = self.keys[device].sign(wire.auth_statement(session.nonce, device, ORIGIN))
        self.send(session, {"t": "hello", "device": device, "sig": b64e(sig), **hello})
        assert port.frames.pop(0)["t"] == "welcome", port.frames
        return session, port

    def send(self, session: Session, *frames: dict[str, Any] | str) -> None:
        self.relay.receive(session, "\n".join(f if isinstance(f, str) else json.dumps(f)
                                              for f in frames), self.now)
        self.relay.flush()  # as the server does before its turn's frames leave

    def envelope(self, sender: str, recipient: str, size: int = 10, n: int = 0
                 ) -> dict[str, Any]:
        return seal_envelope(self.keys[sender], sender, self.keys[recipient].public(recipient),
                             "msg.text", {"n": n, "text": "x" * size}, self.now).to_json()

    def commit(self) -> None:
        self.relay.flush()
        self.store.commit_group()


W, W2, M, M2, L = ("washington/desk", "washington/robot", "moscow/desk", "moscow/robot",
                   "london/desk")


@pytest.fixture
def line(tmp_path: Path) -> Line:
    return Line(tmp_path)


def test_a_login_is_answered_and_a_bad_frame_before_it_closes_the_connection(line: Line) -> None:
    session, _port = line.login(W)
    assert session.device == W and session in line.relay.sessions
    # Before login: one error, then closed -- and nothing after it in a batch is answered.
    other, port2 = line.connect()
    line.send(other, {"t": "ping", "ref": "a"}, {"t": "ping", "ref": "b"})
    assert [f["code"] for f in port2.frames] == ["not_authenticated"]
    assert port2.closed == (wire.CloseCode.NOT_LOGGED_IN, "not logged in")
    assert other.closed and line.relay.counters.closed_before_login == 1
    # A hello that does not verify: refused, closed with the login code.
    third, port3 = line.connect()
    sig = DeviceKeys.generate().sign(wire.auth_statement(third.nonce, W, ORIGIN))
    line.send(third, {"t": "hello", "device": W, "sig": b64e(sig)})
    assert port3.frames[0]["code"] == "auth_failed"
    assert port3.closed is not None and port3.closed[0] == wire.CloseCode.LOGIN_REFUSED


def test_a_login_not_made_in_time_is_closed_by_the_tick(line: Line) -> None:
    _early, early_port = line.connect()
    line.now += 6_000
    late, late_port = line.connect()
    line.now = NOW + int(line.limits.login_timeout * 1000) + 1
    line.relay.tick(line.now)
    assert early_port.closed is not None and early_port.closed[0] == wire.CloseCode.LOGIN_TIMEOUT
    assert early_port.frames[-1]["code"] == "login_timeout"
    assert late_port.closed is None  # its own ten seconds are not up
    sig = line.keys[W].sign(wire.auth_statement(late.nonce, W, ORIGIN))
    line.send(late, {"t": "hello", "device": W, "sig": b64e(sig)})
    line.now += 20_000
    line.relay.tick(line.now)
    assert late_port.closed is None  # logged in: no timeout applies


def test_the_rate_limit_is_per_device_whichever_connection_frames_come_on(
        tmp_path: Path) -> None:
    line = Line(tmp_path, Limits(rate_limit=50))
    sessions = [line.login(W) for _ in range(4)]
    for session, _port in sessions:
        line.send(session, *({"t": "ping", "ref": f"p{n}"} for n in range(60)))
    replies = [f for _session, port in sessions for f in port.take()]
    pongs = [f for f in replies if f["t"] == "pong"]
    refused = [f for f in replies if f.get("code") == "rate_limited"]
    # One burst (twice the rate) for the device, not one per connection (4 x 100).
    assert len(pongs) == 2 * 50 and len(refused) == 4 * 60 - 100
    assert all(f.get("ref") for f in refused), "every refusal names the frame it refuses"
    # Another device is not slowed by it.
    other, port = line.login(W2)
    line.send(other, {"t": "ping", "ref": "x"})
    assert port.take()[0]["t"] == "pong"
    # Logging out and in again gives no fresh burst; time does.
    for session, _port in sessions:
        line.relay.disconnect(session)
    again, port = line.login(W)
    line.send(again, {"t": "ping", "ref": "y"})
    assert port.take()[0]["code"] == "rate_limited"
    line.now += 1_000
    line.send(again, *({"t": "ping", "ref": f"q{n}"} for n in range(50)))
    assert [f["t"] for f in port.take()] == ["pong"] * 50


def test_malformed_frames_spend_a_budget_then_the_connection_is_closed(line: Line) -> None:
    session, port = line.login(W)
    line.send(session, *(["{junk"] * BAD_FRAME_BURST))
    assert port.closed is None and len(port.frames) == BAD_FRAME_BURST
    line.send(session, "{junk", {"t": "ping", "ref": "after"})
    assert port.closed == (wire.CloseCode.BAD_FRAMES, "too many bad frames")
    assert port.frames[-1]["code"] == "bad_frames"
    assert not any(f.get("ref") == "after" for f in port.frames)
    # Refusals that are not the client's fault (no line, recipient offline) cost nothing.
    other, port2 = line.login(W2)
    for _ in range(BAD_FRAME_BURST + 5):
        line.send(other, {"t": "send", "env": line.envelope(W2, L), "ephemeral": True})
    assert port2.closed is None and {f["code"] for f in port2.frames} == {"no_line"}


def test_the_mailbox_quota_refuses_with_quota_exceeded_and_frees_as_acks_come(
        tmp_path: Path) -> None:
    line = Line(tmp_path, Limits(mailbox_envelopes=5, mailbox_mib=1.0, sender_envelopes=8,
                                 sender_share=1.0))
    sender, port = line.login(W)
    ids = []
    for n in range(7):
        env = line.envelope(W, M, n=n)
        ids.append(env["id"])
        line.send(sender, {"t": "send", "env": env, "ref": f"s{n}"})
    replies = port.take()
    assert [r["t"] for r in replies] == ["sent"] * 5 + ["error"] * 2
    refusal = replies[5]
    assert refusal["code"] == "quota_exceeded" and refusal["id"] == ids[5]
    assert refusal["ref"] == "s5" and "moscow/desk's mailbox" in refusal["message"]
    assert "nothing was lost" in refusal["hint"]
    line.commit()
    assert len(line.store.pending(M, 0, 100)) == 5 == line.relay.quota.waiting()[0]
    # One sent again (its "sent" was lost) is stored already: told so, full or not.
    line.send(sender, {"t": "send", "env": line.envelope(W, M, n=0) | {"id": ids[0]},
                       "ref": "again"})
    assert port.take()[-1] == {"t": "sent", "id": ids[0], "status": "stored", "ref": "again"}
    # Bytes count too: one large envelope does not fit beside the others.
    big = line.envelope(W, M2, size=150_000)
    for n in range(7):
        line.send(sender, {"t": "send", "env": {**big, "id": f"big{n}"}, "ref": f"b{n}"})
    codes = [r.get("code") for r in port.take()]
    assert codes[:3] == [None, None, None] and codes[3] == "quota_exceeded", codes
    # The sender's own share: 8 waiting in all (5 for moscow/desk, 3 for moscow/robot).
    line.send(sender, {"t": "send", "env": line.envelope(W, L), "ref": "l"})
    line.send(sender, {"t": "send", "env": line.envelope(W, W2), "ref": "own"})
    refused = port.take()[-1]
    assert refused["code"] == "quota_exceeded" and "you already have 8 envelopes" in \
        refused["message"]
    # The recipient reads and acknowledges: room again.
    reader, rport = line.login(M)
    delivered = [f["env"]["id"] for f in rport.take()]
    assert delivered == ids[:5]
    line.send(reader, *({"t": "ack", "id": i} for i in delivered))
    # One confirmation for the acks of that message, once they are in the store's group.
    assert rport.take() == [{"t": "acked", "ids": delivered}]
    line.send(sender, {"t": "send", "env": line.envelope(W, M, n=9), "ref": "again"})
    assert port.take()[-1]["t"] == "sent"
    line.commit()
    # A restarted relay counts what waits from the store.
    fresh = Relay(line.store, line.limits, ORIGIN, line.now)
    assert fresh.quota.waiting() == line.relay.quota.waiting()


def test_a_mailbox_arrives_in_a_window_topped_up_by_acks_and_in_order(tmp_path: Path) -> None:
    line = Line(tmp_path, Limits(mailbox_window=4))
    sender, sport = line.login(W)
    stored = [line.envelope(W, M, n=n) for n in range(10)]
    line.send(sender, *({"t": "send", "env": env} for env in stored))
    line.commit()
    reader, port = line.login(M)
    first = [f["env"]["id"] for f in port.take()]
    assert first == [e["id"] for e in stored[:4]]
    # New ones wait behind the backlog, in order, not ahead of it.
    late = line.envelope(W, M, n=99)
    line.send(sender, {"t": "send", "env": late})
    line.commit()
    assert port.take() == [] and sport.take()[-1]["status"] == "stored"
    got = list(first)
    while len(got) < 11:
        line.send(reader, {"t": "ack", "id": got[-4 if len(got) >= 4 else 0]})
        line.send(reader, *({"t": "ack", "id": i} for i in got))
        line.commit()
        frames = port.take()
        assert any(f["t"] == "acked" for f in frames), "acks are confirmed"
        more = [f["env"]["id"] for f in frames if f["t"] == "deliver"]
        assert more, "acks made room"
        got += more
    assert got == [e["id"] for e in [*stored, late]], "each once, in the order stored"
    line.send(reader, *({"t": "ack", "id": i} for i in got[-4:]))
    # With nothing waiting, new ones go at once.
    now = line.envelope(W, M, n=100)
    line.send(sender, {"t": "send", "env": now})
    assert [f["env"]["id"] for f in port.take() if f["t"] == "deliver"] == [now["id"]]
    assert sport.take()[-1]["status"] == "delivered"


def test_revoking_or_replacing_a_device_closes_its_sessions_and_tells_its_peers(
        line: Line) -> None:
    _target, tport = line.login(M)
    watcher, wport = line.login(W)
    line.send(watcher, {"t": "send", "env": line.envelope(W, M), "ephemeral": True})
    assert [f["t"] for f in tport.take()] == ["presence", "deliver"]
    wport.take()
    line.store.revoke_device(M, line.now, "lost")
    line.relay.directory_changed()
    assert tport.closed is not None and tport.closed[0] == wire.CloseCode.DEVICE_REVOKED
    assert tport.frames[-1]["code"] == "device_revoked"
    frames = wport.take()
    assert {"t": "roster", "party": "moscow"} in frames
    assert {"t": "presence", "device": M, "online": False} in frames
    # Nothing is routed to it any more, and it cannot log in.
    line.send(watcher, {"t": "send", "env": line.envelope(W, M), "ephemeral": True})
    assert wport.take()[-1]["code"] == "unknown_device"
    session, port = line.connect()
    sig = line.keys[M].sign(wire.auth_statement(session.nonce, M, ORIGIN))
    line.send(session, {"t": "hello", "device": M, "sig": b64e(sig)})
    assert port.frames[0]["code"] == "device_revoked"
    # A directory listing no longer names it.
    line.send(watcher, {"t": "directory", "party": "moscow", "ref": "d"})
    listing = wport.take()[-1]
    assert [d["id"] for d in listing["devices"]] == [M2]


def test_a_device_holds_a_bounded_number_of_sessions_the_oldest_gives_way(tmp_path: Path
                                                                          ) -> None:
    line = Line(tmp_path, Limits(max_sessions_per_device=2))
    first, p1 = line.login(W)
    _second, p2 = line.login(W)
    _third, p3 = line.login(W)
    assert p1.closed is not None and p1.closed[0] == wire.CloseCode.REPLACED
    assert p2.closed is None and p3.closed is None
    assert first not in line.relay.sessions and len(line.relay.online[W]) == 2


def test_admission_pushes_out_the_oldest_unauthenticated_from_the_same_address() -> None:
    admission: Admission[str] = Admission(Limits(max_unauthenticated_per_source=3))
    for n in range(3):
        assert admission.open(f"a{n}", "10.0.0.9").admitted
    verdict = admission.open("a3", "10.0.0.9")
    assert verdict.admitted and verdict.evict == ["a0"]  # the oldest from that address
    # A genuine client from the same address logs in at once: it is no longer pushed out,
    # however many come after it.
    admission.authenticated("a3")
    evicted = [h for n in range(4, 40) for h in admission.open(f"a{n}", "10.0.0.9").evict]
    assert "a3" not in evicted and evicted[:2] == ["a1", "a2"]
    assert admission.unauthenticated_from("10.0.0.9") == 3
    assert admission.connections == 4 and admission.evicted == len(evicted) + 1
    admission.closed("a0")  # pushed out already: closing it changes nothing
    assert admission.connections == 4


def test_admission_takes_the_total_from_the_address_that_holds_the_most() -> None:
    admission: Admission[str] = Admission(Limits(max_unauthenticated=4))
    for handle in ("a0", "a1", "a2"):
        admission.open(handle, "10.0.0.9")
    admission.open("b0", "10.0.0.2")
    verdict = admission.open("c0", "10.0.0.3")
    assert verdict.admitted and verdict.evict == ["a0"]
    assert admission.unauthenticated == 4


def test_admission_refuses_only_at_the_hard_caps_when_nobody_can_be_pushed_out() -> None:
    admission: Admission[str] = Admission(Limits(max_connections=3,
                                                 max_connections_per_source=2))
    for handle, source in (("a0", "10.0.0.9"), ("a1", "10.0.0.9")):
        assert admission.open(handle, source).admitted
        admission.authenticated(handle)
    refused = admission.open("a2", "10.0.0.9")
    assert not refused.admitted and "too many connections from 10.0.0.9 (2)" in refused.reason
    assert admission.open("b0", "10.0.0.2").admitted  # not logged in: can give way
    pushed = admission.open("c0", "10.0.0.3")
    assert pushed.admitted and pushed.evict == ["b0"]
    admission.authenticated("c0")
    full = admission.open("d0", "10.0.0.4")
    assert not full.admitted and "limit of 3 connections" in full.reason
    admission.closed("a0")
    assert admission.open("d0", "10.0.0.4").admitted
    assert admission.refused == 2


def test_limits_refuse_a_setting_that_is_not_a_positive_number() -> None:
    from parley.core.errors import LocalError

    with pytest.raises(LocalError) as err:
        Limits(rate_limit=0)
    assert "--rate-limit" in err.value.hint
    with pytest.raises(LocalError):
        Limits(max_connections=True)  # type: ignore[arg-type]


def test_a_replaced_device_logs_in_only_with_its_new_keys(line: Line) -> None:
    from parley.core.errors import RemoteError

    _old_session, old_port = line.login(M)
    code = line.store.replace_device(M, 60_000, line.now, "laptop stolen")
    line.relay.directory_changed()
    assert old_port.closed is not None and old_port.closed[0] == wire.CloseCode.DEVICE_REVOKED
    new_keys = DeviceKeys.generate()
    public = new_keys.public("x/x").to_json()
    bundle = {k: public[k] for k in ("sign", "kem", "kem_sig")}
    with pytest.raises(RemoteError) as err:  # the code replaces moscow/desk, nothing else
        line.store.enroll(code, "laptop", bundle, line.now)
    assert err.value.code == "enroll_code_invalid" and "replaces moscow/desk" in err.value.message
    assert line.store.enroll(code, "desk", bundle, line.now).sign == new_keys.sign_public
    line.relay.directory_changed()
    line.keys[M] = new_keys
    line.login(M)
    actions = [(e.action, e.device) for e in line.store.device_log()]
    assert ("replace", M) in actions and ("replaced", M) in actions
    # Without a replacement code, an enrollment under an existing name is refused, logged.
    other = line.store.create_enroll_code("moscow", 60_000, line.now)
    with pytest.raises(RemoteError) as err:
        line.store.enroll(other, "desk", bundle, line.now, source="10.9.9.9")
    assert err.value.code == "device_exists"
    refused = line.store.device_log()[-1]
    assert (refused.action, refused.device) == ("refused", M) and "10.9.9.9" in refused.detail
    assert line.store.enroll(other, "spare", bundle, line.now).device_id == "moscow/spare"


def test_one_sender_may_fill_only_its_share_of_a_mailbox(tmp_path: Path) -> None:
    line = Line(tmp_path, Limits(mailbox_envelopes=10, sender_share=0.3))
    first, port = line.login(W)
    for n in range(4):
        line.send(first, {"t": "send", "env": line.envelope(W, M, n=n), "ref": f"w{n}"})
    replies = port.take()
    assert [r["t"] for r in replies] == ["sent"] * 3 + ["error"]
    assert replies[3]["code"] == "quota_exceeded"
    assert "as much of its mailbox as one sender may fill (30%)" in replies[3]["message"]
    other, port2 = line.login(W2)  # another sender is not shut out by the first
    line.send(other, {"t": "send", "env": line.envelope(W2, M), "ref": "w2"})
    assert port2.take()[-1]["t"] == "sent"


def test_a_revoked_devices_mailbox_is_emptied_and_counted_out(line: Line) -> None:
    sender, _ = line.login(W)
    for n in range(3):
        line.send(sender, {"t": "send", "env": line.envelope(W, M, n=n)})
    line.commit()
    assert line.relay.quota.waiting()[0] == 3
    line.store.revoke_device(M, line.now, "lost")
    line.relay.directory_changed()
    assert line.relay.quota.waiting() == (0, 0) and line.store.pending(M, 0, 10) == []


def test_an_ack_of_what_was_sent_costs_no_rate_so_a_large_mailbox_drains(tmp_path: Path
                                                                         ) -> None:
    line = Line(tmp_path, Limits(rate_limit=20, mailbox_window=30))
    sender, _ = line.login(W)
    for n in range(200):
        line.relay._rates[W][0].tokens = 10  # the sender is not what is measured here
        line.send(sender, {"t": "send", "env": line.envelope(W, M, n=n)})
    line.commit()
    reader, port = line.login(M)
    got: list[str] = []
    while len(got) < 200:
        delivered = [f["env"]["id"] for f in port.take() if f["t"] == "deliver"]
        assert delivered, f"delivery stalled after {len(got)}"
        got += delivered
        line.send(reader, *({"t": "ack", "id": i} for i in delivered))
        line.commit()
    assert len(set(got)) == 200
    # An ack of something not in flight pays like any frame.
    line.relay._rates[M][0].tokens = 0
    line.send(reader, {"t": "ack", "id": "not-in-flight"})
    assert port.take()[-1]["code"] == "rate_limited"


def test_a_connection_that_has_said_nothing_is_pushed_out_before_one_logging_in() -> None:
    admission: Admission[str] = Admission(Limits(max_unauthenticated_per_source=3))
    admission.open("genuine", "10.0.0.9")
    admission.spoke("genuine")  # it sent its request the moment it connected
    evicted = [h for n in range(50) for h in admission.open(f"silent{n}", "10.0.0.9").evict]
    assert "genuine" not in evicted and len(evicted) == 48
    # Only when everyone has spoken does age alone decide.
    admission.spoke("silent48")
    admission.spoke("silent49")
    assert admission.open("late", "10.0.0.9").evict == ["genuine"]


def test_call_signaling_is_never_stored(line: Line) -> None:
    sender, port = line.login(W)
    env = seal_envelope(line.keys[W], W, line.keys[M].public(M), "call.ice",
                        {"call_id": "c", "candidate": ""}, line.now).to_json()
    line.send(sender, {"t": "send", "env": env, "ref": "x"})
    refused = port.take()[-1]
    assert refused["code"] == "bad_message" and "never stored" in refused["message"]
    assert line.store.pending(M, 0, 10) == []


def test_an_envelope_larger_than_the_window_is_still_delivered(tmp_path: Path) -> None:
    line = Line(tmp_path, Limits(mailbox_window_kib=1))
    reader, port = line.login(M)
    sender, _ = line.login(W)
    for n in range(2):
        line.send(sender, {"t": "send", "env": line.envelope(W, M, size=5000, n=n)})
    first = [f for f in port.take() if f["t"] == "deliver"]
    assert len(first) == 1  # the window holds one, whatever its size
    line.send(reader, {"t": "ack", "id": first[0]["env"]["id"]})
    assert len([f for f in port.take() if f["t"] == "deliver"]) == 1


def test_a_device_over_its_rate_is_read_no_more_until_it_may_send_again(tmp_path: Path
                                                                        ) -> None:
    line = Line(tmp_path, Limits(rate_limit=10))
    session, _ = line.login(W)
    assert line.relay.pause_for(session, line.now) == 0
    line.send(session, *({"t": "ping", "ref": f"p{n}"} for n in range(25)))
    pause = line.relay.pause_for(session, line.now)
    assert 0.05 <= pause <= 2.0
    assert line.relay.pause_for(session, line.now + int(pause * 1000) + 1) == 0


def test_a_replacement_code_works_once_and_only_the_latest_and_revoke_cancels_it(
        line: Line) -> None:
    from parley.core.errors import RemoteError

    keys = DeviceKeys.generate().public("x/x").to_json()
    bundle = {k: keys[k] for k in ("sign", "kem", "kem_sig")}
    stale = line.store.replace_device(M, 60_000, line.now, "")
    latest = line.store.replace_device(M, 60_000, line.now, "")
    with pytest.raises(RemoteError):
        line.store.enroll(stale, "desk", bundle, line.now)  # superseded
    line.store.enroll(latest, "desk", bundle, line.now)
    # Revoking a device whose replacement is pending cancels that code too.
    pending = line.store.replace_device(M2, 60_000, line.now, "")
    line.store.revoke_device(M2, line.now, "after all, no")
    with pytest.raises(RemoteError) as err:
        line.store.enroll(pending, "robot", bundle, line.now)
    assert err.value.code == "enroll_code_used"
    assert line.store.revoked(M2)
