"""ICE settings as both media stacks get them: the relay policy and issued TURN servers."""

from __future__ import annotations

import pytest
from aiortc import RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.rtcicetransport import parse_stun_turn_uri

from parley.core.errors import LocalError
from parley.core.turn import TurnConfig
from parley.media.ice import IceConfig

STATIC = RTCIceServer(urls="stun:192.0.2.1:3478")
ISSUED = RTCIceServer(urls="turn:192.0.2.2:3478", username="1:w/d", credential="c")


def test_a_relay_only_line_makes_both_stacks_gather_relayed_candidates_only() -> None:
    ice = IceConfig(servers=(STATIC,)).with_turn([ISSUED], relay_only=True)
    assert ice.rtc_configuration().iceTransportPolicy is RTCIceTransportPolicy.RELAY
    assert ice.browser_configuration()["iceTransportPolicy"] == "relay"
    # The issued relay first: aiortc takes the first TURN server it is given.
    assert ice.servers == (ISSUED, STATIC) and ice.has_turn()
    assert ice.browser_configuration()["iceServers"][0] == {
        "urls": "turn:192.0.2.2:3478", "username": "1:w/d", "credential": "c"}
    direct = IceConfig(servers=(STATIC,))
    assert direct.rtc_configuration().iceTransportPolicy is RTCIceTransportPolicy.ALL
    assert direct.browser_configuration()["iceTransportPolicy"] == "all"
    assert not direct.has_turn()


@pytest.mark.parametrize("url", ["turn:192.0.2.2:3478", "turn:relay.example:3478?transport=tcp",
                                 "turns:relay.example:5349"])
def test_a_turn_url_aiortc_takes_is_taken(url: str) -> None:
    TurnConfig((url,), b"s" * 32)
    assert parse_stun_turn_uri(url)["host"]  # aiortc's own reading of it


@pytest.mark.parametrize("url", ["turn:[::1]:3478", "turn:h:abc", "turns:h:5349?transport=udp",
                                 "turn:h:70000", "turn:user:pw@h:3478", "stun:h:3478"])
def test_a_turn_url_a_media_stack_would_refuse_is_refused_at_the_start(url: str) -> None:
    with pytest.raises(LocalError):
        TurnConfig((url,), b"s" * 32)
    if url.startswith("turn:[") or url == "turn:h:abc":
        with pytest.raises(ValueError):
            parse_stun_turn_uri(url)  # what aiortc would have said at every call
