"""The record's pure parts: entries, joint statements, bundles and their verifier, Base45."""

from __future__ import annotations

import json
from typing import Any

import pytest

from parley.core import bundle, merkle, record
from parley.core import checkpoint as cp
from parley.core.encoding import b64e, canonical_json
from parley.core.errors import LocalError, RemoteError
from parley.core.keys import DeviceKeys
from parley.core.statement import StatementBook, signed_message

W, M = "washington/hotline", "moscow/hotline"
KEYS = {W: DeviceKeys.generate(), M: DeviceKeys.generate()}
KEYS_OFFICE = DeviceKeys.generate()


def verify_with(device: str, message: bytes, signature: bytes) -> bool:
    return KEYS[device].public(device).verify(signature, message)


# -- entries ----------------------------------------------------------------------------

def test_an_entry_is_canonical_typed_and_versioned() -> None:
    data = record.make_entry("note", W, 1_700_000_000_000, text="Agreed: the line stays.")
    assert data == canonical_json(json.loads(data))
    assert record.parse_entry(data) == {"v": 1, "type": "note", "site": W,
                                        "time_ms": 1_700_000_000_000,
                                        "text": "Agreed: the line stays."}
    spaced = json.dumps(json.loads(data)).encode()  # the same values, other bytes
    with pytest.raises(RemoteError, match="canonical"):
        record.parse_entry(spaced)
    with pytest.raises(RemoteError, match="unknown field"):
        record.make_entry("note", W, 1, text="x", colour="red")
    with pytest.raises(RemoteError):
        record.make_entry("message", W, 1, msg_id="m", dir="sideways", party="moscow",
                          sender=M, kind="text", sha256="0" * 64, size=1)
    with pytest.raises(RemoteError, match="site"):
        record.parse_entry(canonical_json({"v": 1, "type": "note", "time_ms": 1, "text": "x"}))
    # A newer version's entry, or a type this version does not know, is read as it is.
    later = canonical_json({"v": 2, "type": "hologram", "site": W, "time_ms": 5, "x": [1]})
    assert record.parse_entry(later)["type"] == "hologram"
    assert "hologram" in record.describe(record.parse_entry(later))


# -- statements ---------------------------------------------------------------------------

def books() -> tuple[StatementBook, StatementBook]:
    return StatementBook("washington"), StatementBook("moscow")


def test_a_statement_is_edited_in_turns_and_final_when_both_sign_one_version() -> None:
    wb, mb = books()
    kind, draft = wb.draft("moscow", title="On the line", text="Draft.", by=W, now_ms=1)
    ident = draft["core"]["statement"]
    assert mb.apply(W, kind, draft, verify_with).result == "applied"
    assert mb.apply(W, kind, draft, verify_with).result == "duplicate"
    with pytest.raises(LocalError, match="for moscow to edit"):
        wb.edit(ident, text="Draft, again.", by=W, now_ms=2)  # its own version: not its turn
    kind, edit = mb.edit(ident, text="Draft, amended.", by=M, now_ms=3)
    assert edit["core"]["parent"] == wb.get(ident).latest.sha256
    assert wb.apply(M, kind, edit, verify_with).result == "applied"
    v2 = wb.get(ident).latest
    assert v2.number == 2 and v2.text == "Draft, amended."

    # Only the version shown, named by its hash, is signed.
    with pytest.raises(LocalError, match="only the version shown"):
        wb.sign(ident, version=1, sha256=wb.get(ident).versions[0].sha256, by=W,
                signer=KEYS[W].sign)
    with pytest.raises(LocalError, match="only the version shown"):
        wb.sign(ident, version=2, sha256=v2.sha256[:15], by=W, signer=KEYS[W].sign)
    with pytest.raises(LocalError, match="only the version shown"):
        wb.sign(ident, version=2, sha256="0" * 64, by=W, signer=KEYS[W].sign)
    kind, wsig = wb.sign(ident, version=2, sha256=v2.sha256[:16], by=W, signer=KEYS[W].sign)
    assert wsig["sha256"] == v2.sha256 and wb.get(ident).final is None
    assert mb.apply(W, kind, wsig, verify_with).result == "applied"
    kind, msig = mb.sign(ident, version=2, sha256=v2.sha256, by=M, signer=KEYS[M].sign)
    assert mb.get(ident).final == 2
    outcome = wb.apply(M, kind, msig, verify_with)
    assert outcome.became_final and wb.get(ident).final == 2
    with pytest.raises(LocalError, match="final"):
        mb.edit(ident, text="After the fact.", by=M, now_ms=9)
    assert wb.get(ident).to_json() == mb.get(ident).to_json()
    # Nothing more is signed once it is final: not by the other party's second device.
    late = {"statement": ident, "version": 2, "sha256": v2.sha256,
            "signature": b64e(KEYS[M].sign(signed_message(v2.sha256, "moscow/office")))}
    assert wb.apply("moscow/office", "statement.sign", late, lambda *_: True).result == \
        "refused"


