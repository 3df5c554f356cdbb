"""The `parley` command: parses arguments and calls the parts that do the work."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from parley import __version__
from parley.clock import now_ms
from parley.config import Option, add_options, default_home, resolve
from parley.core.errors import ErrorCode, LocalError, ParleyError
from parley.printable import printable

log = logging.getLogger("parley")


_DURATION_UNITS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
DURATION_HELP = "a duration such as 90s, 30m, 24h, 1h30m or 7d"


def _duration_ms(text: str) -> int:
    """'24h', '90m', '1h30m', '7d', '45s' (a bare number: seconds) -> milliseconds."""
    spec = text.strip().lower()
    parts = re.findall(r"(\d+)([dhms])", spec)
    if re.fullmatch(r"\d+", spec):
        total = int(spec) * 1000
    elif parts and "".join(n + u for n, u in parts) == spec:
        total = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise argparse.ArgumentTypeError(f"{text!r} is not {DURATION_HELP}")
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be more than nothing")
    return total


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.root.level))


# --- options -------------------------------------------------------------------------------

def _limit_options() -> list[Option]:
    """One option per server limit, named, typed and explained by `core.relay.limits`."""
    from dataclasses import fields

    from parley.core.relay.limits import LIMIT_HELP, Limits

    return [Option(f.name.replace("_", "-"), LIMIT_HELP[f.name], f.default,
                   type=int if isinstance(f.default, int) else float) for f in fields(Limits)]


def _threshold_options() -> list[Option]:
    """One option per line-test threshold (``--linetest-amber-loss-pct``...), from
    `core.linetest.Thresholds`; the same for the server and the terminals."""
    from dataclasses import fields

    from parley.core.linetest import THRESHOLD_HELP, Thresholds

    return [Option("linetest-" + f.name.replace("_", "-"), THRESHOLD_HELP[f.name], f.default,
                   type=int if isinstance(f.default, int) else float)
            for f in fields(Thresholds)]


SERVER_OPTIONS = [
    Option("data", "server data directory", default_home() / "server", type=Path),
    Option("database", "where the server keeps its state: sqlite: (server.db in the data"
           " directory, the default), sqlite:///PATH, or postgresql://USER@HOST:PORT/DB (which"
           " any number of nodes serve at once; a password goes in ~/.pgpass, not here)"),
    Option("standby", "with a PostgreSQL --database: do not serve beside other nodes; wait,"
           " not listening, while any serves, and take over once none does", False, flag=True),
    Option("host", "address to listen on", "127.0.0.1"),
    Option("port", "port to listen on (0: any free port)", 8800, type=int),
    Option("public-url", "URL terminals use to reach this server (default http://HOST:PORT)"),
    Option("log-level", "debug, info, warning or error", "info"),
    Option("admin-token", "the token the status page, /lines.json and /metrics ask for (on"
           " loopback: none unless given; elsewhere: admin.token in the data directory)"),
    Option("alert-webhook", "POST each change of a line's state here (Alertmanager's webhook"
           " format, signed: see 'parley server alert-key')", [], many=True),
    Option("linetest-interval", "seconds between a line's scheduled tests, for a result that"
           " does not say (a line is red after twice this without one)", 3600, type=int),
    Option("turn", "a TURN server whose credentials this server issues to logged-in devices"
           " for their calls (turn:HOST:PORT; with --turn-secret-file)", [], many=True),
    Option("turn-secret-file", "the secret shared with the TURN server (coturn's"
           " static-auth-secret), in a file of its own, mode 0600", type=Path),
    Option("turn-ttl", "how long issued TURN credentials last, in seconds", 86_400, type=int),
    *_threshold_options(),
    *_limit_options(),
]
STORE_OPTIONS = SERVER_OPTIONS[:2]  # where the administration commands find the store
TERMINAL_OPTIONS = [
    Option("data", "terminal data directory", default_home() / "terminal", type=Path),
    Option("server", "line server URL (default: the one enrolled with)"),
    Option("failover-server", "another node of the same line host, tried in turn when the"
           " server cannot be reached (once per node)", [], many=True),
    Option("require-verified", "refuse calls with peers whose key is not verified", True,
           flag=True),
    Option("auto-answer", "accept incoming calls at once (robots)", False, flag=True),
    Option("ui-port", "port of the local UI/API on 127.0.0.1 (0: any free port)", 8810,
           type=int),
    Option("ice-host", "offer exactly this host address as an ICE candidate, e.g. 127.0.0.1"
           " for loopback-only machines", [], many=True),
    Option("ice-server", "STUN/TURN server (stun:HOST:PORT, turn:USER:PASS@HOST:PORT);"
           " none by default, never a public one", [], many=True),
    Option("media", "who does the media: robot (aiortc in this process) or browser (the"
           " person's web UI)", "robot"),
    Option("play", "send this media file instead of the test pattern and tone", type=Path),
    Option("record", "record received media to DIR/<call>.webm", type=Path),
    Option("media-timeout", "seconds without any media from the peer after which a robot's"
           " call reconnects (0: never)", 3.0, type=float),
    Option("reconnect-give-up", "a call whose media was lost and does not come back within"
           " this many seconds ends ('connection lost')", 60.0, type=float),
    Option("media-rekey", "seconds between new media keys in an active call: each side renews"
           " the key of what it sends (0: only at each new connection)", 600.0, type=float),
    Option("messages-relayed", "for benchmarks only: messages are relayed, not stored, by the"
           " server (nothing waits for a recipient that is away)", False, flag=True),
    Option("timezone", "this site's time zone for scheduled talks (default: its party's, as"
           " the line host registered it)"),
    Option("test-set", "run as this site's test set: robot media, takes part in line tests"
           " only, never in a real call", False, flag=True),
    Option("linetest-every", "a test set tests each of its lines this often, in seconds"
           " (give or take a tenth; 0: never on its own)", 3600.0, type=float),
    Option("linetest-duration", "seconds a line test's call lasts", 10.0, type=float),
    Option("peer-test-set", "the device name of the other sites' test sets", "testset"),
    Option("record-texts", "the record keeps the texts of messages (default: their SHA-256"
           " only)", False, flag=True),
    Option("record-every", "checkpoints of the record are exchanged with the other site at"
           " least this often, in seconds (and after every call)", 3600.0, type=float),
    Option("log-level", "debug, info, warning or error", "info"),
    *_threshold_options(),
]
DATA_OPTION = [Option("data", "terminal data directory", default_home() / "terminal", type=Path)]


# --- server ---------------------------------------------------------------------------------

def server_config(cfg: dict[str, Any]) -> Any:
    from dataclasses import fields

    from parley.core.linetest import Thresholds
    from parley.core.relay.limits import Limits
    from parley.server.app import ServerConfig

    limits = Limits(**{f.name: cfg[f.name] for f in fields(Limits)})
    return ServerConfig(data_dir=cfg["data"], host=cfg["host"], port=cfg["port"],
                        public_url=cfg["public_url"], limits=limits,
                        thresholds=Thresholds.from_settings(cfg),
                        linetest_interval_s=cfg["linetest_interval"],
                        alert_webhooks=list(cfg["alert_webhook"]),
                        admin_token=cfg["admin_token"], turn=_turn_config(cfg),
                        database=cfg["database"], standby=cfg["standby"])


def _turn_config(cfg: dict[str, Any]) -> Any:
    from parley.core.turn import TurnConfig
    from parley.files import check_private

    if not cfg["turn"] and cfg["turn_secret_file"] is None:
        return None
    if not cfg["turn"] or cfg["turn_secret_file"] is None:
        raise LocalError("--turn and --turn-secret-file go together",
                         code=ErrorCode.BAD_CONFIG,
                         hint="give the TURN server's URL and the file holding its secret")
    path: Path = cfg["turn_secret_file"]
    check_private([path], what="the TURN secret", secret=True)
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise LocalError(f"cannot read the TURN secret {path}: {exc.strerror}",
                         code=ErrorCode.BAD_CONFIG) from None
    return TurnConfig(tuple(cfg["turn"]), secret, cfg["turn_ttl"])


def cmd_server_run(args: argparse.Namespace) -> int:
    from parley.server.app import run_server

    cfg = _server_settings(args)
    _setup_logging(cfg["log_level"])
    if cfg["host"] not in ("127.0.0.1", "::1", "localhost"):
        log.warning("listening on %s: reachable beyond this machine; the status page and"
                    " /metrics need the admin token ('parley server admin-token')", cfg["host"])
    config = server_config(cfg)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(
            config, on_ready=lambda url: print(f"ready: {url}", flush=True),
            on_standby=lambda why: print(f"standby: {why}; taking over when it stops",
                                         flush=True)))
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    from parley.server.app import load_admin_token

    cfg = _server_settings(args)
    token = cfg["admin_token"] or load_admin_token(cfg["data"])
    print(token if args.quiet else f"admin token: {token}\n  the status page:"
          f" {_server_address(args)}/?token={token}; Prometheus: 'authorization:"
          " {credentials: ...}' with it as a bearer token")
    return 0


def cmd_alert_key(args: argparse.Namespace) -> int:
    from parley.server.alerts import SIGNATURE_HEADER, load_alert_key, public_key_text

    data = _server_settings(args)["data"]
    from parley.files import private_dir

    private_dir(data)
    key = public_key_text(load_alert_key(data))
    if args.json:
        print(json.dumps({"algorithm": "ed25519", "public_key": key,
                          "header": SIGNATURE_HEADER}))
    else:
        print(f"ed25519 {key}")
        print(f"  every alert webhook body is signed with this key: header {SIGNATURE_HEADER}:"
              " ed25519=<base64 signature of the exact body>")
    return 0


def _server_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The server's settings: the data directory first (flag, environment), then everything
    else with that directory's parley.toml."""
    data = resolve(args, SERVER_OPTIONS[:1], "server")["data"]
    return resolve(args, SERVER_OPTIONS, "server", data)


