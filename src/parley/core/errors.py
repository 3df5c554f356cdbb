"""Errors that say whose fault they are.

Every failure Parley reports carries a stable `code` that the wire protocol, the
logs and the UI all use, a human `message`, and a `hint` that tells the operator
what to do about it. Errors split by fault, as in h11:

* `LocalError` -- this side misused the API or is misconfigured (fix it here);
* `RemoteError` -- the peer or the server sent something wrong (it is not our
  bug; it may be an attack).

`SecurityAlarm` is the loud kind of `RemoteError`: something that a hostile
server or an interceptor would cause (a signature that does not verify, a key
that changed, a DTLS certificate that does not match the signed fingerprint).
Alarms are never silently retried.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # remote: malformed or unexpected input
    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    UNKNOWN_TYPE = "unknown_type"
    NOT_AUTHENTICATED = "not_authenticated"
    AUTH_FAILED = "auth_failed"
    ENROLL_CODE_INVALID = "enroll_code_invalid"
    ENROLL_CODE_EXPIRED = "enroll_code_expired"
    ENROLL_CODE_USED = "enroll_code_used"
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_PARTY = "unknown_party"
    NO_LINE = "no_line"
    RECIPIENT_OFFLINE = "recipient_offline"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"  # the recipient's mailbox (or the sender's share) is full
    TOO_MANY_CONNECTIONS = "too_many_connections"
    LOGIN_TIMEOUT = "login_timeout"
    BAD_FRAMES = "bad_frames"  # a connection closed for sending too many bad frames
    DEVICE_EXISTS = "device_exists"
    DEVICE_REVOKED = "device_revoked"
    SERVER_ERROR = "server_error"
    FORBIDDEN = "forbidden"  # allowed to nobody in this role (e.g. filing another's test)
    # security alarms
    BAD_SIGNATURE = "bad_signature"
    DECRYPT_FAILED = "decrypt_failed"
    WRONG_RECIPIENT = "wrong_recipient"
    REPLAY = "replay"
    STALE = "stale"
    KEY_CHANGED = "key_changed"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    INSECURE_MEDIA = "insecure_media"
    MEDIA_UNPROTECTED = "media_unprotected"  # media without the end-to-end layer (SFrame)
    INTERCEPTED = "intercepted"  # the peer reports that it detected interception
    COMMITMENT_MISMATCH = "commitment_mismatch"  # a SAS commitment opened to another value
    NEW_DEVICE = "new_device"  # a party we verified gained a device we have not verified
    STATUS_UNPROVEN = "status_unproven"  # the server shows a line's state without its proof
    RECORD_FORKED = "record_forked"  # a site's log does not extend what it showed before
    # local: policy and misuse
    NOT_VERIFIED = "not_verified"
    NOT_ENROLLED = "not_enrolled"
    NO_SUCH_CALL = "no_such_call"
    INVALID_STATE = "invalid_state"
    BAD_CONFIG = "bad_config"
    INVALID_INPUT = "invalid_input"  # what the operator typed is not of the right form
    SAFETY_NUMBER_TYPO = "safety_number_typo"  # a few groups differ: a typing mistake
    BUSY = "busy"

    @classmethod
    def from_wire(cls, value: object) -> ErrorCode:
        """The code another party sent; one this version does not know is a server error."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.SERVER_ERROR


class ParleyError(Exception):
    """Base of every error Parley raises on purpose."""

    code: ErrorCode = ErrorCode.SERVER_ERROR

    def __init__(self, message: str, *, code: ErrorCode | None = None, hint: str = "") -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.hint = hint

    def as_dict(self) -> dict[str, str]:
        out = {"code": str(self.code), "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        return out

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class LocalError(ParleyError):
    """This side did something wrong: misuse, policy refusal, bad configuration."""

    code = ErrorCode.INVALID_STATE


class RemoteError(ParleyError):
    """The other side (peer device or server) sent something wrong."""

    code = ErrorCode.BAD_MESSAGE


class SecurityAlarm(RemoteError):
    """Evidence of tampering or interception. Shown loudly, never retried."""

    code = ErrorCode.BAD_SIGNATURE


# Tampering with a call's signaling or media is an interception, whatever step caught it.
_INTERCEPTION = frozenset({ErrorCode.BAD_SIGNATURE, ErrorCode.DECRYPT_FAILED,
                           ErrorCode.FINGERPRINT_MISMATCH, ErrorCode.INTERCEPTED,
                           ErrorCode.COMMITMENT_MISMATCH})
_ALARM_TITLES = {
    ErrorCode.FINGERPRINT_MISMATCH: "Call intercepted",
    ErrorCode.INTERCEPTED: "Call intercepted",
    ErrorCode.BAD_SIGNATURE: "Forged or altered message",
    ErrorCode.DECRYPT_FAILED: "Forged or altered message",
    ErrorCode.KEY_CHANGED: "A peer's key has changed",
    ErrorCode.WRONG_RECIPIENT: "Misrouted message",
    ErrorCode.INSECURE_MEDIA: "Unencrypted media refused",
    ErrorCode.MEDIA_UNPROTECTED: "Media not protected end to end",
    ErrorCode.REPLAY: "Replayed message",
    ErrorCode.STALE: "Stale message",
    ErrorCode.COMMITMENT_MISMATCH: "Call intercepted",
    ErrorCode.NEW_DEVICE: "A verified party has a new device",
    ErrorCode.STATUS_UNPROVEN: "The server shows a line test nobody signed",
    ErrorCode.RECORD_FORKED: "A site's record was rewritten",
}


def alarm_title(code: ErrorCode, *, about_call: bool) -> str:
    """The headline of a security alarm, the same on every surface."""
    if about_call and code in _INTERCEPTION:
        return "Call intercepted"
    return _ALARM_TITLES.get(code, "Security alarm")