def test_a_side_that_signed_does_not_edit_and_a_superseded_version_takes_no_signature(
        ) -> None:
    wb, mb = books()
    kind, draft = wb.draft("moscow", title="T", text="One.", by=W, now_ms=1)
    ident = draft["core"]["statement"]
    mb.apply(W, kind, draft, verify_with)
    v1 = mb.get(ident).latest.sha256
    kind, msig = mb.sign(ident, version=1, sha256=v1, by=M, signer=KEYS[M].sign)
    with pytest.raises(LocalError, match="signed version 1"):
        mb.edit(ident, text="Two.", by=M, now_ms=2)  # it accepted version 1
    assert wb.apply(M, kind, msig, verify_with).result == "applied"
    # An edit from moscow after its signature (made by a book that forgot it signed) is
    # refused at washington: moscow accepted version 1.
    forgetful = StatementBook("moscow")
    forgetful.apply(W, "statement.version", draft, verify_with)
    ekind, edit = forgetful.edit(ident, text="Two.", by=M, now_ms=3)
    refused = wb.apply(M, ekind, edit, verify_with)
    assert refused.result == "refused" and "signed version 1" in refused.why
    # ...and washington signs: final on version 1 at both ends.
    kind, wsig = wb.sign(ident, version=1, sha256=v1, by=W, signer=KEYS[W].sign)
    assert mb.apply(W, kind, wsig, verify_with).became_final
    assert wb.get(ident).final == mb.get(ident).final == 1

    # A signature on a version that a later one superseded is refused.
    wb, mb = books()
    kind, draft = wb.draft("moscow", title="T", text="One.", by=W, now_ms=1)
    ident = draft["core"]["statement"]
    mb.apply(W, kind, draft, verify_with)
    first = wb.get(ident).latest.sha256
    _, early = wb.sign(ident, version=1, sha256=first, by=W, signer=KEYS[W].sign)
    kind, edit = mb.edit(ident, text="Two.", by=M, now_ms=2)  # crossing washington's signature
    assert mb.apply(W, "statement.sign", early, verify_with).result == "refused"
    assert wb.apply(M, kind, edit, verify_with).result == "applied"
    assert wb.get(ident).final is None and mb.get(ident).final is None
    # A signature names its device: the same bytes under another name do not verify.
    moved = {**early, "signature": early["signature"]}
    assert mb.apply("washington/office", "statement.sign", moved, verify_with).result == \
        "refused"


