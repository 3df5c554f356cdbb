"""The benchmarks' lossy link decides each RTP packet's fate from its place in its flow."""

from __future__ import annotations

import statistics

from bench.impair import PATTERN, Impairment, Link


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    ip = bytes([0x45, 0]) + (28 + len(payload)).to_bytes(2, "big") + bytes(5) + bytes([17]) \
        + bytes(10)
    return ip + sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(4) + payload


def rtp(seq: int, pt: int = 111) -> bytes:
    return bytes([0x80, pt]) + (seq % 65536).to_bytes(2, "big") + bytes(8) + b"opus"


def test_two_links_of_one_seed_meet_the_same_fates_wherever_the_sequence_starts() -> None:
    imp = Impairment(loss=5, model="bursty", jitter_ms=20, seed=4)
    a, b = Link(imp), Link(imp)
    fates_a = [a.fate(udp(5000, 6000, rtp(100 + n))) for n in range(3000)]
    fates_b = [b.fate(udp(7000, 8000, rtp(65_000 + n))) for n in range(3000)]  # wraps
    assert fates_a == fates_b
    assert any(lost for lost, _ in fates_a) and any(d > 0.02 for _, d in fates_a)
    other = [Link(Impairment(loss=5, model="bursty", seed=5)).fate(udp(1, 2, rtp(n)))
             for n in range(3000)]
    assert [lost for lost, _ in other] != [lost for lost, _ in fates_a]


def test_only_rtp_is_impaired() -> None:
    link = Link(Impairment(loss=99, model="random", jitter_ms=50))
    stun = udp(1, 2, bytes([0, 1]) + bytes(18))
    dtls = udp(1, 2, bytes([22, 254, 253]) + bytes(20))
    rtcp = udp(1, 2, bytes([0x80, 200]) + bytes(26))
    assert [link.fate(p) for p in (stun, dtls, rtcp, b"\x60" + bytes(40))] == [(False, 0.0)] * 4
    assert sum(link.fate(udp(1, 2, rtp(n)))[0] for n in range(1000)) > 950


def test_bursty_loss_has_the_share_and_the_bursts_asked_for() -> None:
    lost = Link(Impairment(loss=5, model="bursty", burst=3, seed=1)).lost
    assert len(lost) == PATTERN
    assert 0.04 < sum(lost) / PATTERN < 0.06
    bursts, run = [], 0
    for gone in lost:
        if gone:
            run += 1
        elif run:
            bursts.append(run)
            run = 0
    assert 2.6 < statistics.mean(bursts) < 3.4
    random_lost = Link(Impairment(loss=5, model="random", seed=1)).lost
    assert 0.04 < sum(random_lost) / PATTERN < 0.06