def _server_store(args: argparse.Namespace) -> Any:
    from parley.server.store import open_store

    cfg = _server_settings(args)
    return open_store(cfg["database"], cfg["data"])


def cmd_principal_add(args: argparse.Namespace) -> int:
    p = _server_store(args).add_principal(args.name, args.display or args.name, args.timezone,
                                          now_ms())
    print(f"party {p.name} ({p.display}, {p.timezone}) created")
    return 0


def cmd_principal_list(args: argparse.Namespace) -> int:
    for p in _server_store(args).principals():
        print(f"{p.name:20} {p.display:30} {p.timezone}")
    return 0


def cmd_line_add(args: argparse.Namespace) -> int:
    _server_store(args).add_line(args.a, args.b, now_ms())
    print(f"line {args.a} <-> {args.b} open")
    return 0


def cmd_line_list(args: argparse.Namespace) -> int:
    store = _server_store(args)
    for a, b in store.lines():
        media = store.line_media(a, b)
        print(f"{a} <-> {b}" + ("  (media through the TURN relay only)" if media == "relay"
                                else ""))
    return 0


def cmd_line_media(args: argparse.Namespace) -> int:
    _server_store(args).set_line_media(args.a, args.b, args.policy)
    print(f"line {args.a} <-> {args.b}: " + (
        "calls go through the TURN relay only (neither site learns the other's addresses)"
        if args.policy == "relay" else "calls may go directly"))
    return 0


def cmd_enroll_code(args: argparse.Namespace) -> int:
    ttl = args.ttl
    code = _server_store(args).create_enroll_code(args.party, ttl, now_ms())
    if args.quiet:
        print(code)
    else:
        print(f"enrollment code for {args.party}: {code}")
        print(f"valid once, for {ttl // 3_600_000}h{ttl // 60_000 % 60:02d}m. On the device:")
        print(f"  parley terminal enroll --server {_server_address(args)} --code {code}")
        print("  (the address as this server's settings give it: --public-url, or --host and"
              " --port, in parley.toml or the environment)")
    return 0


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + " UTC"


def cmd_devices(args: argparse.Namespace) -> int:
    records = _server_store(args).device_records()
    if args.json:
        print(json.dumps([r.__dict__ for r in records]))
        return 0
    for d in records:
        state = f"REVOKED {_when(d.revoked_ms)}" if d.revoked_ms else \
            f"enrolled {_when(d.enrolled_ms)}"
        print(f"{d.device_id:30} {d.fingerprint}  {state}")
    if not records:
        print("no device is enrolled yet ('parley server enroll-code PARTY' makes a code)")
    return 0


def cmd_device_replace(args: argparse.Namespace) -> int:
    store = _server_store(args)
    code = store.replace_device(args.device, args.ttl, now_ms(), args.reason or "")
    log.warning("device %s: keys revoked by the operator; replacement code issued", args.device)
    print(f"{args.device}: its keys are revoked now; it can no longer log in.")
    print(f"replacement code (valid once, {_ttl_text(args.ttl)}): {code}")
    print("On the replacement terminal, initialised with the same device name:")
    print(f"  parley terminal enroll --server {_server_address(args)} --code {code}")
    print("Its peers see a changed key and must verify it again before they call it.")
    return 0


def cmd_device_revoke(args: argparse.Namespace) -> int:
    store = _server_store(args)
    store.revoke_device(args.device, now_ms(), args.reason or "")
    log.warning("device %s revoked by the operator", args.device)
    print(f"{args.device} is revoked: it can no longer log in, and nothing is routed to it.")
    print(f"To enroll new keys under this name: parley server device replace {args.device}")
    return 0


def cmd_migrate_store(args: argparse.Namespace) -> int:
    from parley.files import DataLock
    from parley.server.store import copy_store, open_store, redact

    cfg = _server_settings(args)
    if not args.to:
        raise LocalError("say where to copy the line: --to postgresql://USER@HOST:PORT/DB",
                         code=ErrorCode.INVALID_INPUT)
    # The server must not run on the source meanwhile: what it stored after the copy
    # began would not be in the copy.
    with DataLock(cfg["data"], "a line server", secret=False):
        # A PostgreSQL source is held alone: refused while a node serves it.
        source = open_store(cfg["database"], cfg["data"], alone=True)
        try:
            target = open_store(args.to, cfg["data"])
            try:
                print(f"copying {source.where} into {target.where}", flush=True)
                counts = copy_store(source, target, progress=lambda table, n: print(
                    f"  {table:13} {n:9,d} rows", flush=True))
            finally:
                target.close()
        finally:
            source.close()
    if args.json:
        print(json.dumps({"copied": counts, "to": redact(args.to)}))
    else:
        print(f"done: {sum(counts.values()):,d} rows in one transaction. Start the server"
              f" (every node) with --database {redact(args.to)}; {cfg['data']} keeps its admin"
              " token and alert key, the old database is left as it was.")
    return 0


def cmd_codes(args: argparse.Namespace) -> int:
    codes = _server_store(args).unspent_codes(now_ms())
    for party, device, created, expires in codes:
        what = f"replaces {device}" if device else "enrolls a new device"
        print(f"{party:20} {what:40} made {_when(created)}, expires {_when(expires)}")
    if not codes:
        print("no unspent enrollment codes")
    return 0


def cmd_cancel_code(args: argparse.Namespace) -> int:
    party = _server_store(args).cancel_code(args.code, now_ms())
    print(f"the code for {party} is cancelled: it enrolls nothing now")
    return 0


def cmd_device_log(args: argparse.Namespace) -> int:
    for event in _server_store(args).device_log(args.limit):
        line = f"{_when(event.time_ms)}  {event.action:9} {event.device}"
        if event.fingerprint:
            line += f"  {event.fingerprint}"
        print(line + (f"  ({event.detail})" if event.detail else ""))
    return 0


def _ttl_text(ttl: int) -> str:
    return f"for {ttl // 3_600_000}h{ttl // 60_000 % 60:02d}m"


def _server_address(args: argparse.Namespace) -> str:
    """The URL terminals enroll at, as this server's configuration says."""
    cfg = _server_settings(args)
    return (cfg["public_url"] or f"http://{cfg['host']}:{cfg['port']}").rstrip("/")


# --- terminal -------------------------------------------------------------------------------

def cmd_ui(args: argparse.Namespace) -> int:
    """The running terminal's page: its address now (the token changes at every start)."""
    from parley.terminal.store import CONTROL_FILE

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    status = control_request(data, "GET", "/api/status")  # it runs, and answers
    info = json.loads((data / CONTROL_FILE).read_text())
    url = f"{info['url']}/?token={info['token']}"
    print(f"ui: {url}")
    print(f"  {status['device']}'s page; open it in a browser on this machine"
          f" ({status['media']} media)")
    return 0


def cmd_terminal_init(args: argparse.Namespace) -> int:
    from parley.terminal.store import TerminalStore

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    store = TerminalStore.init(data, args.name)
    public = store.load_keys().public(f"unenrolled/{args.name}")
    print(f"new device {args.name!r} in {data}")
    print(f"device fingerprint: {public.fingerprint}")
    print("next: parley terminal enroll --server URL --code CODE" + (
        f" --data {data}" if getattr(args, "data", None) else ""))
    return 0


def cmd_terminal_enroll(args: argparse.Namespace) -> int:
    from parley.terminal.enroll import enroll
    from parley.terminal.store import TerminalStore

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    store = TerminalStore(data)
    public = asyncio.run(enroll(store, args.server, args.code))
    print(f"enrolled as {public.device_id}")
    print(f"device fingerprint: {public.fingerprint}")
    return 0


