"""Whatever arrives from the network, parsing fails only with Parley's own errors.

A bad frame must produce a clear error for its sender, never an exception that
would take down the server's session handler or a terminal's link.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.core import wire
from parley.core.call import PAYLOADS, CallBook
from parley.core.envelope import Envelope, seal_envelope
from parley.core.errors import ParleyError
from parley.core.keys import DevicePublicKeys
from parley.core.trust import Trust
from tests.core.keys_fixture import device

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=20)
FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def only_parley_errors(fn: Any, *args: Any, **kwargs: Any) -> None:
    with contextlib.suppress(ParleyError):  # anything else fails the test
        fn(*args, **kwargs)


@FAST
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_bytes_as_a_frame(raw: str | bytes) -> None:
    for table in (wire.CLIENT_MESSAGES, wire.SERVER_MESSAGES):
        only_parley_errors(wire.parse_message, raw, table, what="frame")


@FAST
@given(st.sampled_from(sorted(wire.CLIENT_MESSAGES)), st.dictionaries(
    st.sampled_from(["t", "device", "sig", "env", "ephemeral", "ref", "id", "party",
                     "receive"]), json_values, max_size=6))
def test_frames_of_known_types_with_any_fields(kind: str, fields: dict[str, Any]) -> None:
    only_parley_errors(wire.parse_message, json.dumps({**fields, "t": kind}),
                       wire.CLIENT_MESSAGES, what="frame")


VALID = seal_envelope(device("w"), "washington/desk", device("m").public("moscow/desk"),
                      "call.ringing", {"call_id": "c"}, 1).to_json()


@FAST
@given(st.dictionaries(st.sampled_from(sorted(VALID)), json_values, max_size=8))
def test_envelopes_with_any_field_values(changes: dict[str, Any]) -> None:
    only_parley_errors(Envelope.from_json, {**VALID, **changes})


@FAST
@given(st.dictionaries(st.sampled_from(["id", "sign", "kem", "kem_sig"]), json_values))
def test_directory_entries_with_any_values(entry: dict[str, Any]) -> None:
    only_parley_errors(DevicePublicKeys.from_json, entry)


@FAST
@given(st.sampled_from(sorted(PAYLOADS)), st.dictionaries(
    st.sampled_from(["call_id", "sdp", "dtls", "dtls_sig", "media", "candidate", "mid",
                     "mline", "audio", "video", "reason"]), json_values, max_size=6))
def test_call_payloads_with_any_values(type_: str, payload: dict[str, Any]) -> None:
    book = CallBook(device("m"), "moscow/desk")
    only_parley_errors(book.receive, device("w").public("washington/desk"), Trust.VERIFIED,
                       type_, payload, 1)
