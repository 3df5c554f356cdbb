"""What faces the network, as fuzz targets: each takes bytes and may fail only with ParleyError.

A target is a function ``(data: bytes) -> None``. Anything it raises that is
not Parley's own error (`ParleyError`: a clear refusal for the sender) is a
defect -- a KeyError, a ValueError, a recursion, an assertion of the targets'
own -- and a crash for the fuzzer. The targets mirror what the processes do
with what arrives:

* the line server: a WebSocket message split into frames (`wire.split_batch`)
  and each frame parsed against the client table; the fast path for ``send``
  frames, checked against the general path (whatever the fast path takes, the
  general path takes too, and they agree on the envelope's header);
* a terminal: the server's frames (``deliver``'s envelope, ``directory``'s key
  bundles), envelopes and every payload schema, SDP checks, its page's
  messages and local API bodies, the record's entries, checkpoints and
  cosignatures, bundles and paper codes;
* a server node: what the other nodes tell it through the database (a
  notification's events, one per line: `core.relay.peers`);
* a media stack: every encoded frame the peer sends, opened by the SFrame layer
  (`sframe.FrameOpener`, whose refusals are `SFrameError`s: the frame is dropped).

`scripts/fuzz` runs them under atheris (coverage-guided); `tests/core/
test_fuzz_corpus.py` runs each over its seed corpus and the inputs of every
crash found so far (`fuzz/regressions/`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519

from parley.core import bundle, checkpoint, record, schema, sframe, wire
from parley.core.envelope import Envelope
from parley.core.errors import ParleyError
from parley.core.keys import DevicePublicKeys
from parley.core.kinds import KINDS
from parley.core.linetest import check_record_shape
from parley.core.relay import peers
from parley.core.relay.fastpath import quick_send
from parley.core.sdp import check_secure_sdp, dtls_fingerprints
from parley.core.statement import Version
from parley.terminal.browser import PAGE_MESSAGES, host_candidate_allowed

Target = Callable[[bytes], None]
MAX_JSON = 256 * 1024
# A fixed key, so that the checkpoint target reaches the signature checks.
NOTE_KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NOTE_NAME = "washington/hotline"
FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)


def _text(data: bytes) -> str | None:
    """A WebSocket text message (or a text field): valid UTF-8, or never delivered."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def server_frames(data: bytes) -> None:
    """The line server, reading a terminal's WebSocket message."""
    text = _text(data)
    if text is None:
        return
    for frame in wire.split_batch(text):
        wire.parse_message(frame, wire.CLIENT_MESSAGES, what="frame")


def fast_path(data: bytes) -> None:
    """The server's fast path for send frames agrees with its general path."""
    text = _text(data)
    if text is None:
        return
    quick = quick_send(text)
    if quick is None:
        return
    message = wire.parse_message(text, wire.CLIENT_MESSAGES, what="frame")
    if message["t"] != "send":
        raise AssertionError("the fast path took a frame that is not a send frame")
    env = Envelope.from_json(message["env"])
    if (env.id, env.sender, env.recipient, env.type) != quick[1]:
        raise AssertionError(f"the fast path read another header: {quick[1]}")


def terminal_frames(data: bytes) -> None:
    """A terminal, reading the server's frames: deliveries and directory answers."""
    text = _text(data)
    if text is None:
        return
    for frame in wire.split_batch(text):
        message = wire.parse_message(frame, wire.SERVER_MESSAGES, what="server frame")
        if message["t"] == "deliver":
            Envelope.from_json(message["env"])
        elif message["t"] == "directory":
            for entry in message["devices"]:
                try:
                    DevicePublicKeys.from_json(entry)
                except ParleyError:
                    continue  # one bad entry is dropped, the rest stand


def envelope(data: bytes) -> None:
    value = schema.parse_json(data, max_bytes=MAX_JSON, what="envelope")
    env = Envelope.from_json(value)
    env.signed_bytes()


