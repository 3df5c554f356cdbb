"""The little Parley needs to read from SDP: DTLS fingerprints and transport.

Parley never edits SDP; it reads two things from it. The DTLS fingerprint(s),
which must equal the fingerprint the device signed, and the transport of each
media section, which must be DTLS-SRTP (``UDP/TLS/RTP/SAVPF``) or DTLS-SCTP.
Anything else -- plain RTP, SDES keys in ``a=crypto`` -- is refused, so nothing
unencrypted is ever negotiated.
"""

from __future__ import annotations

from .errors import ErrorCode, SecurityAlarm
from .safety import normalize_fingerprint

MAX_SDP = 32 * 1024
SECURE_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "UDP/DTLS/SCTP", "DTLS/SCTP", "TCP/DTLS/SCTP",
                           "TCP/TLS/RTP/SAVPF"})


def dtls_fingerprints(sdp: str) -> set[str]:
    """All sha-256 fingerprints named in the SDP, normalized."""
    found = set()
    for line in sdp.splitlines():
        if line.startswith("a=fingerprint:"):
            algorithm, _, value = line[len("a=fingerprint:") :].strip().partition(" ")
            if algorithm.lower() == "sha-256":
                found.add(normalize_fingerprint(value))
    return found


def check_secure_sdp(sdp: str, signed_fingerprint: str, *, who: str) -> None:
    """Refuse SDP that is not DTLS-SRTP or whose fingerprint is not the signed one."""
    media = [line for line in sdp.splitlines() if line.startswith("m=")]
    if not media:
        raise SecurityAlarm(f"the session description from {who} has no media",
                            code=ErrorCode.INSECURE_MEDIA)
    for line in media:
        parts = line.split()
        proto = parts[2] if len(parts) > 2 else ""
        port = parts[1] if len(parts) > 1 else ""
        if proto.upper() not in SECURE_PROTOS and port != "0":
            raise SecurityAlarm(
                f"{who} offered media over {proto or 'an unknown transport'}, not DTLS-SRTP",
                code=ErrorCode.INSECURE_MEDIA,
                hint="Parley accepts encrypted media only; the call was refused",
            )
    if any(line.startswith("a=crypto:") for line in sdp.splitlines()):
        raise SecurityAlarm(
            f"{who} offered SDES keys (a=crypto); only DTLS-SRTP is accepted",
            code=ErrorCode.INSECURE_MEDIA,
        )
    prints = dtls_fingerprints(sdp)
    if prints != {normalize_fingerprint(signed_fingerprint)}:
        raise SecurityAlarm(
            f"the DTLS fingerprint in the session description from {who} is not the one"
            " that device signed",
            code=ErrorCode.FINGERPRINT_MISMATCH,
            hint="the call signaling was altered: possible interception; the call was refused",
        )
