"""The server's status page: what an operator glances at, not a log to read."""

from __future__ import annotations

import html
from typing import Any

from parley.server.store import ServerStore

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#0f1419;color:#e6e6e6}
main{max-width:960px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;color:#9fb3c8}
table{border-collapse:collapse;width:100%} td,th{padding:6px 10px;text-align:left;
border-bottom:1px solid #26313d} th{color:#9fb3c8;font-weight:600}
.on{color:#4cd37b;font-weight:600} .off{color:#8a97a6} .muted{color:#8a97a6}
code{font-size:13px;color:#c8d3de}
"""


def _uptime(ms: int) -> str:
    s = ms // 1000
    return f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m" if s >= 86400 else \
        f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


def render_status(store: ServerStore, online: set[str], counters: dict[str, Any],
                  uptime_ms: int) -> str:
    e = html.escape
    devices = store.device_records()
    active = [d for d in devices if d.revoked_ms is None]
    rows = "".join(
        f"<tr><td>{e(p.name)}</td><td>{e(p.display)}</td><td>{e(p.timezone)}</td></tr>"
        for p in store.principals())
    lines = "".join(f"<tr><td>{e(a)}</td><td>⇄</td><td>{e(b)}</td></tr>"
                    for a, b in store.lines())
    def state(device_id: str, revoked: bool) -> tuple[str, str]:
        if revoked:
            return "off", "revoked"
        return ("on", "online") if device_id in online else ("off", "offline")

    devs = "".join(
        f"<tr><td>{e(d.device_id)}</td><td class=\"{state(d.device_id, bool(d.revoked_ms))[0]}\">"
        f"{state(d.device_id, bool(d.revoked_ms))[1]}</td>"
        f"<td><code>{e(d.fingerprint)}</code></td></tr>" for d in devices)
    stats = " · ".join(f"{e(k)} {v}" for k, v in counters.items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10"><title>Parley line server</title>
<style>{_STYLE}</style></head><body><main>
<h1>Parley line server</h1>
<div class="muted">up {_uptime(uptime_ms)} · {len(online)} of {len(active)} devices online ·
{e(stats)}</div>
<p class="muted">This server routes sealed envelopes. It never sees message or call content,
and terminals do not trust the keys it lists: they check them against keys verified in person.
</p>
<h2>Parties</h2><table><tr><th>name</th><th>display</th><th>time zone</th></tr>{rows}</table>
<h2>Lines</h2><table>{lines or '<tr><td class="muted">none yet</td></tr>'}</table>
<h2>Devices</h2><table><tr><th>device</th><th>status</th><th>fingerprint (as listed here)</th>
</tr>{devs or '<tr><td class="muted">none enrolled</td></tr>'}</table>
</main></body></html>"""
