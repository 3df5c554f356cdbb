"""Write the seed corpus: real inputs of each kind, made with Parley's own code.

    python -m fuzz.seeds      # rewrites fuzz/corpus/

Each target starts from what the processes really see: a sealed send frame, a
login, a delivery and a directory answer, an SDP offer from aiortc, page
messages, record entries, a signed checkpoint with a cosignature, a bundle and
its paper code.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from fuzz.targets import FRAME_KEYS, NOTE_KEY, NOTE_NAME
from parley.core import bundle, checkpoint, merkle, record, sframe
from parley.core.encoding import b64e, canonical_json
from parley.core.envelope import seal_envelope
from parley.core.keys import DeviceKeys
from parley.core.kinds import KINDS
from parley.core.statement import StatementBook, signed_message

ROOT = Path(__file__).resolve().parent / "corpus"
W, M = "washington/hotline", "moscow/hotline"


def frames() -> dict[str, list[bytes]]:
    wk, mk = DeviceKeys.generate(), DeviceKeys.generate()
    env = seal_envelope(wk, W, mk.public(M), "msg.text",
                        {"msg_id": "m1", "conv": "moscow:washington", "seq": 1,
                         "first_seq": 1, "text": "hello"}, 1_700_000_000_000).to_json()
    send = json.dumps({"t": "send", "env": env, "ephemeral": False, "ref": "r1"})
    client = [send, json.dumps({"t": "hello", "device": W, "sig": "A" * 86, "receive": True}),
              json.dumps({"t": "ack", "id": "abc"}), json.dumps({"t": "ping", "ref": "p"}),
              json.dumps({"t": "directory", "party": "moscow", "ref": "d"}),
              send + "\n" + json.dumps({"t": "ping", "ref": "q"})]
    server = [json.dumps({"t": "deliver", "env": env}),
              json.dumps({"t": "directory", "party": "moscow", "ref": "d",
                          "display": "The Kremlin", "timezone": "Europe/Moscow",
                          "devices": [mk.public(M).to_json()], "online": [M]}),
              json.dumps({"t": "welcome", "device": W, "party": "washington",
                          "peers": ["moscow"]}),
              json.dumps({"t": "error", "code": "rate_limited", "message": "slow down"})]
    return {"server_frames": [c.encode() for c in client],
            "fast_path": [send.encode()],
            "terminal_frames": [s.encode() for s in server],
            "envelope": [json.dumps(env).encode()],
            "key_bundle": [json.dumps(mk.public(M).to_json()).encode()]}


def payloads() -> list[bytes]:
    examples: dict[str, dict[str, Any]] = {
        "msg.text": {"msg_id": "m1", "conv": "moscow:washington", "seq": 1, "first_seq": 1,
                     "text": "hello"},
        "call.ringing": {"call_id": "c1"},
        "record.cosigned": {"note": "x\n1\nAAAA\n\nsig", "have": 1},
        "sched.reply": {"talk_id": "t1234567", "sequence": 0, "dtstamp_ms": 1,
                        "partstat": "accepted"},
    }
    out = []
    for name, example in examples.items():
        if name in KINDS:
            out.append(name.encode() + b"\n" + json.dumps(example).encode())
    return out


async def sdp_offer() -> bytes:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio")
    pc.addTransceiver("video")
    await pc.setLocalDescription(await pc.createOffer())
    text = pc.localDescription.sdp
    await pc.close()
    return text.encode()


def record_things() -> dict[str, list[bytes]]:
    entries = [record.make_entry("note", W, 1, text="agreed"),
               record.make_entry("call", W, 2, call_id="c1", peer=M, direction="outgoing",
                                 media="video", ended_ms=3, duration_ms=1, verified=True,
                                 end_reason="hung_up"),
               record.make_entry("message", W, 4, msg_id="m1", dir="sent", party="moscow",
                                 sender=W, kind="text", sha256="0" * 64, size=5)]
    tree = merkle.Tree([record.leaf(e) for e in entries])
    note = checkpoint.sign_checkpoint(checkpoint.Checkpoint(record.origin_of(NOTE_NAME),
                                                            tree.size, tree.root()),
                                      NOTE_NAME, NOTE_KEY)
    line = checkpoint.cosign(note, M, NOTE_KEY, 1_700_000_000)
    # A statement between two sites, final in both logs: its bundle and its paper code.
    keys = {W: DeviceKeys.generate(), M: DeviceKeys.generate()}
    book = StatementBook("washington")
    _kind, payload = book.draft("moscow", title="T", text="Agreed.", by=W, now_ms=1)
    version = book.get(payload["core"]["statement"]).latest
    sigs = {d: b64e(k.sign(signed_message(version.sha256, d))) for d, k in keys.items()}
    logs, items = [], []
    for n, (site, witness) in enumerate(((W, M), (M, W))):
        data = record.make_entry("statement", site, 5, statement=version.core["statement"],
                                 version=1, event="final", sha256=version.sha256, title="T",
                                 by=site, signatures=sigs)
        t = merkle.Tree([record.leaf(e) for e in [*entries, data]])
        n_note = checkpoint.sign_checkpoint(checkpoint.Checkpoint(
            record.origin_of(site), t.size, t.root()), site, keys[site])
        logs.append({"origin": record.origin_of(site), "key": site, "checkpoints": [
            {"note": n_note, "cosignatures": [{"by": witness, "line": checkpoint.cosign(
                n_note, witness, keys[witness], 1_700_000_000)}]}]})
        items.append({"log": n, "checkpoint": 0, "index": 3, "entry": data.decode(),
                      "proof": bundle.b64_hashes(t.inclusion_proof(3))})
    made = bundle.sign({"format": bundle.FORMAT, "version": 1, "made_by": W, "made_ms": 6,
                        "keys": {d: bundle.public_key_json(k.public(d), whole=False)
                                 for d, k in sorted(keys.items())},
                        "logs": logs, "entries": items,
                        "statements": [{"core": version.core, "text": version.text,
                                        "signatures": sigs}]}, keys[W].sign)
    bundle.verify(made)
    return {"record_entry": entries,
            "checkpoint_note": [note.encode(), (note + "\x00" + line).encode()],
            "bundle_file": [canonical_json(made) + b"\n"],
            "paper_code": [bundle.to_paper(made).encode()]}


def page() -> list[bytes]:
    return [json.dumps(m).encode() for m in (
        {"t": "page.hello"},
        {"t": "media.candidate", "call_id": "c1", "mid": "0", "mline": 0,
         "candidate": "candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"},
        {"t": "media.connected", "call_id": "c1",
         "certificates": [{"algorithm": "sha-256", "fingerprint": ":".join(["ab"] * 32)}]},
        {"t": "media.stats", "call_id": "c1", "stats": {"rtt_ms": 1, "audio": {"frames": 3}}},
        {"t": "media.failed", "call_id": "c1", "reason": "ice failed"},
        {"t": "media.unprotected", "call_id": "c1", "attempt": 0,
         "detail": "25 audio frames in a row: auth"})]


def media_frames() -> list[bytes]:
    """Frames sealed as a peer seals them, under the target's fixed keys."""
    out = []
    for kind, frames in ((sframe.Kind.AUDIO, [b"\x78" + bytes(range(60)), b"\xfc\x01"]),
                         (sframe.Kind.VIDEO, [b"\x10\x02\x00\x9d\x01\x2a\x80\x02\xe0\x01"
                                              + bytes(200), b"\x31\x02\x00" + bytes(40)])):
        sealer = sframe.FrameSealer(kind)
        sealer.use(FRAME_KEYS)
        sealer.counter = 300  # a counter of more than one byte
        out += [sealer.seal(f) for f in frames]
    return out


