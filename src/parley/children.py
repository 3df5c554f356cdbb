"""Child processes whose stdout is read line by line, their stderr kept in a log.

`parley demo` and the benchmarks start servers and terminals this way: each
child says it is ready on a stdout line with a known prefix (``ready: URL``,
``ui: URL``); anything it logs goes to ``<name>.log``, and when it does not get
ready in time the error carries the end of that log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, BinaryIO, Self

from parley.core.errors import ErrorCode, LocalError

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LINE_LIMIT = 64 * 1024 * 1024  # benchmarks print long JSON lines


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


class Child:
    """A subprocess in its own session, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    @classmethod
    async def spawn(cls, name: str, argv: list[str], log_dir: Path, *, stdin: bool = False,
                    env: dict[str, str] | None = None, cwd: Path | None = None) -> Self:
        log_path = log_dir / f"{name}.log"
        log_file = _open_log(log_path)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=log_file,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=cwd, start_new_session=True, limit=LINE_LIMIT)
        finally:
            log_file.close()
        return cls(name, proc, log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def line(self, prefix: str = "", timeout: float = START_TIMEOUT_S) -> str:
        """The next stdout line that starts with `prefix` (without it)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(),
                                             deadline - time.monotonic())
            except TimeoutError:
                break
            if not raw:
                break
            text = raw.decode().strip()
            if text.startswith(prefix):
                return text[len(prefix):].strip()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise LocalError(f"{self.name}: no line starting {prefix!r} within {timeout:.0f} s",
                         code=ErrorCode.SERVER_ERROR,
                         hint=f"its log ({self.log_path}) ends with:\n{tail}")

    async def json_line(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        """The next line ``json: {...}``, parsed."""
        return dict(json.loads(await self.line("json: ", timeout)))

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