def terminal_config(cfg: dict[str, Any]) -> Any:
    from parley.core.linetest import DEFAULT_INTERVAL_S, Thresholds
    from parley.media.ice import IceConfig, parse_ice_server
    from parley.media.robot import RobotOptions
    from parley.terminal.app import TerminalConfig
    from parley.terminal.linetest import LineTestSettings

    ice = IceConfig(servers=tuple(parse_ice_server(s) for s in cfg["ice_server"]),
                    host_addresses=tuple(cfg["ice_host"]) or None)
    return TerminalConfig(
        data_dir=cfg["data"], server_url=cfg["server"],
        failover_servers=tuple(cfg["failover_server"]), require_verified=cfg["require_verified"],
        auto_answer=cfg["auto_answer"], ui_port=cfg["ui_port"], media=cfg["media"],
        messages_stored=not cfg["messages_relayed"],
        robot=RobotOptions(ice=ice, play=cfg["play"], record_dir=cfg["record"],
                           # A test set's call is a line test: a gap fails it, and is not
                           # reconnected; 10 s, as before calls reconnected.
                           silence_timeout_s=max(cfg["media_timeout"], 10.0)
                           if cfg["test_set"] and cfg["media_timeout"] else
                           cfg["media_timeout"]),
        timezone=cfg["timezone"], record_texts=cfg["record_texts"],
        reconnect_give_up_s=cfg["reconnect_give_up"],
        media_rekey_s=max(0.0, cfg["media_rekey"]),
        record_interval_s=max(5.0, cfg["record_every"]),
        linetest=LineTestSettings(
            test_set=cfg["test_set"], scheduled=cfg["linetest_every"] > 0,
            every_s=cfg["linetest_every"] or float(DEFAULT_INTERVAL_S),
            duration_s=cfg["linetest_duration"], thresholds=Thresholds.from_settings(cfg),
            peer_test_set=cfg["peer_test_set"]))


def cmd_terminal_run(args: argparse.Namespace) -> int:
    from parley.terminal.runner import run_terminal

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    cfg = resolve(args, TERMINAL_OPTIONS, "terminal", data)
    _setup_logging(cfg["log_level"])
    asyncio.run(run_terminal(terminal_config(cfg), cfg["ice_host"]))
    return 0


# --- keys -----------------------------------------------------------------------------------

def cmd_keys_show(args: argparse.Namespace) -> int:
    from parley.terminal.store import TerminalStore

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    store = TerminalStore(data)
    me = store.load_keys().public(store.device_id)
    pins = store.pins()
    store.close()
    from parley.core.bundle import signing_key_text

    if args.json and not args.peer:
        print(json.dumps({"device": me.device_id, "fingerprint": me.fingerprint,
                          "signing_key": signing_key_text(me.sign),
                          "verified": [k.device_id for k, _, _ in pins]}))
        return 0
    if not args.peer:
        print(f"this device:  {me.device_id}")
        print(f"fingerprint:  {me.fingerprint}")
        # What a paper copy of a joint statement names its signers by (docs/record.md).
        print(f"signing key:  {signing_key_text(me.sign)}")
        print("verified peers: " + (", ".join(k.device_id for k, _, _ in pins) or "none"))
        print("to compare with a peer: parley keys show PARTY")
        return 0

    from parley.terminal.peers import with_peer_book

    devices = asyncio.run(with_peer_book(data, lambda peers: peers.describe(args.peer)))
    if args.json:
        print(json.dumps({"device": me.device_id, "peers": devices}))
        return 0
    if not devices:
        print(f"{args.peer} has no enrolled device")
    for d in devices:
        mark = {"verified": "VERIFIED", "unverified": "not verified",
                "changed": "!! KEY CHANGED since you verified it !!"}[d["trust"]]
        print(f"{d['device']}  [{mark}]{'  online' if d['online'] else ''}")
        print(f"  their fingerprint: {d['fingerprint']}")
        print(f"  signing key:       {d['signing_key']}")
        digits = d["safety_number"].split()
        print(f"  safety number:     {' '.join(digits[:6])}")
        print(f"                     {' '.join(digits[6:])}")
    print("Compare the safety number with the other operator out of band, then:")
    print(f"  parley keys verify {args.peer} --safety-number \"<the 60 digits>\"")
    return 0


