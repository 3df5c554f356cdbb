"""What one end of a WebSocket has to say, written out once per event-loop turn.

The line server used to write every frame the moment it had one: a relayed
envelope meant one WebSocket message and one socket write to its recipient
and another to its sender, and those writes were most of the server's time.
Now frames for a socket go into its `Outbox`, and the first frame queued in a
turn starts a writer that runs once the turn's other work is done. By then
everything the turn produced for that socket is waiting, and goes out as few
messages as `wire.pack_batches` allows (or, on a connection that did not
negotiate batches, as one message per frame, still from that one writer).
Under light load a turn holds one frame and nothing is delayed but the rest of
that turn; under load one write carries dozens of frames. A terminal's link
to the server sends through one too.

Before each write the writer calls `before_write`: the line server commits its
mailbox there, so that no frame (a ``sent`` saying "stored", above all) goes
out before what it speaks of is on disk. It may return an awaitable (a commit
under way): the frames queued until then wait for it, and are dropped (the
outbox closed) if it comes to False; those queued meanwhile wait for the next
call.

Each socket has its own writer, so a slow reader holds up only its own frames.
Those pile up to `OUTBOX_FRAMES` or `OUTBOX_BYTES`; past that, whoever queues
more for it should wait for room (`Outbox.room`), so that a reader that does
not keep up slows down those who send to it, as the socket's own flow control
did before, instead of filling the server's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from parley.core import wire

OUTBOX_FRAMES = 1000
OUTBOX_BYTES = 4 * wire.MAX_FRAME


class Outbox:
    def __init__(self, send: Callable[[str], Awaitable[None]], *, batched: bool,
                 before_write: Callable[[], Awaitable[Any] | None] | None = None) -> None:
        self._send = send  # sends one WebSocket text message
        self.batched = batched
        self._before_write = before_write
        self._frames: list[str] = []
        self._size = 0
        self._writer: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def put(self, frame: str) -> None:
        """Queue one frame (JSON text without raw line breaks) to go out this turn."""
        if self.closed:
            return
        self._frames.append(frame)
        self._size += len(frame)
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write())
        if len(self._frames) >= OUTBOX_FRAMES or self._size >= OUTBOX_BYTES:
            self._room.clear()

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def room(self) -> None:
        """Wait until the writer has caught up (or the socket is gone)."""
        await self._room.wait()

    async def flush(self) -> None:
        """Wait until everything queued so far has been handed to the socket."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    def close(self) -> None:
        """Drop what is queued and refuse more; whoever waits for room goes on."""
        self.closed = True
        self._frames.clear()
        self._size = 0
        self._room.set()

    async def _write(self) -> None:
        try:
            while self._frames:
                # What these frames speak of is committed before they leave: at once, or
                # by the commit it returns (a frame queued meanwhile waits for the next).
                waiting = self._before_write() if self._before_write is not None else None
                frames, self._frames, self._size = self._frames, [], 0
                self._room.set()
                if waiting is not None and await waiting is False:
                    self.close()  # it failed: none of them may leave
                if self.closed:
                    break
                for message in wire.pack_batches(frames) if self.batched else frames:
                    await self._send(message)
        except (ConnectionError, RuntimeError):
            # The socket is closing; its session is being dropped and nobody reads this.
            self.close()
        finally:
            self._writer = None
