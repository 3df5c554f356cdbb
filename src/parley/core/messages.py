"""Hotline messages: text and files between the parties of a line, in order, exactly once.

How it works
------------
A *conversation* belongs to a line: the two parties' names, sorted
(`conversation_id`). A message is sent to a *party*: one envelope to each of
that party's verified devices, and a copy to each of the sender's own other
verified devices, every copy sealed to its device and signed like any
envelope, and stored by the server until that device acknowledges it.

Each sender device numbers its messages in a conversation, 1, 2, 3...: the
*sequence number*, inside the seal and signed with the rest, beside a random
message id that is the same in every copy. A receiving device keeps one
`Stream` per (conversation, sender device) and shows a message only in
sequence: one that arrives early is kept, not shown, until the ones before it
come. A gap that stays open is asked about (``msg.resend``: "send me 5 to 7
again", signed like everything) and, if it still stays open, declared lost
with a notice the person sees, so that nothing waits for ever. Each copy also
says where the sender's numbering began *for that device* (``first``), so a
device enrolled later does not wait for messages it was never sent.

Exactly once: a message is shown under its id once, whatever comes again; the
terminal commits it before it acknowledges the envelope (so a crash between
the two brings it again, and it is recognised), and the server stores an
envelope before it says so.

Receipts (``msg.receipt``) go back to the sending device: *delivered* once a
device has committed a message (a file: once all of it arrived and its hash
matched), *read* once its person has seen it; one receipt names many
messages. The sender shows, per message, "sent" (the server stored it),
"delivered" per device, and "read" per person.

Files travel as a ``msg.file`` message in the sequence (name, type, size and
SHA-256 of the whole, all inside the seal) followed by ``msg.chunk`` envelopes
of `CHUNK_BYTES` each; the receiver writes them where they belong, whatever
their order, and checks the hash once it has every one.

This module only decides: the terminal (`terminal/messages.py`) stores,
sends and shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import schema
from .errors import ErrorCode, RemoteError
from .keys import NAME_MAX

MAX_TEXT = 64 * 1024  # characters of one message
MAX_FILE = 25 * 1000 * 1000  # bytes of one file
CHUNK_BYTES = 128 * 1024  # raw bytes a chunk carries (base64 inside its payload)
MAX_CHUNKS = -(-MAX_FILE // CHUNK_BYTES)
MAX_RECEIPT_IDS = 500  # message ids one receipt names
MAX_RESEND = 500  # sequence numbers one resend request asks for
GAP_WAIT_MS = 3_000  # a gap this old is asked about (the mailbox may still be arriving)
LOST_AFTER_MS = 30_000  # ...and this long after asking, declared lost
RESEND_AGAIN_MS = 10_000
# How long a message envelope may wait on the server and still be accepted. An older one
# is refused as stale (and what it carried is asked for again, as for any gap); the ids
# of those accepted are remembered as long, which bounds the replay table.
MAX_AGE_MS = 30 * 24 * 3600 * 1000
# Numbers declared lost that are remembered (so that one coming after all is shown, late):
# the newest this many of a stream. A gap can be as wide as a sender's numbering jumps.
LOST_KEPT = 1_000

MESSAGE_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def check_message_id(value: str) -> None:
    """A message id as `random_id` writes them: never a path, never markup."""
    if not 16 <= len(value) <= 32 or not set(value) <= MESSAGE_ID_CHARS:
        raise RemoteError(f"{value[:40]!r} is not a message id")


_ID = schema.Field(str, max_len=32, check=check_message_id)
_CONV = schema.Field(str, max_len=2 * NAME_MAX + 1,
                     check=lambda v: parse_conversation(v))
_SEQ = schema.integer(1, 2**53)
_SEQUENCED = {"conv": _CONV, "seq": _SEQ, "first": _SEQ, "msg_id": _ID}

PAYLOADS: dict[str, dict[str, schema.Field]] = {
    "msg.text": {**_SEQUENCED, "text": schema.text(MAX_TEXT)},
    "msg.file": {
        **_SEQUENCED,
        "name": schema.text(255),
        "type": schema.text(127),
        "size": schema.integer(0, MAX_FILE),
        "sha256": schema.text(64),
        "chunks": schema.integer(0, MAX_CHUNKS),
        "text": schema.text(MAX_TEXT, required=False),  # a caption
    },
    "msg.chunk": {"msg_id": _ID, "index": schema.integer(0, MAX_CHUNKS - 1),
                  "data": schema.text(-(-CHUNK_BYTES // 3) * 4)},
    "msg.receipt": {"conv": _CONV,
                    "kind": schema.text(16, choices=frozenset({"delivered", "read"})),
                    "ids": schema.Field(list, max_len=MAX_RECEIPT_IDS)},
    "msg.resend": {"conv": _CONV, "from_seq": _SEQ, "to_seq": _SEQ},
}
SEQUENCED = frozenset({"msg.text", "msg.file"})


def conversation_id(a: str, b: str) -> str:
    """The conversation of a line between parties `a` and `b` (a party's own: 'a|a')."""
    lo, hi = sorted((a, b))
    return f"{lo}|{hi}"


def parse_conversation(conv: str) -> tuple[str, str]:
    lo, sep, hi = conv.partition("|")
    if not sep or not lo or not hi or "|" in hi or lo > hi:
        raise RemoteError(f"{conv[:90]!r} is not a conversation ('party|party', sorted)")
    return lo, hi


def check_conversation(conv: str, me: str, sender: str) -> None:
    """A message from party `sender` to party `me` may only belong to their line."""
    parties = set(parse_conversation(conv))
    if me not in parties or (sender != me and parties != {me, sender}):
        raise RemoteError(
            f"a message from {sender} names the conversation {conv}, which is not theirs"
            f" with {me}", code=ErrorCode.BAD_MESSAGE)


def check_receipt_ids(ids: list[object]) -> list[str]:
    out = []
    for ident in ids:
        if not isinstance(ident, str):
            raise RemoteError("msg.receipt.ids must be message ids")
        check_message_id(ident)
        out.append(ident)
    return out


def chunk_count(size: int) -> int:
    return -(-size // CHUNK_BYTES)


def check_file(size: int, chunks: int, sha256: str) -> None:
    if chunks != chunk_count(size):
        raise RemoteError(f"a file of {size} bytes has {chunk_count(size)} chunks, not {chunks}")
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise RemoteError("msg.file.sha256 must be 64 hex digits")


def check_text(text: str) -> None:
    """What a person may send: some text, within the limit."""
    if not text.strip():
        raise RemoteError("a message needs some text", code=ErrorCode.BAD_MESSAGE)
    if len(text) > MAX_TEXT:
        raise RemoteError(f"a message holds at most {MAX_TEXT:,} characters, not"
                          f" {len(text):,}", code=ErrorCode.TOO_LARGE,
                          hint="send it as a file instead ('--file')")


# --- one sender's numbering, as a receiver sees it ---------------------------------------


@dataclass
class Stream:
    """What a device knows of one sender device's messages in one conversation.

    `next_seq` is the next one to show (0: none seen yet); `held` the sequence
    numbers that came early; the gap is what lies between. `lost` are numbers
    declared lost: one that comes after all is shown then, marked late, never
    dropped. The terminal persists this.
    """

    next_seq: int = 0
    held: set[int] = field(default_factory=set)
    gap_since_ms: int | None = None  # when the current gap was first seen
    asked_ms: int | None = None  # when we last asked for it again
    first_asked_ms: int | None = None  # when we first asked (the lost clock runs from it)
    lost: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Placement:
    """What to do with a sequenced message that just arrived."""

    duplicate: bool = False  # shown already: drop it, acknowledge it
    show: tuple[int, ...] = ()  # show these now, in this order (it, and held ones after it)
    hold: bool = False  # keep it, not shown, until the gap before it is filled
    late: bool = False  # it was declared lost, and came after all: show it, marked late


def place(stream: Stream, seq: int, first: int, now_ms: int) -> Placement:
    """Where message `seq` goes in `stream`; updates the stream."""
    if stream.next_seq == 0 or (first > stream.next_seq and not stream.held):
        # The first we hear of this sender here, or it began again for us after
        # everything we had was shown: its numbering for us starts at `first`.
        stream.next_seq = min(first, seq) if stream.next_seq == 0 else first
    if seq in stream.lost:
        stream.lost.discard(seq)
        return Placement(show=(seq,), late=True)
    if seq < stream.next_seq or seq in stream.held:
        return Placement(duplicate=True)
    if seq > stream.next_seq:
        stream.held.add(seq)
        if stream.gap_since_ms is None:
            stream.gap_since_ms = now_ms
        return Placement(hold=True)
    shown = [seq]
    stream.next_seq = seq + 1
    while stream.next_seq in stream.held:
        stream.held.discard(stream.next_seq)
        shown.append(stream.next_seq)
        stream.next_seq += 1
    stream.gap_since_ms = None if not stream.held else now_ms
    stream.asked_ms = stream.first_asked_ms = None
    return Placement(show=tuple(shown))


@dataclass(frozen=True)
class GapAction:
    ask: tuple[int, int] | None = None  # ask the sender for these again (from, to)
    lost: tuple[int, int] | None = None  # declare these lost (from, to) ...
    show: tuple[int, ...] = ()  # ...and show what was held behind them


def gap_due(stream: Stream, now_ms: int) -> int | None:
    """When `handle_gap` has something to do for this stream (None: nothing pending)."""
    if not stream.held or stream.gap_since_ms is None:
        return None
    if stream.asked_ms is None or stream.first_asked_ms is None:
        return stream.gap_since_ms + GAP_WAIT_MS
    return min(stream.asked_ms + RESEND_AGAIN_MS, stream.first_asked_ms + LOST_AFTER_MS)


def handle_gap(stream: Stream, now_ms: int) -> GapAction:
    """Ask about a gap that stays open; declare it lost once asking has not filled it.

    The terminal calls this only while it is connected, so a gap is always asked
    about first, and the time it waits for an answer is time the sender could
    answer in.
    """
    due = gap_due(stream, now_ms)
    if due is None or now_ms < due:
        return GapAction()
    missing = (stream.next_seq, min(stream.held) - 1)
    if stream.first_asked_ms is not None and now_ms >= stream.first_asked_ms + LOST_AFTER_MS:
        stream.lost.update(range(max(missing[0], missing[1] + 1 - LOST_KEPT), missing[1] + 1))
        if len(stream.lost) > LOST_KEPT:
            stream.lost = set(sorted(stream.lost)[-LOST_KEPT:])
        stream.next_seq = missing[1] + 1
        shown = []
        while stream.next_seq in stream.held:
            stream.held.discard(stream.next_seq)
            shown.append(stream.next_seq)
            stream.next_seq += 1
        stream.gap_since_ms = now_ms if stream.held else None
        stream.asked_ms = stream.first_asked_ms = None
        return GapAction(lost=missing, show=tuple(shown))
    stream.asked_ms = now_ms
    if stream.first_asked_ms is None:
        stream.first_asked_ms = now_ms
    ask = (missing[0], min(missing[1], missing[0] + MAX_RESEND - 1))
    return GapAction(ask=ask)