def test_what_a_statement_refuses() -> None:
    wb, mb = books()
    kind, draft = wb.draft("moscow", title="T", text="Text.", by=W, now_ms=1)
    ident = draft["core"]["statement"]
    assert mb.apply(M, kind, draft, verify_with).result == "refused"  # sent by another
    forged = json.loads(json.dumps(draft))
    forged["text"] = "Other text."
    with pytest.raises(RemoteError, match="does not match"):
        mb.apply(W, kind, forged, verify_with)
    mb.apply(W, kind, draft, verify_with)
    kind2, edit = mb.edit(ident, text="Edited.", by=M, now_ms=2)
    # An edit crossing another (the same number, another text) is refused, not merged.
    crossing = json.loads(json.dumps(edit))
    crossing["text"] = "Crossing."
    crossing["core"]["text_sha256"] = record.sha256_hex(b"Crossing.")
    wb.apply(M, kind2, edit, verify_with)
    assert wb.apply(M, kind2, crossing, verify_with).result == "refused"
    # A signature that is not the sender's, or on a version it does not have.
    sha = wb.get(ident).latest.sha256
    bad = {"statement": ident, "version": 2, "sha256": sha,
           "signature": b64e(KEYS[W].sign(signed_message(sha, W)))}
    assert mb.apply(M, "statement.sign", bad, verify_with).result == "refused"
    assert wb.apply(M, "statement.sign", {**bad, "version": 1}, verify_with).result == \
        "refused"
    # A statement with a party not on this line, or with itself.
    with pytest.raises(LocalError):
        wb.draft("washington", title="T", text="x", by=W, now_ms=1)


# -- bundles ------------------------------------------------------------------------------

def small_bundle() -> dict[str, Any]:
    """Two logs, each with a statement's final entry, cosigned by the other; the statement."""
    wb, mb = books()
    kind, draft = wb.draft("moscow", title="On the line", text="Agreed.", by=W, now_ms=1)
    ident = draft["core"]["statement"]
    mb.apply(W, kind, draft, verify_with)
    st = wb.get(ident)
    sha = st.latest.sha256
    sigs = {W: b64e(KEYS[W].sign(signed_message(sha, W))), M: b64e(KEYS[M].sign(
        signed_message(sha, M)))}
    logs, entries = [], []
    for n, (site, witness) in enumerate(((W, M), (M, W))):
        data = [record.make_entry("note", site, 10 + i, text=f"note {i}") for i in range(6)]
        data.append(record.make_entry("statement", site, 20, statement=ident, version=1,
                                      event="final", sha256=sha, title="On the line",
                                      by=site, signatures=sigs))
        tree = merkle.Tree([record.leaf(d) for d in data])
        note = cp.sign_checkpoint(cp.Checkpoint(record.origin_of(site), tree.size,
                                                tree.root()), site, KEYS[site])
        line = cp.cosign(note, witness, KEYS[witness], 1_700_000_000)
        logs.append({"origin": record.origin_of(site), "key": site, "checkpoints": [
            {"note": note, "cosignatures": [{"by": witness, "line": line}]}]})
        entries.append({"log": n, "checkpoint": 0, "index": 6, "entry": data[6].decode(),
                        "proof": bundle.b64_hashes(tree.inclusion_proof(6))})
    out = {"format": bundle.FORMAT, "version": 1, "made_by": W, "made_ms": 30,
           "keys": {d: bundle.public_key_json(KEYS[d].public(d), whole=False)
                    for d in (M, W)},
           "logs": logs, "entries": entries,
           "statements": [{"core": st.latest.core, "text": st.latest.text,
                           "signatures": sigs}]}
    return bundle.sign(out, KEYS[W].sign)


