"""Tamper notices: telling the genuine sender that something arrived forged in its name.

When an envelope that claims to come from a *verified* peer fails its checks
(the signature does not verify against the pinned key, or it does not decrypt),
the receiving terminal raises an alarm and also tells that peer, in an envelope
sealed to the peer's pinned key: "envelope <id> of type <type> reached me
altered". The genuine device recognises its own envelope id and, if it belongs
to a call, hangs up with an interception alarm -- so both sides see the alarm,
whichever direction was tampered with. A hostile server can drop the notice,
but that only turns an alarm on one side into a failed call on the other.

Notices are never sent about notices (no loops) and at most once per peer per
`NOTICE_INTERVAL_MS` (no amplification). A notice is stored until delivered, for
a week at most (`MAX_AGE_MS`), and it only ends calls that had begun when it
was sent, so that a server holding one back cannot later end an unrelated call
as "intercepted".
"""

from __future__ import annotations

from . import schema
from .errors import ErrorCode

TAMPER = "notice.tamper"
NOTICE_INTERVAL_MS = 5_000
# A week: a device away for days still learns what was reported in its name, and a held
# notice cannot end a later call (it only ends calls that had begun when it was sent).
MAX_AGE_MS = 7 * 86_400_000
TAMPER_FIELDS = {
    "envelope_id": schema.text(32),
    "envelope_type": schema.text(40),
    "code": schema.text(40),
}
NOTIFY_ON = frozenset({ErrorCode.BAD_SIGNATURE, ErrorCode.DECRYPT_FAILED})


class NoticeLimiter:
    def __init__(self, interval_ms: int = NOTICE_INTERVAL_MS) -> None:
        self._interval = interval_ms
        self._last: dict[str, int] = {}

    def should_notify(self, peer: str, envelope_type: str, code: ErrorCode, now_ms: int) -> bool:
        if code not in NOTIFY_ON or envelope_type == TAMPER:
            return False
        last = self._last.get(peer)
        if last is not None and now_ms - last < self._interval:
            return False
        self._last[peer] = now_ms
        return True
