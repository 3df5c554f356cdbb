"""The agreed record between two real terminals through the real server.

A call, 50 messages and a joint statement; each site's log witnessed by the
other; a bundle verified by the CLI alone in a network namespace of its own
(no network, no server), and refused, with where, when any byte of it is
changed; then one site's log rewritten on disk (an entry removed, one
altered) and the other site catching it at the next exchange, with the two
signed checkpoints that contradict each other kept as evidence.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from parley.clock import now_ms
from parley.core import bundle, checkpoint, record
from parley.core.call import CallState
from parley.core.encoding import canonical_json, random_id
from parley.core.envelope import seal_envelope
from parley.terminal.app import Terminal
from tests.harness import LocalLine, active_call, wait_until


def cosigned_to(terminal: Terminal, witness: str) -> int:
    return max((c["size"] for c in terminal.record.state()["cosigned"] if c["by"] == witness),
               default=-1)


async def witnessed(a: Terminal, b: Terminal) -> None:
    """Each log cosigned by the other at its present size."""
    await a.record.exchange()
    await b.record.exchange()
    await wait_until(lambda: cosigned_to(a, b.device_id) == a.record.size
                     and cosigned_to(b, a.device_id) == b.record.size, 15,
                     "each log cosigned by the other at its size")


async def final_statement(washington: Terminal, moscow: Terminal,
                          text: str = "The two sides agree that the line stays open.\n"
                                      "Reviewed every year.") -> str:
    """Washington drafts, moscow edits, both sign version 2; each log witnessed."""
    drafted = await washington.statements.draft(
        "moscow", title="Joint statement on the hotline",
        text="The two sides agree that the line stays open.\nReviewed each year.")
    ident = str(drafted["statement"])
    await wait_until(lambda: ident in moscow.statements.book.statements, 10, "the draft")
    edited = await moscow.statements.edit(ident, text=text)
    v2 = edited["versions"][-1]
    await wait_until(lambda: washington.statements.book.statements[ident].latest.number == 2,
                     10, "the edit")
    await washington.statements.sign(ident, version=2, sha256=v2["sha256"])
    await moscow.statements.sign(ident, version=2, sha256=v2["sha256"][:16])
    await wait_until(lambda: washington.statements.get(ident)["final"] == 2
                     and moscow.statements.get(ident)["final"] == 2, 10, "final at both")
    await witnessed(washington, moscow)
    return ident


def parley_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, with an empty home, and -- when this machine allows it --
    in a network namespace of its own: no network at all, so no server either."""
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "PARLEY_HOME": str(home / "parley")}
    command = [sys.executable, "-m", "parley", *args]
    if shutil.which("unshare") and os.geteuid() == 0:
        command = ["unshare", "--net", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          check=False)


