"""The agreed record at scale: 100,000 entries appended, proofs, a 1,000-entry bundle verified.

All on a real terminal's store (SQLite, WAL, as `parley terminal` runs it; named as
enrollment names it, with no server, which nothing measured here asks), each
figure beside a baseline measured in the same run:

* appending 100,000 entries (message entries, as a busy line writes them: the
  canonical entry built and checked, inserted, its leaf hashed into the tree),
  one transaction each as the terminal does, beside inserting the same bytes
  into a bare SQLite table the same way;
* an inclusion proof of a random entry in the tree of 100,000, from the tree
  the terminal keeps (every complete subtree's hash) beside the definition
  computed afresh from the leaves (what a log without that cache would do);
* a bundle of the latest 1,000 entries exported and verified by the offline
  verifier (`parley record verify`), beside reading the same file's JSON;
* the paper code of a statement at that size: its length beside what one QR
  code holds.

Target (issue 13): the 1,000-entry bundle verifies in under 1 s on this machine.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

from bench.common import Result, median, r, say
from parley.core import bundle, merkle
from parley.core.encoding import canonical_json
from parley.terminal.app import Terminal, TerminalConfig
from parley.terminal.store import TerminalStore

TARGET_VERIFY_S = 1.0


def _entries(record: object, n: int, start: int) -> None:
    for i in range(start, start + n):
        text = f"message {i}"
        record.message(msg_id=f"m{i:09d}", outgoing=i % 2 == 0,  # type: ignore[attr-defined]
                       party="moscow", sender="washington/hotline" if i % 2 == 0 else
                       "moscow/hotline", kind="text", text=text)


async def run(root: Path, *, quick: bool) -> Result:
    started = time.monotonic()
    result = Result("record")
    n = 100_000
    data = root / "record-bench" / "washington"
    data.parent.mkdir(parents=True, exist_ok=True)
    store = TerminalStore.init(data, "hotline")
    # Named as enrollment names it: nothing measured here asks the server anything.
    store.set("device_id", "washington/hotline")
    store.close()
    terminal = Terminal(TerminalConfig(data_dir=data, server_url="http://127.0.0.1:9"))
    rec = terminal.record
    try:
        say(f"record: appending {n:,} entries")
        t0 = time.perf_counter()
        _entries(rec, n, 0)
        size = rec.sync()
        append_s = time.perf_counter() - t0
        assert size == n

        bare = sqlite3.connect(root / "record-bench" / "bare.db", isolation_level=None)
        bare.execute("PRAGMA journal_mode=WAL")
        bare.execute("PRAGMA synchronous=NORMAL")
        bare.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
        rows = [d for _i, d in rec.entries()]
        t0 = time.perf_counter()
        for row in rows:
            bare.execute("INSERT INTO t (entry) VALUES (?)", (row,))
        bare_s = time.perf_counter() - t0
        bare.close()

        say("record: inclusion proofs in the tree of 100,000")
        rng = random.Random(7)
        picks = [rng.randrange(n) for _ in range(1000)]
        cached, fresh = [], []
        for index in picks:
            t0 = time.perf_counter()
            proof = rec.tree.inclusion_proof(index)
            cached.append((time.perf_counter() - t0) * 1e6)
            merkle.verify_inclusion(index, n, rec.tree.levels[0][index], proof, rec.tree.root())
        leaves = rec.tree.levels[0]
        for index in picks[: 3 if quick else 10]:
            t0 = time.perf_counter()
            assert merkle.Tree(leaves).inclusion_proof(index) == rec.tree.inclusion_proof(index)
            fresh.append((time.perf_counter() - t0) * 1e6)

        say("record: a bundle of the latest 1,000 entries, verified offline")
        made = rec.export(last=1000)
        raw = canonical_json(made) + b"\n"
        (root / "record-bench" / "bundle.json").write_bytes(raw)
        verify_s, parse_s = [], []
        for _ in range(3 if quick else 7):
            t0 = time.perf_counter()
            report = bundle.verify_file(raw)
            verify_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            json.loads(raw)
            parse_s.append(time.perf_counter() - t0)
        assert len(report.entries) == 1000

        say("record: a statement's paper code at this size")
        code_len = _paper_code_length(rec.tree)
    finally:
        terminal.store.close()

    result.row(f"append {n:,} entries (baseline: the bytes into bare SQLite)", r(append_s, 2),
               "s", r(bare_s, 2), round(append_s / bare_s, 2) if bare_s else None)
    result.row("appended entries per second", r(n / append_s), "/s", r(n / bare_s))
    result.row("inclusion proof, tree of 100,000 (baseline: from the leaves afresh)",
               r(median(cached), 1), "us", r(median(fresh), 1))
    result.notes.append(f"the subtrees the terminal keeps make a proof"
                        f" {median(fresh) / median(cached):,.0f} times faster than hashing the"
                        " tree again from its leaves")
    verify = median(verify_s)
    result.row("verify a bundle of 1,000 entries (baseline: its JSON read)", r(verify, 3), "s",
               r(median(parse_s), 4), round(verify / median(parse_s), 1),
               f"< {TARGET_VERIFY_S:.0f} s", verify < TARGET_VERIFY_S)
    result.row("bundle of 1,000 entries", r(len(raw) / 1024, 1), "KiB")
    result.row("paper code of a statement, both logs at 100,000 entries (QR limit)", code_len,
               "chars", bundle.PAPER_MAX, round(code_len / bundle.PAPER_MAX, 2),
               f"<= {bundle.PAPER_MAX}", code_len <= bundle.PAPER_MAX)
    result.figures.update({
        "record_append_100k_s": r(append_s, 2), "record_append_baseline_s": r(bare_s, 2),
        "record_proof_us": r(median(cached), 1), "record_proof_fresh_us": r(median(fresh), 1),
        "record_verify_1000_s": r(verify, 3), "record_paper_chars": code_len,
    })
    result.series = {"proof_us": cached, "verify_s": verify_s}
    result.seconds = time.monotonic() - started
    return result


def _paper_code_length(tree: merkle.Tree) -> int:
    """A statement's paper bundle as a terminal makes it, with both logs of this size."""
    from parley.core import checkpoint as cp
    from parley.core import record
    from parley.core.encoding import b64e
    from parley.core.keys import DeviceKeys
    from parley.core.statement import StatementBook, signed_message

    sites = {"washington/hotline": DeviceKeys.generate(), "moscow/hotline": DeviceKeys.generate()}
    book = StatementBook("washington")
    _kind, payload = book.draft("moscow", title="Joint statement on the hotline",
                                text="The two sides agree.", by="washington/hotline",
                                now_ms=1_700_000_000_000)
    version = book.get(payload["core"]["statement"]).latest
    sigs = {d: b64e(k.sign(signed_message(version.sha256, d))) for d, k in sites.items()}
    logs, items = [], []
    for n, (site, witness) in enumerate((("washington/hotline", "moscow/hotline"),
                                         ("moscow/hotline", "washington/hotline"))):
        entry = record.make_entry("statement", site, 1_700_000_000_000,
                                  statement=version.core["statement"], version=1,
                                  event="final", sha256=version.sha256, title="Joint"
                                  " statement on the hotline", by=site, signatures=sigs)
        size = tree.size
        leaves = [*tree.levels[0][: size - 1], record.leaf(entry)]
        grown = merkle.Tree(leaves)
        note = cp.sign_checkpoint(cp.Checkpoint(record.origin_of(site), size, grown.root()),
                                  site, sites[site])
        line = cp.cosign(note, witness, sites[witness], 1_700_000_000)
        logs.append({"origin": record.origin_of(site), "key": site, "checkpoints": [
            {"note": note, "cosignatures": [{"by": witness, "line": line}]}]})
        items.append({"log": n, "checkpoint": 0, "index": size - 1, "entry": entry.decode(),
                      "proof": bundle.b64_hashes(grown.inclusion_proof(size - 1))})
    made = bundle.sign({
        "format": bundle.FORMAT, "version": 1, "made_by": "washington/hotline",
        "made_ms": 1_700_000_000_000,
        "keys": {d: bundle.public_key_json(k.public(d), whole=False) for d, k in sites.items()},
        "logs": logs, "entries": items,
        "statements": [{"core": version.core, "signatures": sigs}]},
        sites["washington/hotline"].sign)
    bundle.verify(made)
    return len(bundle.to_paper(made))