def cmd_keys_verify(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    if args.safety_number is None and not args.yes:
        raise LocalError("give the safety number you compared",
                         code=ErrorCode.BAD_MESSAGE,
                         hint="--safety-number \"<the 60 digits>\" (or --yes if you compared it"
                              " on screen)")

    from parley.terminal.peers import with_peer_book

    device = asyncio.run(with_peer_book(
        data, lambda peers: peers.verify(args.target, args.safety_number, now_ms())))
    print(f"{device.device_id} verified and pinned on this terminal")
    print(f"fingerprint: {device.fingerprint}")
    return 0


def cmd_keys_forget(args: argparse.Namespace) -> int:
    from parley.terminal.store import TerminalStore

    store = TerminalStore(resolve(args, DATA_OPTION, "terminal")["data"])
    if not store.remove_pin(args.target):
        raise LocalError(f"no verified key for {args.target}", code=ErrorCode.UNKNOWN_DEVICE,
                         hint="give the full device id, as 'parley keys show' lists it")
    print(f"{args.target} is no longer verified here")
    return 0


# --- talking to a running terminal ----------------------------------------------------------

def control_request(data: Path, method: str, path: str, body: dict[str, Any] | None = None,
                    *, raw: bytes | None = None, timeout: float = 20,
                    as_bytes: bool = False) -> Any:
    """Ask the running terminal's local API; its JSON answer (or, `as_bytes`, its body)."""
    from parley.terminal.store import CONTROL_FILE

    try:
        info = json.loads((data / CONTROL_FILE).read_text())
    except (OSError, ValueError):
        raise LocalError(f"no terminal is running for {data}", code=ErrorCode.BAD_CONFIG,
                         hint=f"start it with 'parley terminal run --data {data}'") from None
    req = urllib.request.Request(
        info["url"] + path, method=method,
        data=raw if raw is not None else json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {info['token']}",
                 "Content-Type": "application/octet-stream" if raw is not None
                 else "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = resp.read()
            return answer if as_bytes else json.loads(answer)
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read() or b"{}").get("error", {})
        except ValueError:  # not the terminal's own refusal: a failure inside it
            err = {"message": f"the terminal failed to answer {method} {path} (HTTP"
                              f" {exc.code})", "hint": "its log says why"}
        raise LocalError(err.get("message", str(exc)), code=ErrorCode.from_wire(err.get("code")),
                         hint=err.get("hint", "")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise LocalError(f"the terminal for {data} does not answer: {exc}",
                         code=ErrorCode.BAD_CONFIG, hint="is 'parley terminal run' running?"
                         ) from None


def _live_call(data: Path) -> dict[str, Any]:
    status = control_request(data, "GET", "/api/status")
    live = [c for c in status["calls"] if c["state"] != "ended"]
    if not live:
        raise LocalError("there is no call in progress", code=ErrorCode.NO_SUCH_CALL)
    return dict(live[-1])


def cmd_call(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    info = control_request(data, "POST", "/api/call",
                           {"target": args.target, "media": "audio" if args.voice else "video"})
    print(f"calling {info['peer']} ({info['media']}), call {info['call_id']}")
    deadline = time.monotonic() + 60
    last = None
    while time.monotonic() < deadline:
        info = control_request(data, "GET", f"/api/calls/{info['call_id']}")
        if info["state"] != last:
            last = info["state"]
            extra = f"  SAS {info['sas']} -- read it aloud" if info["state"] == "active" else ""
            print(f"  {info['state']}{extra}")
        if info["state"] in ("active", "ended"):
            break
        time.sleep(0.2)
    if info["state"] == "ended":
        print(f"call ended: {info['end_reason']}" + (f" ({info['alarm']})" if info["alarm"]
                                                      else ""))
        if info["end_reason"] == "no_answer":
            print(f"  nobody answered at {info['peer']}: is someone there, with its page open"
                  " (or its terminal run with --auto-answer)?")
        return 1
    return 0


def cmd_hangup(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    call = _live_call(data)
    control_request(data, "POST", f"/api/calls/{call['call_id']}/hangup")
    print(f"hung up the call with {call['peer']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    status = control_request(data, "GET", "/api/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['device']}  server {status['server']}: "
          f"{'connected' if status['connected'] else 'NOT CONNECTED'}")
    for call in status["calls"][-5:]:
        print(f"  call {call['direction']} {call['peer']}: {call['state']}"
              + (f" ({call['end_reason']})" if call["end_reason"] else "")
              + (f" SAS {call['sas']}" if call["sas"] and call["state"] == "active" else "")
              + (f"; media {call['media_protection']}"
                 + ("" if call["media_protection"] == "sframe+dtls-srtp"
                    else " -- NOT protected end to end")
                 if call["state"] in ("active", "reconnecting") else ""))
    from parley.core.linetest import age_text

    for line in status.get("line_tests") or []:
        print(f"  line {_linetest_line(line)}"
              + (f" (tested {age_text(line['age_ms'])} ago)" if line["age_ms"] is not None
                 else ""))
    unread = status.get("unread") or {}
    if unread:
        print("  unread messages: " + ", ".join(f"{party} {n}" for party, n in
                                                sorted(unread.items()))
              + " ('parley message list --party PARTY' reads them)")
    alarms = status["alarms"]
    for alarm in alarms[-5:]:
        times = f" (x{alarm['count']})" if alarm.get("count", 1) > 1 else ""
        print(f"  ALARM #{alarm['id']} {alarm['title']} [{alarm['code']}]{times}:"
              f" {alarm['message']}")
    if alarms:
        print(f"  {len(alarms)} open alarm(s): 'parley alarms' lists them, 'parley alarms ack'"
              " acknowledges")
    return 0


def _running(data: Path) -> bool:
    try:
        control_request(data, "GET", "/api/status")
    except LocalError:
        return False
    return True


def cmd_alarms(args: argparse.Namespace) -> int:
    from parley.terminal.store import TerminalStore

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    store = TerminalStore(data)
    try:
        alarms = [a.to_json() for a in store.alarms(include_acknowledged=args.all)]
    finally:
        store.close()
    if args.json:
        print(json.dumps(alarms))
        return 0
    if not alarms:
        print("no open alarms" + ("" if args.all else " ('--all' lists acknowledged ones too)"))
        return 0
    for alarm in alarms:
        times = f" x{alarm['count']}" if alarm["count"] > 1 else ""
        state = f"acknowledged {_when(alarm['acked_ms'])}" if alarm["acked_ms"] else "OPEN"
        print(f"#{alarm['id']:<4} {state}  {alarm['title']} [{alarm['code']}]{times}")
        print(f"      last {_when(alarm['last_ms'])}"
              + (f", first {_when(alarm['first_ms'])}" if alarm["count"] > 1 else ""))
        print(f"      {printable(alarm['message'], newlines=False)}")
        if alarm["hint"]:
            print(f"      what to do: {alarm['hint']}")
        if alarm["ack_note"]:
            print(f"      note: {alarm['ack_note']}")
    open_ones = [a for a in alarms if not a["acked_ms"]]
    if open_ones:
        print(f"{len(open_ones)} open; once dealt with: parley alarms ack ID ... (or --all)")
    return 0


def cmd_alarms_ack(args: argparse.Namespace) -> int:
    from parley.terminal.store import TerminalStore

    if not args.ids and not args.all:
        raise LocalError("name the alarms to acknowledge", code=ErrorCode.BAD_MESSAGE,
                         hint="parley alarms ack ID ... (numbers from 'parley alarms'), or --all")
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    ids = None if args.all else args.ids
    if _running(data):  # through the terminal, so that its pages update at once
        body: dict[str, Any] = {"all": True} if ids is None else {"ids": ids}
        done = control_request(data, "POST", "/api/alarms/ack",
                               {**body, "note": args.note or ""})["acknowledged"]
    else:
        store = TerminalStore(data)
        try:
            done = store.acknowledge_alarms(ids, now_ms(), args.note or "")
        finally:
            store.close()
    missing = sorted(set(ids or []) - set(done))
    if done:
        print(f"acknowledged: {', '.join(f'#{i}' for i in done)}")
    if missing:
        raise LocalError(f"no open alarm {', '.join(f'#{i}' for i in missing)}",
                         code=ErrorCode.BAD_MESSAGE, hint="'parley alarms' lists the open ones")
    if not done:
        print("no open alarms")
    return 0


def _message_line(m: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m["time_ms"] / 1000))
    who = m["sender"] if not m["outgoing"] else "you" if m.get("mine", True) else \
        f"you, on {m['sender']}"
    if m.get("late"):
        who += " (came late, after it was declared lost)"
    text = printable(m["text"] or "").replace("\n", "\n      ")  # the other side's words
    if m["kind"] == "lost":
        return f"{when}  !! {text}"
    if m["kind"] == "file":
        f = m["file"]
        what = f"[file {printable(f['name'], newlines=False)}, {f['size']:,} bytes" + (
            f", {f['done']}/{f['chunks']} parts" if m["state"] in ("receiving", "queued") else "")
        what += f", {m['state']}]" + (f" {text}" if text else "")
    else:
        what = text
    status = ""
    if m["outgoing"] and m.get("mine", True):
        ds = m["deliveries"]
        read = [d["device"] for d in ds if d["read_ms"]]
        delivered = [d["device"] for d in ds if d["delivered_ms"]]
        status = (f"  (read by {', '.join(read)})" if read else
                  f"  (delivered to {', '.join(delivered)})" if delivered else
                  f"  ({m['state']})")
    return f"{when}  {who}: {what}{status}"


def cmd_message_send(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    if (args.text is None) == (args.file is None):
        raise LocalError("give the text, or --file PATH", code=ErrorCode.BAD_MESSAGE,
                         hint="parley message send --to moscow \"the text\"")
    if args.file is not None:
        from urllib.parse import urlencode

        try:
            content = args.file.read_bytes()
        except OSError as exc:
            raise LocalError(f"cannot read {args.file}: {exc.strerror}",
                             code=ErrorCode.BAD_CONFIG) from None
        query = urlencode({"to": args.to, "name": args.file.name,
                           "caption": args.caption or ""})
        info = control_request(data, "POST", f"/api/messages/file?{query}", raw=content,
                               timeout=120)
        print(f"queued {info['file']['name']} ({info['file']['size']:,} bytes,"
              f" {info['file']['chunks']} parts) for {args.to}: message {info['msg_id']}")
    else:
        info = control_request(data, "POST", "/api/messages", {"to": args.to,
                                                                "text": args.text})
        print(f"queued for {args.to}: message {info['msg_id']}")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        found = [m for m in control_request(data, "GET", f"/api/messages?party={args.to}"
                                            "&limit=1000")["messages"]
                 if m["msg_id"] == info["msg_id"]]
        if found and found[0]["deliveries"] and all(d["delivered_ms"]
                                                    for d in found[0]["deliveries"]):
            print(f"delivered to {', '.join(d['device'] for d in found[0]['deliveries'])}")
            return 0
        time.sleep(0.2)
    print(f"not yet delivered after {args.wait:g} s; it stays queued and is sent as soon as it"
          " can be")
    return 1


def _messages_offline(data: Path, fn: Callable[[Any], Any]) -> Any:
    """Read the terminal's messages from its store (when it is not running)."""
    from parley.terminal.message_store import MessageStore
    from parley.terminal.store import TerminalStore

    store = TerminalStore(data)
    try:
        return fn(MessageStore(store.db, data))
    finally:
        store.close()


def cmd_message_list(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    query = f"/api/messages?limit={args.limit}" + (f"&party={args.party}" if args.party else "")
    if _running(data):
        got = control_request(data, "GET", query)
        messages, unread = got["messages"], got["unread"]
        if not args.keep_unread:
            for party in sorted({m["party"] for m in messages if not m["outgoing"]
                                 and not m["read_ms"]}):
                # Read as far as what was printed: not what arrived since.
                upto = max(m["order"] or 0 for m in messages if m["party"] == party)
                control_request(data, "POST", "/api/messages/read",
                                {"party": party, "upto": upto})
    else:
        raise LocalError("the terminal is not running", code=ErrorCode.BAD_CONFIG,
                         hint=f"start it ('parley terminal --data {data}'); it holds the"
                              " messages and tells their senders what was read")
    if args.json:
        print(json.dumps({"messages": messages, "unread": unread}))
        return 0
    current = None
    for m in messages:
        if m["party"] != current:
            current = m["party"]
            print(f"-- {current}")
        print("  " + _message_line(m))
    if not messages:
        print("no messages yet" + (f" with {args.party}" if args.party else ""))
    return 0


def cmd_message_search(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    from urllib.parse import quote

    if _running(data):
        found = control_request(data, "GET", f"/api/messages/search?q={quote(args.query)}")
        messages = found["messages"]
    else:  # the index is the terminal's own: no server is asked
        from parley.terminal.messages import search

        messages = _messages_offline(data, lambda ms: [
            {**m.__dict__, "text": m.body, "time_ms": m.time_ms} for m in
            search(ms, args.query, 50)])
    if args.json:
        print(json.dumps(messages))
        return 0
    for m in messages:
        if "deliveries" in m:
            print(f"{m['party']}: {_message_line(m)}")
        else:
            print(f"{m['party']}: {m['sender']}:"
                  f" {printable(m['text'] or m.get('file_name') or '', newlines=False)}")
    if not messages:
        print(f"nothing matches {args.query!r}")
    return 0


def _linetest_line(result: dict[str, Any]) -> str:
    mark = {"green": "GREEN", "amber": "AMBER", "red": "RED"}[result["status"]]
    why = "; ".join(result.get("reasons") or []) or "every figure within its threshold"
    return f"{result['line']}: {mark} -- {why}"


def cmd_linetest_run(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    body: dict[str, Any] = {"line": args.line, "callee": args.callee}
    if args.duration is not None:
        body["duration_s"] = args.duration
    if not args.json:
        print(f"line test of {args.line or 'this site’s line'}: a verified test call of"
              f" {args.duration or 'the set'} s and a message round trip...", flush=True)
    result = control_request(data, "POST", "/api/linetest", body,
                             timeout=(args.duration or 600) + 120)
    if args.json:
        print(json.dumps(result))
    else:
        print(_linetest_line(result))
        for way, f in (result.get("ways") or {}).items():
            print(f"  {way}: setup {f['setup_ms']} ms, loss {f['loss_pct']:.1f}%, jitter"
                  f" {f['jitter_ms']} ms, rtt {f['rtt_ms']} ms, {f['video_frames']} video"
                  f" frames, {f['audio_frames']} audio frames,"
                  f" {'verified' if f['verified'] else 'NOT VERIFIED'}")
        if result.get("message_rtt_ms") is not None:
            print(f"  message round trip {result['message_rtt_ms']} ms")
        if result.get("signed_by"):
            print(f"  signed by {' and '.join(result['signed_by'])};"
                  f" {'filed with the server' if result.get('filed') else 'NOT filed yet'}")
    return 0 if result["status"] == "green" else 1


def cmd_linetest_status(args: argparse.Namespace) -> int:
    from parley.core.linetest import age_text

    data = resolve(args, DATA_OPTION, "terminal")["data"]
    view = control_request(data, "GET", "/api/lines?refresh=1")
    if args.json:
        print(json.dumps(view))
        return 0
    if not view["lines"]:
        print("no lines yet (is the terminal connected to its server?)")
    for line in view["lines"]:
        age = f", last test {age_text(line['age_ms'])} ago" if line["age_ms"] is not None else ""
        print(_linetest_line(line) + age)
        server = line.get("server")
        if server:
            print(f"  the server shows it {server['status']}"
                  + (f" -- {server['problem']}" if server.get("problem") else ""))
    return 0 if all(line["status"] == "green" for line in view["lines"]) else 1


def _talk_line(talk: dict[str, Any]) -> str:
    mine = "you requested" if talk["mine"] else f"{talk['with']} requested"
    out = (f"{talk['talk_id']}  {talk['state'].upper():<10} {talk['title']!r} with"
           f" {talk['with_name']} ({mine}; {talk['media']}, {talk['duration_s'] // 60} min)\n"
           f"    {talk['when']}" + (f"  ({talk['until']})" if talk["until"] else ""))
    if talk.get("counter_when"):
        out += f"\n    proposed instead: {talk['counter_when']}"
    if talk.get("line"):
        line = talk["line"]
        out += f"\n    line {line['status']}" + (
            f", tested {line['age_ms'] // 60_000} min ago" if line["age_ms"] is not None
            else ", never tested")
    return printable(out)


def cmd_schedule_request(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    if args.at is None and not args.asap:
        raise LocalError("give --at TIME, or --asap for as soon as possible",
                         code=ErrorCode.INVALID_INPUT)
    talk = control_request(data, "POST", "/api/schedule", {
        "party": args.with_, "title": args.title, "at": args.at,
        "duration_s": args.duration // 1000, "media": "audio" if args.voice else "video",
        "agenda": args.agenda or "", "note": args.note or ""})
    print(json.dumps(talk) if args.json else _talk_line(talk))
    return 0


def cmd_schedule_act(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    body: dict[str, Any] = {"note": args.note or ""}
    if getattr(args, "at", None):
        body["at"] = args.at
    if getattr(args, "duration", None):
        body["duration_s"] = args.duration // 1000
    talk = control_request(data, "POST", f"/api/schedule/{args.talk}/{args.op}", body)
    print(json.dumps(talk) if args.json else _talk_line(talk))
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    talks = control_request(data, "GET", "/api/schedule")["talks"]
    if args.json:
        print(json.dumps(talks))
        return 0
    if not talks:
        print("no talks scheduled ('parley schedule request --with PARTY --at TIME ...')")
    for talk in talks:
        print(_talk_line(talk))
    return 0


def cmd_schedule_export(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    query = f"?talk={args.talk}" if args.talk else ""
    body = control_request(data, "GET", f"/api/schedule.ics{query}", as_bytes=True)
    args.ics.write_bytes(body)
    print(f"wrote {args.ics} ({body.count(b'BEGIN:VEVENT')} talk(s))")
    return 0


# --- the record and joint statements -----------------------------------------------------

def cmd_record_show(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    query = f"?limit={args.limit}" + (f"&type={args.type}" if args.type else "")
    answer = control_request(data, "GET", "/api/record" + query)
    if args.json:
        print(json.dumps(answer))
        return 0
    state = answer["record"]
    print(f"record of {state['site']}: {state['size']:,} entries")
    for c in state["cosigned"]:
        print(f"  cosigned by {c['by']} up to size {c['size']:,}")
    for w in state["witnessed"]:
        print(f"  witnessing {w['log']}: cosigned up to size {w['size']:,}")
    for f in state["forks"]:
        print(printable(f"  FORK in the log of {f['log']}: {f['why']}"
                        f" (evidence kept, number {f['id']})"))
    for item in reversed(answer["entries"]):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(item["entry"].get("time_ms", 0)
                                                              / 1000))
        print(printable(f"{item['index']:>7}  {when} UTC  {item['text']}", newlines=False))
    return 0


def cmd_record_note(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    done = control_request(data, "POST", "/api/record/note", {"text": args.text,
                                                              "by": args.by})
    print(f"noted as entry {done['index']:,}")
    return 0


def cmd_record_exchange(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    done = control_request(data, "POST", "/api/record/exchange", {})
    print(f"checkpoint at size {done['record']['size']:,} sent to {done['sent_to']} witness(es)")
    return 0


def _write_out(path: Path, body: bytes) -> None:
    try:
        path.write_bytes(body)
    except OSError as exc:
        raise LocalError(f"cannot write {path}: {exc.strerror}",
                         code=ErrorCode.INVALID_INPUT) from None


def cmd_record_export(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    if args.statement:
        body = control_request(data, "GET", f"/api/statements/{args.statement}/bundle",
                               as_bytes=True)
    else:
        query = "?all=1" if args.all else f"?last={args.last}"
        query += f"&type={args.type}" if args.type else ""
        body = control_request(data, "GET", "/api/record/export" + query, as_bytes=True)
    _write_out(args.out, body)
    count = len(json.loads(body)["entries"])
    print(f"wrote {args.out}: {count:,} entries with their proofs"
          f" ('parley record verify {args.out}' checks it, anywhere)")
    return 0


def _read_qr(image: Path) -> str:
    import shutil
    import subprocess

    if shutil.which("zbarimg") is None:
        raise LocalError("reading a QR code needs zbarimg", code=ErrorCode.BAD_CONFIG,
                         hint="apt-get install zbar-tools, or type the code: --code -")
    try:
        done = subprocess.run(["zbarimg", "--raw", "-q", "-Sdisable", "-Sqrcode.enable",
                               str(image)], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalError(f"zbarimg failed on {image}: {exc}",
                         code=ErrorCode.INVALID_INPUT) from None
    codes = [line for line in done.stdout.decode("utf-8", "replace").splitlines()
             if line.upper().startswith("PR1:")]
    if not codes:
        raise LocalError(f"no Parley code found in {image}", code=ErrorCode.INVALID_INPUT,
                         hint="scan the page again, sharper, or type the code: --code -")
    return codes[0]


def cmd_record_verify(args: argparse.Namespace) -> int:
    from parley.core import bundle as bundles

    if sum(x is not None for x in (args.bundle, args.from_qr, args.code)) != 1:
        raise LocalError("give one of: a bundle file, --from-qr IMAGE, --code TEXT",
                         code=ErrorCode.INVALID_INPUT)
    try:
        if args.bundle is not None:
            raw = args.bundle.read_bytes()
        elif args.from_qr is not None:
            raw = bundles.from_paper(_read_qr(args.from_qr))
        else:
            code = sys.stdin.read() if args.code == "-" else args.code
            raw = bundles.from_paper(code)
        report = bundles.verify_file(raw)
        texts_ok = []
        if args.text is not None:
            text = args.text.read_text(encoding="utf-8").rstrip("\n")
            sha = hashlib.sha256(text.encode()).hexdigest()
            match = [s for s in report.statements if s["text_sha256"] == sha]
            if not match:
                raise bundles.BundleError(f"{args.text}: its text (sha256 {sha[:16]}) is not"
                                          " the text of any statement the bundle proves")
            texts_ok = [f"the text in {args.text} is the text of statement"
                        f" {m['statement']} v{m['version']}" for m in match]
    except OSError as exc:
        raise LocalError(f"cannot read: {exc}", code=ErrorCode.INVALID_INPUT) from None
    except bundles.BundleError as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": exc.message}))
        else:
            print(printable(f"NOT VERIFIED: {exc.message}"))
        return 1
    if args.json:
        print(json.dumps({**report.to_json(), "text": texts_ok}))
        return 0
    expected = _expected_keys(args.expect or [])
    wrong = [f"{device}: the bundle's key is {report.keys.get(device, 'absent')}, not {want}"
             for device, want in expected.items()
             if _key_text(report.keys.get(device, "")) != _key_text(want)]
    unanchored = sorted(set(report.keys) - set(expected))
    limits = list(report.limits)
    if unanchored:
        limits.append(f"the keys of {', '.join(unanchored)} are the bundle's own: compare"
                      " them with the fingerprints the sites show (parley keys show), or"
                      " give them with --expect DEVICE=KEY")
    if wrong:
        if args.json:
            print(json.dumps({"ok": False, "error": "; ".join(wrong)}))
        else:
            print(printable("NOT VERIFIED: " + "; ".join(wrong)))
        return 1
    if args.json:
        print(json.dumps({**report.to_json(), "limits": limits, "text": texts_ok}))
        return 1 if args.strict and limits else 0
    print("VERIFIED, with no network and no server:" if not limits else
          "VERIFIED AS FAR AS IT GOES (with no network and no server):")
    for line in [*report.lines, *texts_ok]:
        print(printable(f"  {line}"))
    if limits:
        print("not established:")
        for line in limits:
            print(printable(f"  {line}"))
    print("keys" + (" (as you gave them)" if expected and not unanchored else "") + ":")
    for device, shown in report.keys.items():
        print(f"  {device}: {shown}{'  [as expected]' if device in expected else ''}")
    return 1 if args.strict and limits else 0


def _key_text(text: str) -> str:
    return "".join(text.removeprefix("signing key").split()).lower()


def _expected_keys(items: list[str]) -> dict[str, str]:
    """--expect DEVICE=FINGERPRINT (or DEVICE=SIGNING-KEY, as a paper copy names it)."""
    out = {}
    for item in items:
        device, sep, key = item.partition("=")
        if not sep or len(_key_text(key)) != 64:
            raise LocalError(f"--expect {item!r}: give DEVICE=KEY, the 64 hex digits of a"
                             " fingerprint or signing key", code=ErrorCode.INVALID_INPUT)
        out[device.strip()] = key
    return out


def cmd_statement_draft(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    view = control_request(data, "POST", "/api/statements", {
        "party": args.with_, "title": args.title, "text": _text_arg(args),
        "attachments": _attachment_args(args)})
    print(json.dumps(view) if args.json else _statement_text(view))
    return 0


def cmd_statement_edit(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    body: dict[str, Any] = {"text": _text_arg(args), "title": args.title}
    if args.attach:
        body["attachments"] = _attachment_args(args)
    view = control_request(data, "POST", f"/api/statements/{args.statement}/edit", body)
    print(json.dumps(view) if args.json else _statement_text(view))
    return 0


def cmd_statement_sign(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    view = control_request(data, "POST", f"/api/statements/{args.statement}/sign",
                           {"version": args.version, "sha256": args.sha256})
    print(json.dumps(view) if args.json else _statement_text(view))
    return 0


def cmd_statement_list(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    items = control_request(data, "GET", "/api/statements")["statements"]
    if args.json:
        print(json.dumps(items))
        return 0
    if not items:
        print("no joint statements ('parley statement draft --with PARTY --title ...')")
    for view in items:
        print(_statement_line(view))
    return 0


def cmd_statement_show(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    view = control_request(data, "GET", f"/api/statements/{args.statement}")
    print(json.dumps(view) if args.json else _statement_text(view, diff=True))
    return 0


def cmd_statement_pdf(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    body = control_request(data, "GET", f"/api/statements/{args.statement}/pdf",
                           as_bytes=True, timeout=60)
    _write_out(args.out, body)
    print(f"wrote {args.out} ({len(body):,} bytes): the statement, its signers and a QR code"
          " that proves them")
    return 0


def _text_arg(args: argparse.Namespace) -> str:
    if (args.text is None) == (args.file is None):
        raise LocalError("give the statement's text: --text TEXT or --file FILE",
                         code=ErrorCode.INVALID_INPUT)
    if args.text is not None:
        return str(args.text)
    try:
        return str(args.file.read_text(encoding="utf-8")).rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalError(f"cannot read {args.file}: {exc}", code=ErrorCode.INVALID_INPUT
                         ) from None


def _attachment_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    from parley.core.statement import attachment

    out = []
    for path in args.attach or []:
        try:
            out.append(attachment(path.name, path.read_bytes()))
        except OSError as exc:
            raise LocalError(f"cannot read {path}: {exc.strerror}",
                             code=ErrorCode.INVALID_INPUT) from None
    return out


def _statement_line(view: dict[str, Any]) -> str:
    latest = view["versions"][-1]
    if view["final"] is not None:
        state = "FINAL" + (", in both logs" if view["in_both_logs"] else
                           ", waiting for the other log's proof")
    elif view["signed_by_me"]:
        state = "signed by this side; waiting for the other"
    elif view["my_turn"]:
        state = "your turn: edit or sign"
    else:
        state = f"with {view['with']}: their turn"
    return printable(f"{view['statement']}  '{view['title']}' with {view['with_name']}:"
                     f" v{latest['version']} ({latest['sha256'][:16]}) -- {state}",
                     newlines=False)


def _statement_text(view: dict[str, Any], *, diff: bool = False) -> str:
    import difflib

    latest = view["versions"][-1]
    out = [_statement_line(view), f"  version {latest['version']} by {latest['by']},"
           f" sha256 {latest['sha256']}"]
    if latest["signatures"]:
        out.append("  signed by " + ", ".join(latest["signatures"]))
    if diff and len(view["versions"]) > 1:
        before = view["versions"][-2]
        out.append(f"  changes from version {before['version']}:")
        out += ["    " + line.rstrip("\n") for line in difflib.unified_diff(
            before["text"].splitlines(), latest["text"].splitlines(), lineterm="", n=1)][2:]
    out += ["", *("  " + line for line in latest["text"].splitlines())]
    if view["final"] is None and view["my_turn"]:
        out.append(f"\n  to sign exactly this: parley statement sign {view['statement']}"
                   f" --version {latest['version']} --sha256 {latest['sha256'][:16]}")
    return printable("\n".join(out))


def cmd_schedule_import(args: argparse.Namespace) -> int:
    data = resolve(args, DATA_OPTION, "terminal")["data"]
    try:
        raw = args.ics.read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read {args.ics}: {exc.strerror}",
                         code=ErrorCode.INVALID_INPUT) from None
    talks = control_request(data, "POST", "/api/schedule/import", raw=raw)["talks"]
    for talk in talks:
        print(_talk_line(talk))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from parley.demo import run_demo

    return run_demo(headless=args.headless, as_json=args.json, human=args.human,
                    duration_s=args.duration, keep=args.keep)


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parley", description="Parley: a verifiable, end-to-end encrypted line for direct"
        " talks. Start with 'parley demo'.")
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected failure, show the Python traceback")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(parent: Any, name: str, help_: str, fn: Callable[[argparse.Namespace], int],
                options: Sequence[Option] = ()) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        add_options(p, options)
        p.set_defaults(fn=fn)
        return p

    # server
    server = command(sub, "server", "run the line server, or administer it", cmd_server_run,
                     SERVER_OPTIONS)
    ssub = server.add_subparsers(dest="server_command", metavar="SUBCOMMAND")
    command(ssub, "run", "run the line server (the default)", cmd_server_run, SERVER_OPTIONS)
    principal = ssub.add_parser("principal", help="parties: add or list",
                                description="parties: add or list")
    psub = principal.add_subparsers(dest="principal_command", metavar="ACTION", required=True)
    p = command(psub, "add", "create a party (a head of state's office, a ministry)",
                cmd_principal_add, STORE_OPTIONS)
    p.add_argument("name", help="short name, e.g. washington")
    p.add_argument("--display", help="full name, e.g. 'The White House'")
    p.add_argument("--timezone", default="UTC", help="IANA time zone, e.g. Europe/Moscow")
    command(psub, "list", "list parties", cmd_principal_list, STORE_OPTIONS)
    line = ssub.add_parser("line", help="lines between parties: add or list",
                           description="lines between parties: add or list")
    lsub = line.add_subparsers(dest="line_command", metavar="ACTION", required=True)
    p = command(lsub, "add", "open a line: these two parties may talk", cmd_line_add,
                STORE_OPTIONS)
    p.add_argument("a")
    p.add_argument("b")
    command(lsub, "list", "list lines", cmd_line_list, STORE_OPTIONS)
    p = command(lsub, "media", "whether a line's calls may go directly (any) or through the"
                " TURN relay only (relay)", cmd_line_media, STORE_OPTIONS)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("policy", choices=("any", "relay"))
    p = command(ssub, "enroll-code", "make a one-time, expiring code that enrolls one device",
                cmd_enroll_code, STORE_OPTIONS)
    p.add_argument("party")
    p.add_argument("--ttl", type=_duration_ms, default=24 * 3_600_000,
                   help=f"how long the code is valid: {DURATION_HELP} (default 24h)")
    p.add_argument("--quiet", action="store_true", help="print only the code")
    p = command(ssub, "migrate-store", "copy this server's line (parties, devices, codes,"
                " waiting envelopes, line tests, alerts) into an empty PostgreSQL database,"
                " with the server stopped", cmd_migrate_store, STORE_OPTIONS)
    p.add_argument("--to", required=True, metavar="URL",
                   help="the empty database to copy into: postgresql://USER@HOST:PORT/DB")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    command(ssub, "codes", "the enrollment codes not spent yet (not the codes themselves: only"
            " their hashes are kept)", cmd_codes, STORE_OPTIONS)
    p = command(ssub, "cancel-code", "cancel an enrollment code given out by mistake",
                cmd_cancel_code, STORE_OPTIONS)
    p.add_argument("code")
    p = command(ssub, "admin-token", "the token of the server's own pages (status, metrics)"
                " when it listens beyond loopback", cmd_admin_token, STORE_OPTIONS)
    p.add_argument("--quiet", action="store_true", help="print only the token")
    p = command(ssub, "alert-key", "the public key that signs every alert webhook",
                cmd_alert_key, STORE_OPTIONS)
    p.add_argument("--json", action="store_true")
    p = command(ssub, "devices", "list enrolled devices and their fingerprints", cmd_devices,
                STORE_OPTIONS)
    p.add_argument("--json", action="store_true")
    device = ssub.add_parser("device", help="devices: list, replace, revoke, log",
                             description="devices: list, replace, revoke, log. An enrollment"
                             " never replaces a device; only these commands change one, and"
                             " each is written to the device log.")
    dsub = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    p = command(dsub, "list", "list enrolled devices, their fingerprints and state",
                cmd_devices, STORE_OPTIONS)
    p.add_argument("--json", action="store_true")
    p = command(dsub, "replace", "revoke a device's keys now and make a one-time code that"
                " enrolls its replacement under the same name", cmd_device_replace,
                STORE_OPTIONS)
    p.add_argument("device", help="party/device, e.g. washington/desk")
    p.add_argument("--ttl", type=_duration_ms, default=24 * 3_600_000,
                   help=f"how long the code is valid: {DURATION_HELP} (default 24h)")
    p.add_argument("--reason", help="why, for the device log")
    p = command(dsub, "revoke", "revoke a device: it can no longer log in or be reached",
                cmd_device_revoke, STORE_OPTIONS)
    p.add_argument("device", help="party/device, e.g. washington/desk")
    p.add_argument("--reason", help="why, for the device log")
    p = command(dsub, "log", "enrollments, replacements, revocations and refused takeovers",
                cmd_device_log, STORE_OPTIONS)
    p.add_argument("--limit", type=int, default=100, help="how many of the latest (default 100)")

    # terminal
    terminal = command(sub, "terminal", "run this site's terminal, or set it up",
                       cmd_terminal_run, TERMINAL_OPTIONS)
    tsub = terminal.add_subparsers(dest="terminal_command", metavar="SUBCOMMAND")
    command(tsub, "run", "run the terminal (the default)", cmd_terminal_run, TERMINAL_OPTIONS)
    p = command(tsub, "init", "create this device's keys", cmd_terminal_init, DATA_OPTION)
    p.add_argument("--name", required=True, help="device name, e.g. desk or robot")
    p = command(tsub, "enroll", "register this device with a line server", cmd_terminal_enroll,
                DATA_OPTION)
    p.add_argument("--server", required=True, help="line server URL, e.g. http://127.0.0.1:8800")
    p.add_argument("--code", required=True, help="the one-time enrollment code")

    # keys
    keys = command(sub, "keys", "show fingerprints and safety numbers; verify peers",
                   cmd_keys_show, DATA_OPTION)
    keys.add_argument("--json", action="store_true")
    keys.set_defaults(peer=None)
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    p = command(ksub, "show", "this device's fingerprint, or the safety number with a peer",
                cmd_keys_show, DATA_OPTION)
    p.add_argument("peer", nargs="?", help="a party, e.g. moscow")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)  # or before
    p = command(ksub, "verify", "mark a peer verified after comparing the safety number",
                cmd_keys_verify, DATA_OPTION)
    p.add_argument("target", help="a party (if it has one device) or party/device")
    p.add_argument("--safety-number", help="the 60 digits you compared, checked before pinning")
    p.add_argument("--yes", action="store_true", help="pin without typing the number")
    p = command(ksub, "forget", "remove a verified key", cmd_keys_forget, DATA_OPTION)
    p.add_argument("target", help="party/device")

    command(sub, "ui", "the running terminal's page: its address now (open it in a browser"
            " here; it holds the page's token, new at every start)", cmd_ui, DATA_OPTION)

    # calls on a running terminal
    p = command(sub, "call", "place a call from the running terminal", cmd_call, DATA_OPTION)
    p.add_argument("target", help="a party, or party/device")
    p.add_argument("--voice", action="store_true", help="voice only, like a phone call")
    command(sub, "hangup", "hang up the running terminal's call", cmd_hangup, DATA_OPTION)
    p = command(sub, "status", "the running terminal's status", cmd_status, DATA_OPTION)
    p.add_argument("--json", action="store_true")

    # messages
    message = sub.add_parser("message", help="hotline messages: send, list, search",
                             description="hotline messages: end-to-end encrypted text and"
                             " files to the other party of a line, through the running"
                             " terminal")
    msub = message.add_subparsers(dest="message_command", metavar="ACTION", required=True)
    p = command(msub, "send", "send a message or a file to a party", cmd_message_send,
                DATA_OPTION)
    p.add_argument("--to", required=True, help="the party, e.g. moscow")
    p.add_argument("text", nargs="?", help="the message (quote it)")
    p.add_argument("--file", type=Path, help="send this file (25 MB at most)")
    p.add_argument("--caption", help="with --file: a line of text with it")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for the delivery receipts")
    p = command(msub, "list", "the conversations, newest last (and mark them read)",
                cmd_message_list, DATA_OPTION)
    p.add_argument("--party", help="only this party's conversation")
    p.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    p.add_argument("--keep-unread", action="store_true",
                   help="do not mark what is listed as read")
    p.add_argument("--json", action="store_true")
    p = command(msub, "search", "search this terminal's messages (its own index; nothing"
                " leaves it)", cmd_message_search, DATA_OPTION)
    p.add_argument("query", help='words; "a phrase"; a prefix*')
    p.add_argument("--json", action="store_true")

    # line tests
    linetest = sub.add_parser("linetest", help="line tests: run one, see the lines' state",
                              description="line tests between the sites' test sets: a"
                              " verified test call and a message round trip, signed by both"
                              " ends")
    lsub = linetest.add_subparsers(dest="linetest_command", metavar="ACTION", required=True)
    p = command(lsub, "run", "run a line test now, from this site's running test set",
                cmd_linetest_run, DATA_OPTION)
    p.add_argument("--line", help="the line as A:B, e.g. washington:moscow (default: the"
                   " site's only line)")
    p.add_argument("--callee", help="the other site's test set, party/device (default"
                   " PARTY/testset)")
    p.add_argument("--duration", type=float, help="seconds of test call (default: the test"
                   " set's, 10)")
    p.add_argument("--json", action="store_true", help="one JSON object, with status and"
                   " reasons")
    p = command(lsub, "status", "this site's lines as this terminal verified them, and what"
                " the server shows", cmd_linetest_status, DATA_OPTION)
    p.add_argument("--json", action="store_true")

    # scheduled talks
    sched = sub.add_parser("schedule", help="scheduled talks: request, answer, list, export",
                           description="talks between the parties of a line, requested,"
                           " accepted or moved to another time; end-to-end encrypted, times"
                           " in both parties' zones")
    schsub = sched.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    p = command(schsub, "request", "request a talk with the other party", cmd_schedule_request,
                DATA_OPTION)
    p.add_argument("--with", dest="with_", required=True, help="the party, e.g. moscow")
    p.add_argument("--at", help="when: '2021-12-07 15:00 UTC', '2021-12-07 10:00"
                   " America/New_York', or in this site's zone without one")
    p.add_argument("--asap", action="store_true", help="as soon as possible, no set time")
    p.add_argument("--duration", type=_duration_ms, default=3_600_000,
                   help=f"how long: {DURATION_HELP} (default 1h)")
    p.add_argument("--title", required=True)
    p.add_argument("--agenda")
    p.add_argument("--note")
    p.add_argument("--voice", action="store_true", help="voice only (default: video)")
    p.add_argument("--json", action="store_true")
    p = command(schsub, "list", "the talks, soonest first, in both parties' zones",
                cmd_schedule_list, DATA_OPTION)
    p.add_argument("--json", action="store_true")
    for op, help_ in (("accept", "accept a requested talk"),
                      ("decline", "decline a requested talk"),
                      ("tentative", "accept a requested talk tentatively"),
                      ("counter", "propose another time for a requested talk"),
                      ("take-counter", "take the time the other party proposed (a new"
                                       " request)"),
                      ("decline-counter", "keep your time: decline the other party's"),
                      ("change", "move a talk you requested to another time"),
                      ("cancel", "cancel a talk you requested")):
        p = command(schsub, op, help_, cmd_schedule_act, DATA_OPTION)
        p.set_defaults(op=op)
        p.add_argument("talk", help="the talk's id ('parley schedule list')")
        if op in ("counter", "change"):
            p.add_argument("--at", required=True, help="the other time")
            p.add_argument("--duration", type=_duration_ms, help=f"and length: {DURATION_HELP}")
        p.add_argument("--note", help="a line for the other side")
        p.add_argument("--json", action="store_true")
    p = command(schsub, "export", "write the talks (or one) to an iCalendar file",
                cmd_schedule_export, DATA_OPTION)
    p.add_argument("--ics", type=Path, required=True, help="the file to write")
    p.add_argument("--talk", help="only this talk")
    p = command(schsub, "import", "request the talks of an iCalendar file",
                cmd_schedule_import, DATA_OPTION)
    p.add_argument("ics", type=Path, help="the .ics file")

    # the record
    rec = sub.add_parser("record", help="the agreed record: show, note, export, verify",
                         description="this site's append-only log, witnessed by the other"
                         " site; bundles anyone can verify offline")
    rsub = rec.add_subparsers(dest="record_command", metavar="ACTION", required=True)
    p = command(rsub, "show", "the latest entries, and who cosigned the log up to where",
                cmd_record_show, DATA_OPTION)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--type", help="only entries of this type (call, message, statement, ...)")
    p.add_argument("--json", action="store_true")
    p = command(rsub, "note", "add an operator's note to the record", cmd_record_note,
                DATA_OPTION)
    p.add_argument("text")
    p.add_argument("--by", help="who writes it")
    command(rsub, "exchange", "send the log's checkpoint to the other site now",
            cmd_record_exchange, DATA_OPTION)
    p = command(rsub, "export", "write a bundle: entries, their proofs, the checkpoints, the"
                " keys", cmd_record_export, DATA_OPTION)
    p.add_argument("--out", type=Path, required=True, help="the bundle file to write")
    p.add_argument("--statement", help="a joint statement, proven in both logs")
    p.add_argument("--last", type=int, default=100, help="the latest N entries (default 100)")
    p.add_argument("--all", action="store_true", help="every entry")
    p.add_argument("--type", help="only entries of this type")
    p = rsub.add_parser("verify", help="check a bundle, a paper copy's QR code or its typed"
                        " code: no network, no server", description="check a bundle, a paper"
                        " copy's QR code or its typed code: no network, no server")
    p.set_defaults(fn=cmd_record_verify)
    p.add_argument("bundle", nargs="?", type=Path, help="the bundle file")
    p.add_argument("--from-qr", type=Path, metavar="IMAGE", help="a scan of the paper copy")
    p.add_argument("--code", help="the paper copy's code, typed ('-': read it from stdin)")
    p.add_argument("--text", type=Path, help="check that this file holds the signed text")
    p.add_argument("--expect", action="append", metavar="DEVICE=KEY",
                   help="a device's key as you know it (its fingerprint, or the signing key a"
                   " paper copy names): the bundle must use that one")
    p.add_argument("--strict", action="store_true", help="exit 1 unless everything is"
                   " established: every checkpoint cosigned, every statement final and in"
                   " both logs, every key given with --expect")
    p.add_argument("--json", action="store_true")

    # joint statements
    stm = sub.add_parser("statement", help="joint statements: draft, edit, sign, list, pdf",
                         description="a statement drafted by one side, edited in turns, final"
                         " when both sign the same version")
    stsub = stm.add_subparsers(dest="statement_command", metavar="ACTION", required=True)
    p = command(stsub, "draft", "draft a statement with the other party", cmd_statement_draft,
                DATA_OPTION)
    p.add_argument("--with", dest="with_", required=True, help="the party, e.g. moscow")
    p.add_argument("--title", required=True)
    p.add_argument("--text")
    p.add_argument("--file", type=Path, help="the text, from this file (UTF-8)")
    p.add_argument("--attach", type=Path, action="append", help="name a file by its hash")
    p.add_argument("--json", action="store_true")
    p = command(stsub, "edit", "propose an edit of the other side's version",
                cmd_statement_edit, DATA_OPTION)
    p.add_argument("statement")
    p.add_argument("--title")
    p.add_argument("--text")
    p.add_argument("--file", type=Path)
    p.add_argument("--attach", type=Path, action="append")
    p.add_argument("--json", action="store_true")
    p = command(stsub, "sign", "sign the version shown (named by its number and hash)",
                cmd_statement_sign, DATA_OPTION)
    p.add_argument("statement")
    p.add_argument("--version", type=int, required=True)
    p.add_argument("--sha256", required=True, help="its hash as shown (16 digits or more)")
    p.add_argument("--json", action="store_true")
    p = command(stsub, "list", "the statements and where each stands", cmd_statement_list,
                DATA_OPTION)
    p.add_argument("--json", action="store_true")
    p = command(stsub, "show", "a statement's latest version, and what changed",
                cmd_statement_show, DATA_OPTION)
    p.add_argument("statement")
    p.add_argument("--json", action="store_true")
    p = command(stsub, "pdf", "a final statement's printable copy, with its QR code",
                cmd_statement_pdf, DATA_OPTION)
    p.add_argument("statement")
    p.add_argument("--out", type=Path, required=True)

    # alarms
    alarms = command(sub, "alarms", "security alarms, kept until an operator acknowledges them",
                     cmd_alarms, DATA_OPTION)
    alarms.add_argument("--all", action="store_true", help="acknowledged ones too")
    alarms.add_argument("--json", action="store_true")
    asub = alarms.add_subparsers(dest="alarms_command", metavar="ACTION")
    p = command(asub, "list", "list the open alarms (the default)", cmd_alarms, DATA_OPTION)
    # Given before "list" or after it: a default here would undo one given before.
    p.add_argument("--all", action="store_true", default=argparse.SUPPRESS,
                   help="acknowledged ones too")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p = command(asub, "ack", "acknowledge alarms that have been dealt with", cmd_alarms_ack,
                DATA_OPTION)
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="alarm numbers")
    p.add_argument("--all", action="store_true", help="every open alarm")
    p.add_argument("--note", help="what was done about it, kept with the alarm")

    # demo
    p = command(sub, "demo", "the whole line on this machine: a server and two terminals",
                cmd_demo)
    p.add_argument("--headless", action="store_true",
                   help="one 10-second robot-to-robot call, then stop")
    p.add_argument("--json", action="store_true", help="with --headless: a JSON summary last")
    p.add_argument("--human", action="append", default=[], choices=["washington", "moscow"],
                   help="give this side a browser UI too (washington always has one)")
    p.add_argument("--duration", type=float, default=10.0, help="headless call length (s)")
    p.add_argument("--keep", action="store_true", help="keep the throwaway data directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "fn"):
        parser.print_help()
        return 2
    try:
        return int(args.fn(args))
    except ParleyError as exc:
        kind = "refused" if isinstance(exc, LocalError) else "error"
        print(f"parley: {kind}: {exc.message} [{exc.code}]", file=sys.stderr)
        if exc.hint:
            print(f"  what to do: {exc.hint}", file=sys.stderr)
        return 2 if isinstance(exc, LocalError) else 3
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a defect, not a mistake of the operator's
        if args.debug:
            raise
        print(f"parley: unexpected failure: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  what to do: run it again with 'parley --debug ...' and report what it"
              " prints", file=sys.stderr)
        return 4


__all__ = ["main"]
