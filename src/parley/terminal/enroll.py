"""Enrollment: spend a one-time code to register this device's public keys."""

from __future__ import annotations

import aiohttp

from parley.core.errors import ErrorCode, RemoteError
from parley.core.keys import DevicePublicKeys
from parley.terminal.link import server_origin
from parley.terminal.store import TerminalStore


async def enroll(store: TerminalStore, server_url: str, code: str) -> DevicePublicKeys:
    keys = store.load_keys()
    public = keys.public("x/x").to_json()
    body = {"code": code.strip(), "device": store.device_name,
            "keys": {k: public[k] for k in ("sign", "kem", "kem_sig")}}
    origin = server_origin(server_url)
    try:
        async with aiohttp.ClientSession() as http, \
                http.post(f"{origin}/v1/enroll", json=body,
                          timeout=aiohttp.ClientTimeout(total=15)) as resp:
            data = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise RemoteError(f"cannot reach the line server at {origin}: {exc}",
                          code=ErrorCode.SERVER_ERROR,
                          hint="check the URL and that 'parley server' is running") from exc
    except ValueError:  # not JSON: not a Parley server, or a proxy's error page
        data = None
    if not isinstance(data, dict):
        raise RemoteError(f"{origin} sent an unreadable enrollment reply",
                          hint="check that the URL is the line server's")
    if resp.status != 200:
        raise RemoteError(str(data.get("message", "enrollment refused")),
                          code=ErrorCode.from_wire(data.get("code")),
                          hint=str(data.get("hint", "")))
    device_id = data.get("device")
    enrolled = keys.public(device_id if isinstance(device_id, str) else "")
    DevicePublicKeys.from_json(enrolled.to_json())  # validates the id the server chose
    if enrolled.device_id.split("/", 1)[1] != store.device_name:
        raise RemoteError(f"the server enrolled us as {device_id}, not as {store.device_name}")
    store.set("device_id", enrolled.device_id)
    store.set("server_url", origin)
    return enrolled