def node_events() -> list[bytes]:
    """What nodes tell each other: one of each event, and a notification of several."""
    from parley.core.relay import peers
    one = [peers.encode_event(peers.STORED, 7, 12, "moscow/hotline", "washington/hotline", 900),
           peers.encode_event(peers.ACKED, 7, "moscow/hotline", "washington/hotline", 900,
                              peers.encode_ident("b0QmY2Vp_ZXJz-IHRleHQ")),
           peers.encode_event(peers.SESSION_IN, 7, 3, "Zm9vYmFyYmF6cXV4", "moscow/hotline", 1),
           peers.encode_event(peers.SESSION_OUT, 7, "Zm9vYmFyYmF6cXV4", "moscow/hotline"),
           peers.encode_event(peers.TRANSIT, 7, 4, "moscow/hotline"),
           peers.encode_event(peers.SPENT, 7, "moscow/hotline", 12, 3400),
           peers.encode_event(peers.LINE_FILED, 7, "moscow:washington")]
    return [e.encode() for e in one] + ["\n".join(one).encode()]


def main() -> None:
    seeds: dict[str, list[bytes]] = {**frames(), **record_things(), "payloads": payloads(),
                                     "node_events": node_events(),
                                     "page_messages": page(), "media_frames": media_frames(),
                                     "sdp": [asyncio.run(sdp_offer())]}
    shutil.rmtree(ROOT, ignore_errors=True)
    for name, items in seeds.items():
        folder = ROOT / name
        folder.mkdir(parents=True)
        for i, data in enumerate(items):
            (folder / f"seed-{i}").write_bytes(data)
    print(f"wrote {sum(map(len, seeds.values()))} seeds for {len(seeds)} targets in {ROOT}")


if __name__ == "__main__":
    main()
