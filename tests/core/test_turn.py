"""TURN credentials in coturn's shared-secret scheme, and what a terminal accepts of them."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from parley.core.errors import LocalError, RemoteError
from parley.core.turn import TurnConfig, credential, grant, parse_grant

SECRET = b"north-korea-is-not-on-this-line!"


def test_a_credential_is_hmac_sha1_of_the_username_as_coturn_computes_it() -> None:
    # coturn (use-auth-secret): password = base64(HMAC-SHA1(static-auth-secret, username)).
    username = "1700000000:washington/hotline"
    expected = base64.b64encode(hmac.new(SECRET, username.encode(), hashlib.sha1).digest())
    assert credential(SECRET, username) == expected.decode()
    assert credential(SECRET, username + "x") != credential(SECRET, username)


def test_a_grant_names_the_device_and_expires_after_the_ttl() -> None:
    config = TurnConfig(("turn:10.0.0.1:3478", "turn:10.0.0.1:3478?transport=tcp"), SECRET,
                        ttl_s=3600)
    issued = grant(config, "washington/hotline", 1_700_000_000_123, "relay")
    (server,) = issued["servers"]
    assert server["username"] == "1700003600:washington/hotline"
    assert server["credential"] == credential(SECRET, server["username"])
    assert issued["expires_ms"] == 1_700_003_600_000 and issued["policy"] == "relay"
    parsed = parse_grant(issued)
    assert parsed.relay_only and parsed.servers[0].urls == tuple(config.urls)
    assert "credential" not in repr(parsed.servers[0]) and SECRET.decode() not in repr(config)


@pytest.mark.parametrize("bad", [
    {"urls": ("stun:10.0.0.1",)}, {"urls": ("turn:user:pw@10.0.0.1",)}, {"urls": ()},
    {"secret": b"short"}, {"ttl_s": 10}])
def test_a_bad_configuration_is_refused_with_the_fix(bad: dict[str, object]) -> None:
    args: dict[str, object] = {"urls": ("turn:10.0.0.1:3478",), "secret": SECRET, **bad}
    with pytest.raises(LocalError):
        TurnConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", [
    "turn:10.0.0.1", {"urls": ["stun:10.0.0.1"], "username": "u", "credential": "c"},
    {"urls": ["turn:10.0.0.1"], "username": "", "credential": "c"},
    {"urls": ["turn:10.0.0.1"], "username": "u"}, {"urls": [1], "username": "u",
                                                     "credential": "c"}])
def test_a_server_entry_that_is_not_a_turn_server_with_credentials_is_refused(
        entry: object) -> None:
    with pytest.raises(RemoteError):
        parse_grant({"servers": [entry], "expires_ms": 1, "policy": "any"})
