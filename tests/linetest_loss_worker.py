"""A line test over a lossy link, run inside a network namespace of the test's own.

`tests/integration/test_linetest_loss.py` creates the namespace, and runs this
module in it (``ip netns exec``). Here, on that namespace's own loopback:
iptables drops the share of UDP packets the job asks for (media is UDP, the
server's TCP is not touched), a real server with a webhook receiver, the two
test sets, one line test; then what the server shows of it -- its status page,
``/metrics``, ``/lines.json`` -- and the alert it sent, printed as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from parley.core.encoding import b64e
from parley.media.ice import use_host_addresses
from parley.server.alerts import load_alert_key, public_key_text
from parley.terminal.linetest import LineTestSettings
from tests.harness import LocalLine
from tests.webhook import WebhookSink


def drop_udp(share: float) -> None:
    subprocess.run(["iptables", "-F", "INPUT"], check=True)
    subprocess.run(["iptables", "-A", "INPUT", "-p", "udp", "-m", "statistic", "--mode",
                    "random", "--probability", f"{share:.4f}", "-j", "DROP"], check=True)


async def run(job: dict[str, Any]) -> dict[str, Any]:
    use_host_addresses(["127.0.0.1"])
    drop_udp(job["loss"])  # before anything listens: nothing here is async yet
    root = Path(job["root"])
    sink = WebhookSink()
    await sink.start()
    line = LocalLine(root)
    await line.start(alert_webhooks=[sink.url])
    try:
        await line.provision(test_sets=True)
        settings = {"test_set": True, "duration_s": job["duration_s"]}
        washington = await line.terminal("washington-testset",
                                         linetest=LineTestSettings(**settings))
        await line.terminal("moscow-testset", linetest=LineTestSettings(**settings))
        result = await washington.linetests.run("washington:moscow")
        deliveries = await sink.wait_for(1, 20)
        async with aiohttp.ClientSession() as http:
            pages = {}
            for path in ("/", "/metrics", "/lines.json"):
                async with http.get(line.url + path) as resp:
                    pages[path] = await resp.text()
        return {"result": result, "status_page": pages["/"], "metrics": pages["/metrics"],
                "lines": json.loads(pages["/lines.json"]),
                "webhook": {"body": b64e(deliveries[0].body),
                            "headers": deliveries[0].headers},
                "alert_key": public_key_text(load_alert_key(root / "server"))}
    finally:
        await line.stop()
        await sink.stop()


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    try:
        out = asyncio.run(run(job))
    finally:
        subprocess.run(["iptables", "-F", "INPUT"], check=False)
    print(json.dumps(out), flush=True)



if __name__ == "__main__":
    main()
