"""What a recording of the line carries: SRTP opened with one side's DTLS keys is still SFrame.

The packets are captured off the loopback interface (a raw socket: the test runs as
root, as the namespace tests do) on their way to washington, decrypted with a fresh
libsrtp session keyed from washington's DTLS handshake -- what someone who one day
breaks DTLS's elliptic-curve key exchange would have -- and what is inside is
checked: the Opus and VP8 frames do not decode to what moscow sent, and open only
under the keys that came in moscow's sealed envelopes.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
from collections import defaultdict
from typing import Any

import av
import numpy as np
import pylibsrtp
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCDtlsTransport
from aiortc.rtp import RtpPacket

from parley.core import sframe
from parley.core.sframe import FrameOpener, Kind, SFrameError, StreamKeys
from parley.media import libopus
from parley.media.robot import RobotMediaSession
from tests.harness import LocalLine, active_call

ETH_P_ALL = 0x0003


def _srtp_session(dtls: RTCDtlsTransport) -> pylibsrtp.Session:
    """A new libsrtp session for what `dtls` receives, from its handshake's keys."""
    ssl = dtls._ssl  # type: ignore[attr-defined]
    chosen = ssl.get_selected_srtp_profile()
    profile = next(p for p in SRTP_PROFILES if p.openssl_profile == chosen)
    view = ssl.export_keying_material(b"EXTRACTOR-dtls_srtp",
                                      2 * (profile.key_length + profile.salt_length))
    rx_key = profile.get_key_and_salt(view, 0 if dtls._role == "server" else 1)  # type: ignore[attr-defined]
    policy = pylibsrtp.Policy(key=rx_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=profile.libsrtp_profile)
    policy.window_size = 1024
    return pylibsrtp.Session(policy)


def _udp_to(ports: set[int], frame: bytes) -> bytes | None:
    """The UDP payload of an Ethernet frame off lo, if it is IPv4 UDP to one of `ports`."""
    if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    if ip[9] != socket.IPPROTO_UDP:
        return None
    header = (ip[0] & 0x0F) * 4
    dport = struct.unpack("!H", ip[header + 2:header + 4])[0]
    return ip[header + 8:] if dport in ports else None


async def _capture(ports: set[int], seconds: float) -> list[bytes]:
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind(("lo", 0))
    raw.setblocking(False)
    loop = asyncio.get_running_loop()
    got: list[bytes] = []

    def readable() -> None:
        while True:
            try:
                frame, address = raw.recvfrom(65536)
            except BlockingIOError:
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # lo shows each packet twice: keep the incoming copy
            payload = _udp_to(ports, frame)
            if payload and 127 < payload[0] < 192:  # RTP/RTCP (RFC 7983)
                got.append(payload)

    loop.add_reader(raw.fileno(), readable)
    try:
        await asyncio.sleep(seconds)
    finally:
        loop.remove_reader(raw.fileno())
        raw.close()
    return got


def _payload_types(sdp: str) -> dict[int, Kind]:
    types = {}
    for pt, name in re.findall(r"a=rtpmap:(\d+) (\w+)/", sdp):
        if name.lower() == "opus":
            types[int(pt)] = Kind.AUDIO
        elif name.lower() == "vp8":
            types[int(pt)] = Kind.VIDEO
    return types


def _frames(packets: list[RtpPacket], types: dict[int, Kind]) -> dict[Kind, list[bytes]]:
    """Whole encoded frames: Opus packets, and VP8 frames put back together."""
    out: dict[Kind, list[bytes]] = {Kind.AUDIO: [], Kind.VIDEO: []}
    video: dict[int, list[RtpPacket]] = defaultdict(list)
    for packet in sorted(packets, key=lambda p: p.sequence_number):
        kind = types.get(packet.payload_type)
        if kind is Kind.AUDIO:
            out[kind].append(packet.payload)
        elif kind is Kind.VIDEO:
            video[packet.timestamp].append(packet)
    for _ts, parts in sorted(video.items()):
        if not parts[-1].marker or not VpxPayloadDescriptor.parse(parts[0].payload)[0] \
                .partition_start:
            continue  # the capture began or ended inside this frame
        out[Kind.VIDEO].append(b"".join(VpxPayloadDescriptor.parse(p.payload)[1]
                                        for p in parts))
    return out