def test_a_bundle_proves_what_it_says_and_nothing_when_any_byte_changes() -> None:
    made = small_bundle()
    raw = canonical_json(made) + b"\n"
    report = bundle.verify_file(raw)
    (said,) = [line for line in report.lines if line.startswith("statement ")]
    assert "signed by moscow/hotline and washington/hotline; final; included in" in said
    assert "washington/hotline's log at size 7 and moscow/hotline's log at size 7" in said
    assert report.statements[0]["final"]
    reasons = set()
    for at in range(len(raw) - 1):  # every byte but the final newline
        changed = bytearray(raw)
        changed[at] ^= 0x20 if chr(raw[at]).isalpha() else 0x01
        with pytest.raises(bundle.BundleError) as caught:
            bundle.verify_file(bytes(changed))
        reasons.add(caught.value.message.split(":")[0].split("[")[0].split(".")[0])
    assert {"the bundle", "keys", "logs", "entries", "statements", "signature"} <= reasons
    # One key under two names (a site posing as the other) is refused.
    posing = json.loads(json.dumps(made))
    posing["keys"][M] = posing["keys"][W]
    with pytest.raises(bundle.BundleError, match="same key"):
        bundle.verify(bundle.sign({k: v for k, v in posing.items() if k != "signature"},
                                  KEYS[W].sign))
    # A log cosigned by a device of its own party proves nothing: refused.
    own = json.loads(json.dumps(made))
    note = own["logs"][0]["checkpoints"][0]["note"]
    own["keys"]["washington/office"] = bundle.public_key_json(
        KEYS_OFFICE.public("washington/office"), whole=False)
    own["logs"][0]["checkpoints"][0]["cosignatures"] = [
        {"by": "washington/office", "line": cp.cosign(note, "washington/office", KEYS_OFFICE,
                                                      1_700_000_000)}]
    with pytest.raises(bundle.BundleError, match="other party"):
        bundle.verify(bundle.sign({k: v for k, v in own.items() if k != "signature"},
                                  KEYS[W].sign))
    # Re-signed by someone else after a change: the signature names who must have made it.
    forged = {**made, "made_ms": 31}
    with pytest.raises(bundle.BundleError, match="signature"):
        bundle.verify(bundle.sign(forged, KEYS[M].sign))


def test_a_bundle_says_what_it_does_not_prove() -> None:
    made = small_bundle()
    del made["logs"][1]["checkpoints"][0]["cosignatures"][0]
    made["entries"] = []
    made["statements"][0]["signatures"].pop(M)
    report = bundle.verify(bundle.sign({k: v for k, v in made.items() if k != "signature"},
                                       KEYS[W].sign))
    text = "\n".join(report.lines)
    assert "moscow/hotline's log at size 7: signed by moscow/hotline, NOT cosigned" in text
    assert "signed by washington/hotline; NOT signed by moscow; not shown included" in text
    # A log's final entry carries the signatures that made it final: one without a
    # signature of each party is caught; a valid one completes the statement's.
    made = small_bundle()
    made["statements"][0]["signatures"].pop(M)
    report = bundle.verify(bundle.sign({k: v for k, v in made.items() if k != "signature"},
                                       KEYS[W].sign))
    assert report.statements[0]["final"] and not report.limits
    entry = json.loads(made["entries"][0]["entry"])
    entry["signatures"].pop(M)
    made["entries"][0]["entry"] = canonical_json(entry).decode()
    with pytest.raises(bundle.BundleError):  # and its proof no longer holds either
        bundle.verify(bundle.sign({k: v for k, v in made.items() if k != "signature"},
                                  KEYS[W].sign))


def test_base45_is_rfc_9285_and_the_paper_code_round_trips() -> None:
    for raw, text in ((b"AB", "BB8"), (b"Hello!!", "%69 VD92EX0"), (b"base-45", "UJCLQE7W581"),
                      (b"ietf!", "QED8WEX0")):
        assert bundle.b45encode(raw) == text and bundle.b45decode(text) == raw
    for bad in ("GGW", "a", "ZZZZ"):
        with pytest.raises(RemoteError):
            bundle.b45decode(bad)
    made = small_bundle()
    code = bundle.to_paper(made)
    assert code.startswith("PR1:") and set(code[4:]) <= set(bundle._B45)
    assert bundle.verify_file(bundle.from_paper(code + "\n")).statements[0]["final"]
    with pytest.raises(bundle.BundleError):
        bundle.from_paper("PR1:" + code[4:-10])  # torn off
