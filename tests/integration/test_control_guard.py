"""The terminal's local API refuses anyone but its own page and its own operator."""

from __future__ import annotations

import aiohttp

from parley.terminal.control import ControlServer
from tests.harness import LocalLine


async def test_token_host_and_origin_are_checked(line: LocalLine) -> None:
    await line.provision()
    terminal = await line.terminal("washington")
    control = ControlServer(terminal, port=0)
    await control.start()
    try:
        info = terminal.store.read_control()
        assert info == {"url": control.origin, "token": control.token}
        assert (line.root / "washington" / "control.json").stat().st_mode & 0o077 == 0
        api = control.origin + "/api/status"
        async with aiohttp.ClientSession() as http:
            async with http.get(api) as resp:
                assert resp.status == 401
                assert "token" in (await resp.json())["error"]["message"]
            async with http.get(api, params={"token": "guess"}) as resp:
                assert resp.status == 401
            auth = {"Authorization": f"Bearer {control.token}"}
            async with http.get(api, headers=auth) as resp:
                assert resp.status == 200
                assert (await resp.json())["device"] == "washington/hotline"
            async with http.get(api, headers={**auth, "Origin": "http://evil.example"}) as resp:
                assert resp.status == 403
            async with http.get(api, headers={**auth, "Host": "evil.example:80"}) as resp:
                assert resp.status == 421  # DNS rebinding
            async with http.post(control.origin + "/api/call", headers=auth,
                                 data=b"{nope") as resp:
                assert resp.status == 400
                assert "not valid JSON" in (await resp.json())["error"]["message"]
            async with http.post(control.origin + "/api/calls/none/hangup",
                                 headers=auth) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "no_such_call"
    finally:
        await control.stop()
    assert terminal.store.read_control() is None