def _decoded_vp8(frames: list[bytes]) -> int:
    codec = av.CodecContext.create("libvpx", "r")
    pictures = 0
    for data in frames:
        try:
            pictures += len(codec.decode(av.Packet(data)))
        except av.error.FFmpegError:
            continue
    return pictures


def _opus_pcm(frames: list[bytes]) -> np.ndarray:
    decoder = libopus.Decoder(channels=1)
    pcm = []
    for data in frames:
        try:
            pcm.append(decoder.decode(data).reshape(-1))
        except libopus.OpusError:
            continue
    return np.concatenate(pcm).astype(np.float64) if pcm else np.zeros(0)


def _tone_share(pcm: np.ndarray, hz: float = 440.0) -> float:
    """How much of the energy of `pcm` lies within 10 Hz of `hz`."""
    if pcm.size < 4800:
        return 0.0
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / 48_000)
    return float(power[np.abs(freqs - hz) <= 10].sum() / max(power.sum(), 1e-9))


def _open_all(frames: list[bytes], kind: Kind, keys: list[StreamKeys]) -> list[bytes]:
    opener = FrameOpener(kind, keep=len(keys) + 1)
    for k in keys:
        opener.add(k)
    opened = []
    for data in frames:
        try:
            opened.append(opener.open(data))
        except SFrameError:
            continue
    return opened


async def test_srtp_opened_with_the_dtls_keys_holds_only_sframe_ciphertext(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)
    # The keys washington's call book derived from moscow's sealed envelope, as given to
    # its media stack: the only keys the frames should open with.
    received: list[StreamKeys] = []
    engine_open = washington.engine.open

    def open_recording_keys(*args: Any, **kwargs: Any) -> Any:
        session = engine_open(*args, **kwargs)
        set_keys = session.set_keys

        def record(send: StreamKeys | None, receive: StreamKeys | None) -> None:
            if receive is not None:
                received.append(receive)
            set_keys(send, receive)

        session.set_keys = record  # type: ignore[method-assign]
        return session

    washington.engine.open = open_recording_keys  # type: ignore[method-assign]
    caller, _ = await active_call(washington, moscow)
    session = washington.sessions[caller.call_id]
    assert isinstance(session, RobotMediaSession)
    dtls = session._transport()
    ports = {c.port for c in dtls.transport.iceGatherer.getLocalCandidates()}
    captured = await _capture(ports, 4.0)
    srtp = _srtp_session(dtls)
    packets = []
    for data in captured:
        if 192 <= data[1] <= 223:
            continue  # RTCP
        try:
            packets.append(RtpPacket.parse(srtp.unprotect(data)))
        except pylibsrtp.Error:
            continue
    assert len(packets) > 150, f"only {len(packets)} of {len(captured)} packets decrypted"
    frames = _frames(packets, _payload_types(session.pc.remoteDescription.sdp))
    audio, video = frames[Kind.AUDIO], frames[Kind.VIDEO]
    assert len(audio) > 100 and len(video) > 50

    # Inside SRTP: SFrame, the codec's few readable bytes, then ciphertext.
    for data in audio:
        kid, _ctr, _ = sframe.decode_header(data[1:])
        assert sframe.kid_kind(kid) is Kind.AUDIO
    assert _decoded_vp8(video) == 0, "a VP8 frame decoded without the end-to-end layer"
    raw_pcm = _opus_pcm(audio)

    # They open under the keys from moscow's sealed envelope, and under no other.
    assert received and all(k.epoch == 0 for k in received)
    opened_audio = _open_all(audio, Kind.AUDIO, received)
    opened_video = _open_all(video, Kind.VIDEO, received)
    assert len(opened_audio) == len(audio) and len(opened_video) == len(video)
    stranger = [StreamKeys(0, os.urandom(16), os.urandom(16))]
    assert _open_all(audio, Kind.AUDIO, stranger) == []
    assert _open_all(video, Kind.VIDEO, stranger) == []
    # Opened, they are moscow's test pattern and tone (440 Hz); unopened, neither.
    assert _decoded_vp8(opened_video) > 0.9 * len(opened_video)
    opened_share, raw_share = _tone_share(_opus_pcm(opened_audio)), _tone_share(raw_pcm)
    print(f"440 Hz holds {opened_share:.1%} of the opened audio, {raw_share:.2%} of the raw")
    assert opened_share > 0.8 and raw_share < 0.05