async def test_a_call_messages_and_a_statement_are_recorded_witnessed_and_proven(
        line: LocalLine, tmp_path: Path) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow", auto_answer=True)

    caller, _ = await active_call(washington, moscow)
    washington.hangup(caller.call_id)
    await moscow.wait_for_call(lambda c: c.call_id == caller.call_id
                               and c.state is CallState.ENDED, 10)
    for n in range(25):
        await washington.messages.send_text("moscow", f"washington, number {n}")
        await moscow.messages.send_text("washington", f"moscow, number {n}")
    await wait_until(lambda: len(moscow.messages.conversation("washington")) == 50
                     and len(washington.messages.conversation("moscow")) == 50, 20,
                     "50 messages at each end")

    ident = await final_statement(washington, moscow)
    await wait_until(lambda: washington.statements.get(ident)["in_both_logs"]
                     and moscow.statements.get(ident)["in_both_logs"], 15,
                     "the statement in both logs")

    # What the log holds: the call, every message (by hash, never its text), the statement.
    entries = [record.parse_entry(d) for _i, d in washington.record.entries()]
    kinds = [e["type"] for e in entries]
    assert kinds.count("call") == 1 and kinds.count("message") == 50
    assert {e["dir"] for e in entries if e["type"] == "message"} == {"sent", "received"}
    assert not any("text" in e for e in entries if e["type"] == "message")
    raw_log = b"".join(d for _i, d in washington.record.entries())
    assert b"number 7" not in raw_log
    call = next(e for e in entries if e["type"] == "call")
    assert call["verified"] and call["peer"] == moscow.device_id and call["sas"] == caller.sas
    events = [(e["event"], e["version"]) for e in entries if e["type"] == "statement"]
    assert events == [("proposed", 1), ("proposed", 2), ("signed", 2), ("signed", 2),
                      ("final", 2)]

    # Bundles: the statement's (both logs), and the whole of washington's log.
    stmt_file, all_file = tmp_path / "statement.json", tmp_path / "record.json"
    stmt_file.write_bytes(canonical_json(washington.statements.export(ident)) + b"\n")
    all_file.write_bytes(canonical_json(washington.record.export(last=None)) + b"\n")
    home = tmp_path / "clean-machine"
    home.mkdir()
    await line.stop_server()  # and no server anywhere: only the file
    done = parley_cli("record", "verify", str(stmt_file), home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    sizes = washington.statements.get(ident)["recorded"]
    assert "v2 'Joint statement on the hotline'" in done.stdout
    assert f"signed by {moscow.device_id} and {washington.device_id}; final" in done.stdout
    assert "final; included in" in done.stdout, done.stdout
    assert " and " in done.stdout.split("final; included in")[1]
    assert len(sizes) == 2
    report = bundle.verify_file(stmt_file.read_bytes())
    (st,) = report.statements
    assert st["final"] and {i["log"] for i in st["included"]} == {washington.device_id,
                                                                  moscow.device_id}
    assert all(i["cosigned_by"] for i in st["included"])
    done = parley_cli("record", "verify", str(all_file), "--json", home=home)
    assert done.returncode == 0, done.stderr
    proven = json.loads(done.stdout)
    assert len(proven["entries"]) == washington.record.size
    assert any(f"cosigned by {moscow.device_id}" in line_ for line_ in proven["proven"])

    # Any byte changed: refused, and the reason says where.
    original = stmt_file.read_bytes()
    reasons = set()
    step = max(1, len(original) // 700)
    for at in range(0, len(original), step):
        changed = bytearray(original)
        changed[at] ^= 0x01
        with pytest.raises(bundle.BundleError) as caught:
            bundle.verify_file(bytes(changed))
        reasons.add(caught.value.message.split(":")[0])
    assert {"the bundle", "signature"} <= reasons and len(reasons) > 5, reasons
    entry_at = original.index(b'\\"event\\":\\"final\\"')
    changed = bytearray(original)
    changed[entry_at + 12] = ord("x")  # "final" -> "xinal": the entry is not what was logged
    (tmp_path / "changed.json").write_bytes(bytes(changed))
    done = parley_cli("record", "verify", str(tmp_path / "changed.json"), home=home)
    assert done.returncode == 1 and "NOT VERIFIED: entries[" in done.stdout, done.stdout

    # Washington's log rewritten on disk: a message's entry taken out, the call's altered.
    await line.start(port=line.port)
    await wait_until(lambda: washington.link.connected.is_set()
                     and moscow.link.connected.is_set(), 15, "both back")
    size_before = washington.record.size
    await washington.stop()
    line.terminals.remove(washington)
    db = sqlite3.connect(line.root / "washington" / "terminal.db")
    rows = list(db.execute("SELECT seq, entry FROM record_entries ORDER BY seq"))
    message_seq = next(s for s, d in rows if b'"type":"message"' in d)
    call_seq, call_entry = next((s, d) for s, d in rows if b'"type":"call"' in d)
    db.execute("DELETE FROM record_entries WHERE seq=?", (message_seq,))
    altered = json.loads(call_entry)
    altered["end_reason"] = "remote_declined"
    db.execute("UPDATE record_entries SET entry=? WHERE seq=?",
               (canonical_json(altered), call_seq))
    db.commit()
    db.close()

    washington = await line.terminal("washington")  # its exchange at login shows the change
    await wait_until(lambda: any(a["code"] == "record_forked" for a in moscow.alarms), 15,
                     "moscow's alarm")
    alarm = next(a for a in moscow.alarms if a["code"] == "record_forked")
    assert alarm["subject"] == washington.device_id and "does not extend" in alarm["message"]
    (fork,) = moscow.record.state()["forks"]
    seen = checkpoint.open_checkpoint(fork["seen"], washington.device_id,
                                      washington.keys.public_key())
    now = checkpoint.open_checkpoint(fork["now"], washington.device_id,
                                     washington.keys.public_key())
    # Both signed by washington; the second of a log one entry shorter, to which its own
    # alarm about that (below) was added.
    assert seen.size == size_before and now.size == size_before - 1 + 1
    assert seen.root != now.root
    # Moscow's own log says so; washington sees its own log does not match what it signed,
    # and that moscow refuses to cosign it.
    assert any(e["type"] == "fork" for e in (record.parse_entry(d)
                                             for _i, d in moscow.record.entries()))
    await wait_until(lambda: sum(a["code"] == "record_forked" for a in washington.alarms) >= 2,
                     15, "washington's alarms")


async def test_a_final_statement_on_paper_is_verified_from_a_scan_of_its_page(
        line: LocalLine, tmp_path: Path) -> None:
    for tool in ("pdftoppm", "zbarimg"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/test installs poppler-utils and"
                        " zbar-tools (scripts/test-packages.txt)")
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    text = ("The two sides agree that the line stays open.\n"
            "Стороны согласились, что линия остаётся открытой.\nReviewed every year.")
    ident = await final_statement(washington, moscow, text)
    await wait_until(lambda: washington.statements.get(ident)["in_both_logs"], 15,
                     "in both logs")
    pdf = tmp_path / "statement.pdf"
    pdf.write_bytes(await washington.statements.pdf(ident))
    assert pdf.read_bytes().startswith(b"%PDF-")
    await asyncio.to_thread(subprocess.run, ["pdftoppm", "-r", "150", "-png", str(pdf),
                                             str(tmp_path / "page")], check=True, timeout=60)
    pages = sorted(p for p in os.listdir(tmp_path) if p.startswith("page"))
    assert pages
    text_file = tmp_path / "text.txt"
    text_file.write_text(text + "\n", encoding="utf-8")
    home = tmp_path / "clean-machine"
    home.mkdir()
    scan = tmp_path / pages[-1]  # the code is at the end of the statement
    done = parley_cli("record", "verify", "--from-qr", str(scan), "--text", str(text_file),
                      home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "statement" in done.stdout and "; final; included in" in done.stdout
    assert f"cosigned by {moscow.device_id}" in done.stdout
    assert f"the text in {text_file} is the text of statement {ident} v2" in done.stdout
    # Another text is refused; and so is the code with one letter changed.
    text_file.write_text(text.replace("every", "each"), encoding="utf-8")
    done = parley_cli("record", "verify", "--from-qr", str(scan), "--text", str(text_file),
                      home=home)
    assert done.returncode == 1 and "is not the text of any statement" in done.stdout
    code = (await asyncio.to_thread(subprocess.run, ["zbarimg", "--raw", "-q", str(scan)],
                                    capture_output=True, text=True, check=True)).stdout.strip()
    assert code.startswith("PR1:")
    raw = bundle.from_paper(code)
    assert bundle.verify_file(raw).statements[0]["final"]
    flipped = code[:-40] + ("A" if code[-40] != "A" else "B") + code[-39:]
    with pytest.raises(bundle.BundleError):
        bundle.verify_file(bundle.from_paper(flipped))


async def test_a_checkpoint_the_server_held_back_is_no_fork_and_another_root_is_one(
        line: LocalLine) -> None:
    """The server may deliver an older checkpoint after a newer one: no alarm, nothing kept
    as evidence. Two signed roots for one size are a fork, however late the second came."""
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    for n in range(4):
        washington.record.note(f"note {n}")
    old_size, old_note = washington.record.checkpoint()
    sent_old = now_ms()
    washington.record.note("one more")
    await witnessed(washington, moscow)
    assert cosigned_to(washington, moscow.device_id) == old_size + 1

    def delivered(note: str, from_size: int, time_ms: int) -> dict[str, Any]:
        payload = {"note": note, "from_size": from_size, "proof": []}
        return seal_envelope(washington.keys, washington.device_id, moscow.me,
                             "record.checkpoint", payload, time_ms, random_id()).to_json()

    await moscow._on_deliver(delivered(old_note, 0, sent_old))  # held back, now delivered
    await asyncio.sleep(0.3)
    assert not [a for a in moscow.alarms if a["code"] == "record_forked"]
    assert moscow.record.state()["forks"] == []
    # Another root for a size moscow cosigned, even one sent long ago, is a fork: two roots
    # for one size, both signed by washington. Both are kept.
    cosigned = cosigned_to(washington, moscow.device_id)
    (seen_note,) = [n for (n,) in moscow.store.db.execute(
        "SELECT note FROM record_seen WHERE size=?", (cosigned,))]
    other = checkpoint.sign_checkpoint(checkpoint.Checkpoint(
        washington.record.origin, cosigned, b"\x01" * 32), washington.device_id,
        washington.keys)
    await moscow._on_deliver(delivered(other, 0, sent_old - 1000))
    await wait_until(lambda: any(a["code"] == "record_forked" for a in moscow.alarms), 10,
                     "the alarm")
    (fork,) = moscow.record.state()["forks"]
    assert (fork["seen"], fork["now"]) == (seen_note, other)
