"""The server's status page: what an operator glances at, not a log to read.

Lines first -- each green, amber or red with its last test, how old it is
and why -- then a bar per day for 90 days and a bar per test for the latest
ones, charts of setup time and loss, and who signed the last result. Then the
parties and devices. Everything is drawn here, in HTML and inline SVG: the
page fetches nothing, from here or from anywhere else.
"""

from __future__ import annotations

import html
from typing import Any

from parley.core import linetest
from parley.core.relay.lines import LineBoard
from parley.server.store import ServerStore

RECENT_BARS = 60
CHART_POINTS = 120
_COLOURS = {"green": "#3fb950", "amber": "#d29922", "red": "#f85149", None: "#30363d"}

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#0f1419;color:#e6e6e6}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;color:#9fb3c8}
table{border-collapse:collapse;width:100%} td,th{padding:6px 10px;text-align:left;
border-bottom:1px solid #26313d} th{color:#9fb3c8;font-weight:600}
.on{color:#4cd37b;font-weight:600} .off{color:#8a97a6} .muted{color:#8a97a6}
code{font-size:13px;color:#c8d3de}
.line{border:1px solid #26313d;border-radius:10px;padding:14px 18px;margin:0 0 16px}
.line h3{margin:0;font-size:19px;display:flex;align-items:center;gap:12px}
.dot{width:18px;height:18px;border-radius:50%;display:inline-block}
.state{text-transform:uppercase;font-size:15px;letter-spacing:.05em;padding:2px 10px;
border-radius:6px;color:#0f1419;font-weight:700}
.green{background:#3fb950} .amber{background:#d29922} .red{background:#f85149}
.reasons{margin:6px 0 0;padding-left:20px} .bars{display:flex;gap:2px;height:34px;
margin:6px 0 2px} .bars span{flex:1;border-radius:2px;min-width:2px}
.legend{display:flex;justify-content:space-between;font-size:12px;color:#8a97a6}
.charts{display:flex;gap:18px;flex-wrap:wrap;margin-top:10px} .chart{flex:1;min-width:280px}
.chart svg{width:100%;height:90px;background:#131a21;border-radius:6px}
.sig{font-size:14px;margin-top:8px} .ok{color:#3fb950;font-weight:700}
"""


def _uptime(ms: int) -> str:
    s = ms // 1000
    return f"{s // 86400}d {s % 86400 // 3600}h {s % 3600 // 60}m" if s >= 86400 else \
        f"{s // 3600}h {s % 3600 // 60}m {s % 60}s"


def line_summaries(board: LineBoard, now: int) -> list[dict[str, Any]]:
    """Each line's state, age and last figures (``/lines.json``)."""
    out = []
    for state in board.states(now):
        last = board.last(state.line)
        item = state.to_json()
        item["age_ms"] = now - state.last_ms if state.last_ms is not None else None
        if last is not None:
            record = last[0]
            item["last"] = {"test_id": record["test_id"], "caller": record["caller"],
                            "callee": record["callee"], "ended_ms": record["ended_ms"],
                            "status": last[1], "reasons": last[2],
                            "signed_by": [record["caller"], record["callee"]],
                            **linetest.figures(record)}
        out.append(item)
    return out


def _bars(statuses: list[tuple[str | None, str]]) -> str:
    e = html.escape
    return "<div class=\"bars\">" + "".join(
        f"<span style=\"background:{_COLOURS[s]}\" title=\"{e(t)}\"></span>"
        for s, t in statuses) + "</div>"


def _chart(title: str, unit: str, points: list[float], limit: float | None) -> str:
    """A small line chart: the values left to right, the amber threshold dashed."""
    if not points:
        return f"<div class=\"chart\"><b>{html.escape(title)}</b><div class=\"muted\">" \
               "no results yet</div></div>"
    top = max(max(points), limit or 0) * 1.15 or 1.0
    width, height = 300.0, 90.0
    step = width / max(1, len(points) - 1)
    coords = " ".join(f"{i * step:.1f},{height - v / top * (height - 6) - 3:.1f}"
                      for i, v in enumerate(points))
    threshold = "" if limit is None else (
        f"<line x1=\"0\" x2=\"{width}\" y1=\"{height - limit / top * (height - 6) - 3:.1f}\""
        f" y2=\"{height - limit / top * (height - 6) - 3:.1f}\" stroke=\"#d29922\""
        " stroke-dasharray=\"4 4\" stroke-width=\"1\"/>")
    last = points[-1]
    return (f"<div class=\"chart\"><b>{html.escape(title)}</b> <span class=\"muted\">last"
            f" {last:.1f} {unit}, max {max(points):.1f} {unit}</span>"
            f"<svg viewBox=\"0 0 {width:.0f} {height:.0f}\" preserveAspectRatio=\"none\""
            f" role=\"img\" aria-label=\"{html.escape(title)}\">{threshold}"
            f"<polyline fill=\"none\" stroke=\"#58a6ff\" stroke-width=\"2\""
            f" points=\"{coords}\"/></svg></div>")


def _line_section(store: ServerStore, board: LineBoard, state: linetest.LineState,
                  now: int) -> str:
    e = html.escape
    history = store.linetest_history(state.line, now - linetest.DAY_MS * 90)
    daily = linetest.daily_history([(r["ended_ms"], s) for r, s, _ in history], now)
    day_bars = _bars([(s, f"{90 - i} days ago: {s or 'no result'}")
                      for i, s in enumerate(daily)])
    recent = history[-RECENT_BARS:]
    recent_bars = _bars([(s, f"{linetest.age_text(now - r['ended_ms'])} ago: {s}"
                             + (f" ({'; '.join(why)})" if why else ""))
                         for r, s, why in recent])
    charted = history[-CHART_POINTS:]
    setup = [max((m.get("setup_ms") or 0) for m in (r["caller_measured"],
                                                    r["callee_part"]["measured"])) / 1000
             for r, _, _ in charted]
    loss = [max(linetest.loss_pct(r["caller_measured"]),
                linetest.loss_pct(r["callee_part"]["measured"])) for r, _, _ in charted]
    last = board.last(state.line)
    if last is None:
        tested = "never tested"
        signed = ""
    else:
        record = last[0]
        tested = (f"last test {linetest.age_text(now - record['ended_ms'])} ago"
                  f" ({e(record['caller'])} called {e(record['callee'])})")
        devices = {d.device_id: d for d in store.devices()}
        marks = []
        for who in (record["callee"], record["caller"]):
            known = devices.get(who)
            marks.append(f"<span class=\"ok\">✓</span> {e(who)}"
                         + (f" <code>{e(known.fingerprint)}</code>" if known else ""))
        signed = ("<div class=\"sig\">Last result signed by both ends, both signatures"
                  " verified against the enrolled keys: " + " · ".join(marks) + "</div>")
    reasons = "".join(f"<li>{e(r)}</li>" for r in state.reasons)
    t = board.thresholds
    return f"""<section class="line" id="line-{e(state.line)}" data-line="{e(state.line)}"
data-status="{state.status}">
<h3><span class="dot {state.status}"></span>{e(state.line.replace(':', ' ⇄ '))}
<span class="state {state.status}">{state.status}</span>
<span class="muted" style="font-size:14px;font-weight:400">{tested}</span></h3>
{f'<ul class="reasons">{reasons}</ul>' if reasons else ''}
<div class="muted" style="margin-top:8px">90 days, a bar per day (worst result)</div>
{day_bars}<div class="legend"><span>90 days ago</span><span>today</span></div>
<div class="muted" style="margin-top:8px">Latest {len(recent)} tests, a bar per test</div>
{recent_bars}
<div class="charts">{_chart("Setup time", "s", setup, t.amber_setup_ms / 1000)}
{_chart("Packet loss", "%", loss, t.amber_loss_pct)}</div>
{signed}
</section>"""


def render_status(store: ServerStore, board: LineBoard, online: set[str],
                  counters: dict[str, Any], uptime_ms: int, now: int, node: str = "") -> str:
    e = html.escape
    devices = store.device_records()
    active = [d for d in devices if d.revoked_ms is None]
    rows = "".join(
        f"<tr><td>{e(p.name)}</td><td>{e(p.display)}</td><td>{e(p.timezone)}</td></tr>"
        for p in store.principals())
    states = board.states(now)
    lines = "".join(_line_section(store, board, s, now) for s in states)
    worst = max((s.status for s in states), key=linetest.SEVERITY.__getitem__, default=None)
    def state(device_id: str, revoked: bool) -> tuple[str, str]:
        if revoked:
            return "off", "revoked"
        return ("on", "online") if device_id in online else ("off", "offline")

    devs = "".join(
        f"<tr><td>{e(d.device_id)}</td><td class=\"{state(d.device_id, bool(d.revoked_ms))[0]}\">"
        f"{state(d.device_id, bool(d.revoked_ms))[1]}</td>"
        f"<td><code>{e(d.fingerprint)}</code></td></tr>" for d in devices)
    stats = " · ".join(f"{e(k)} {v}" for k, v in counters.items())
    title = f"{worst.upper()} · Parley line server" if worst else "Parley line server"
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10"><title>{e(title)}</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style></head><body><main>
<h1>Parley line server</h1>
<div class="muted">up {_uptime(uptime_ms)} · {len(online)} of {len(active)} devices online ·
{e(stats)}</div>{f'<div class="muted" data-testid="node">{e(node)}</div>' if node else ""}
<p class="muted">This server routes sealed envelopes. It never sees message or call content,
and terminals do not trust the keys it lists: they check them against keys verified in person.
A line is green only on a test result signed by both ends; with none for two test intervals
it turns red by itself.</p>
<h2>Lines</h2>{lines or '<p class="muted">no lines yet</p>'}
<h2>Parties</h2><table><tr><th>name</th><th>display</th><th>time zone</th></tr>{rows}</table>
<h2>Devices</h2><table><tr><th>device</th><th>status</th><th>fingerprint (as listed here)</th>
</tr>{devs or '<tr><td class="muted">none enrolled</td></tr>'}</table>
</main></body></html>"""