def payloads(data: bytes) -> None:
    """An opened envelope's payload, checked against its kind's schema, and deeper."""
    if not data:
        return
    # "<kind>\n<payload>": the kind named, or (a name mutated away) one picked by its
    # first byte, so that every schema is reached however the fuzzer mangles the name.
    name, _, body = data.partition(b"\n")
    kind = KINDS.get(name.decode("utf-8", "replace")) or KINDS[sorted(KINDS)[
        data[0] % len(KINDS)]]
    value = schema.parse_json(body, max_bytes=MAX_JSON, what=kind.name)
    fields = schema.validate(value, kind.fields, what=kind.name)
    if kind.name == "statement.version":
        Version.from_payload(fields)
    elif kind.name == "record.checkpoint":
        record.decode_proof(fields["proof"])
        checkpoint.parse_checkpoint(fields["note"].partition("\n\n")[0] + "\n")
        for item in fields.get("statements") or []:
            record.parse_entry(item["entry"].encode())
    elif kind.name == "linetest.result":
        check_record_shape(fields.get("record"))


def key_bundle(data: bytes) -> None:
    DevicePublicKeys.from_json(schema.parse_json(data, max_bytes=MAX_JSON, what="keys"))


def sdp(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    dtls_fingerprints(text)
    check_secure_sdp(text, FINGERPRINT, who="the peer")


def page_messages(data: bytes) -> None:
    """The terminal's local API: what its page sends on the events socket."""
    text = _text(data)
    if text is None:
        return
    message = wire.parse_message(text, PAGE_MESSAGES, what="page message")
    if message["t"] == "media.candidate":
        host_candidate_allowed(message["candidate"], ("127.0.0.1",))


def record_entry(data: bytes) -> None:
    entry = record.parse_entry(data)
    record.describe(entry)


def checkpoint_note(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    note, _, line = text.partition("\x00")
    with contextlib.suppress(ParleyError):
        checkpoint.open_checkpoint(note, NOTE_NAME, NOTE_KEY.public_key())
    if line:
        checkpoint.verify_cosignature(note, line, NOTE_NAME, NOTE_KEY.public_key())


def bundle_file(data: bytes) -> None:
    report = bundle.verify_file(data)
    report.to_json()


# Fixed keys, so that the seeds (frames sealed under them) reach the decryption.
FRAME_KEYS = sframe.StreamKeys(0, bytes(range(16)), bytes(range(16, 32)))


def media_frames(data: bytes) -> None:
    """The SFrame layer, opening what the peer sent: audio, video, and the header alone."""
    for kind in sframe.Kind:
        opener = sframe.FrameOpener(kind)
        opener.add(FRAME_KEYS)
        for _ in range(2):  # the second time, a frame that opened is a replay
            with contextlib.suppress(sframe.SFrameError):
                opened = opener.open(data)
                clear = sframe.clear_bytes(kind, data)
                if opened[:clear] != data[:clear]:
                    raise AssertionError("the readable bytes changed on the way through")
    with contextlib.suppress(sframe.SFrameError):
        sframe.decode_header(data)


def paper_code(data: bytes) -> None:
    text = _text(data)
    if text is None:
        return
    bundle.verify_file(bundle.from_paper(text))


def node_events(data: bytes) -> None:
    """A server node, reading a notification from the other nodes (server.cluster): its
    seal (never opened without the key), then its events."""
    text = _text(data)
    if text is None:
        return
    try:
        peers.Seal(bytes(32)).open(text, 0)
    except ParleyError:
        pass
    else:
        raise AssertionError("a notification opened that was not sealed")
    for line in text.split("\n"):
        event = peers.parse_event(line)
        if event.kind == peers.ACKED:
            assert isinstance(event.ident, str)


TARGETS: dict[str, Target] = {
    "server_frames": server_frames, "fast_path": fast_path,
    "terminal_frames": terminal_frames, "envelope": envelope, "payloads": payloads,
    "key_bundle": key_bundle, "sdp": sdp, "page_messages": page_messages,
    "record_entry": record_entry, "checkpoint_note": checkpoint_note,
    "bundle_file": bundle_file, "paper_code": paper_code, "media_frames": media_frames,
    "node_events": node_events,
}


def run(name: str, data: bytes) -> None:
    """One input through one target: Parley's own refusals are fine, nothing else is."""
    with contextlib.suppress(ParleyError):
        TARGETS[name](data)
