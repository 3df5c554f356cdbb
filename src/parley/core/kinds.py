"""The envelope kinds: one registry says what each kind of envelope is and how it is treated.

Every envelope names its kind in its signed header (``type``). What follows
from the kind used to be decided by string prefixes (``"call."``) tested in
several places -- how old one may be, whether the server stores it, whether
the terminal acknowledges it, what tampering with it ends. It is all here now,
one `Kind` per type, and everything else asks `kind_of`:

* ``fields``: the schema its payload is checked against once it is opened;
* ``max_age_ms``: how long after its signed send time it may still be
  accepted (`replay.ReplayGuard` refuses it as ``stale`` after that). The ids
  of accepted envelopes are remembered for that long, which bounds the replay
  table;
* ``stored``: stored and forwarded by the server until the recipient
  acknowledges it (False: *ephemeral*, delivered now or refused with
  ``recipient_offline``, and never acknowledged);
* ``call_signaling``: it belongs to a call, so a forged or altered one ends
  the calls with that peer as intercepted, and a tamper notice about one may
  end the call it names.

A kind this registry does not know is dropped (and acknowledged, so that a
stored one does not come back at every login): an old terminal never guesses
what a newer one meant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import linetest, notice, record, schema, statement
from .call import OFFER_MAX_AGE_MS, PAYLOADS, SIGNALING_MAX_AGE_MS
from .messages import MAX_AGE_MS as MESSAGE_MAX_AGE_MS
from .messages import PAYLOADS as MESSAGE_PAYLOADS
from .schedule import PAYLOADS as SCHEDULE_PAYLOADS


@dataclass(frozen=True)
class Kind:
    name: str
    fields: Mapping[str, schema.Field]
    max_age_ms: int | None
    stored: bool
    call_signaling: bool


def _call(name: str, max_age_ms: int = SIGNALING_MAX_AGE_MS) -> Kind:
    return Kind(name, PAYLOADS[name], max_age_ms, stored=False, call_signaling=True)


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    # The offer also carries its own expiry (the caller's reach deadline): see core.call.
    _call("call.offer", OFFER_MAX_AGE_MS),
    _call("call.ringing"),
    _call("call.answer"),
    _call("call.confirm"),
    _call("call.ice"),
    _call("call.media"),
    _call("call.end"),
    _call("call.reconnect"),
    _call("call.reoffer"),
    _call("call.reanswer"),
    _call("call.rekey"),
    _call("call.rekeyed"),
    # A held notice must not end a later, unrelated call: it ages out, and it only ends
    # calls that were live when it was sent (CallBook.tamper_reported).
    Kind(notice.TAMPER, notice.TAMPER_FIELDS, notice.MAX_AGE_MS, stored=True,
         call_signaling=False),
    # Messages wait on the server while their recipient is away: a month at most (a
    # sender asks again for what is missing beyond that; see core.messages).
    *(Kind(name, fields, MESSAGE_MAX_AGE_MS, stored=True, call_signaling=False)
      for name, fields in MESSAGE_PAYLOADS.items()),
    # A line test's message round trip goes the way messages go (stored, then forwarded);
    # a ping or pong held longer than a test lasts answers nothing.
    *(Kind(name, fields, linetest.PING_MAX_AGE_MS, stored=True, call_signaling=False)
      for name, fields in linetest.PAYLOADS.items() if name != "linetest.result"),
    Kind("linetest.result", linetest.PAYLOADS["linetest.result"], linetest.RESULT_MAX_AGE_MS,
         stored=True, call_signaling=False),
    # Scheduling waits on the server like a message does (core.schedule).
    *(Kind(name, fields, MESSAGE_MAX_AGE_MS, stored=True, call_signaling=False)
      for name, fields in SCHEDULE_PAYLOADS.items()),
    # Joint statements and the record's checkpoints too (core.statement, core.record).
    *(Kind(name, fields, MESSAGE_MAX_AGE_MS, stored=True, call_signaling=False)
      for name, fields in (*statement.PAYLOADS.items(), *record.PAYLOADS.items())),
)}
assert set(KINDS) >= set(PAYLOADS) | set(MESSAGE_PAYLOADS), "every payload has its kind"


def kind_of(type_: str) -> Kind | None:
    """The registered kind of an envelope type, or None for one this version does not know."""
    return KINDS.get(type_)


def max_age_ms(type_: str) -> int | None:
    """How long after it was sent an envelope of this type may be accepted (None: no limit).

    An unknown type is refused before its age matters; the short limit keeps its id
    out of the replay table for good.
    """
    kind = KINDS.get(type_)
    return kind.max_age_ms if kind is not None else SIGNALING_MAX_AGE_MS


def ends_calls(type_: str) -> bool:
    """Does tampering with an envelope of this type end the calls with its peer?"""
    kind = KINDS.get(type_)
    return kind is not None and kind.call_signaling
