"""The server's board of lines: line-test results filed, checked and turned into a state.

A test set files each line test's record (`core.linetest`) over its session.
The board accepts one only if it is whole and signed by both ends with the
keys of the devices this server enrolled (not revoked), the filer is one of
those ends, and the two are on a line; anything else is refused, with the
reason counted (``parley_linetests_refused_total``). What it accepts is
stored with its verdict.

Each line's state is its last result's, or red when there is none or it is
older than two test intervals (`linetest.line_status`). `tick` says which
lines changed state since it last looked (a result came, or one aged out):
those are what the alert webhook is told. The state last announced is kept
in the store, so a restart neither repeats an alert nor forgets one.

Pure: no clock, no sockets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from .. import linetest
from ..errors import ErrorCode, ParleyError, RemoteError
from ..keys import DevicePublicKeys, split_device_id

HISTORY_DAYS = 90
KEPT_MS = (HISTORY_DAYS + 1) * 86_400_000


class LineStore(Protocol):
    def device(self, ident: str) -> DevicePublicKeys | None:
        """An enrolled device's public keys; None if unknown or revoked."""

    def lines(self) -> list[tuple[str, str]]: ...

    def add_linetest(self, record: dict[str, Any], filed_ms: int, status: str,
                     reasons: list[str]) -> bool:
        """Store a verified result; False if its test id is there already."""

    def last_linetest(self, line: str) -> tuple[dict[str, Any], str, list[str]] | None:
        """The line's newest result (by when it ended), with its verdict."""

    def line_states(self) -> dict[str, tuple[str, list[str], int]]:
        """What was last announced per line: (status, reasons, since_ms)."""

    def set_line_state(self, line: str, status: str, reasons: list[str], since_ms: int) -> None:
        ...

    def forget_linetests(self, ended_before_ms: int) -> int: ...


@dataclass(frozen=True)
class Change:
    """A line whose state is not what was last announced."""

    line: str
    before: str | None  # None: never announced
    before_since_ms: int | None  # since when it was that
    state: linetest.LineState
    test_id: str | None


class LineBoard:
    def __init__(self, store: LineStore, thresholds: linetest.Thresholds,
                 default_interval_s: int = linetest.DEFAULT_INTERVAL_S) -> None:
        self.store = store
        self.thresholds = thresholds
        self.default_interval_s = default_interval_s
        self.refused: Counter[str] = Counter()
        self.filed = 0
        self._last: dict[str, tuple[dict[str, Any], str, list[str]] | None] = {}

    # -- results in ------------------------------------------------------------------

    def file(self, filer: str, record: Any, now_ms: int) -> tuple[str, list[str]]:
        """Check and store a result filed by device `filer`; its verdict, or RemoteError."""
        try:
            if not isinstance(record, dict):
                raise RemoteError("a line test record must be an object",
                                  code=ErrorCode.BAD_MESSAGE)
            linetest.check_record_shape(record)
            if filer not in (record["caller"], record["callee"]):
                raise RemoteError(f"{filer} filed a line test between {record['caller']} and"
                                  f" {record['callee']}", code=ErrorCode.FORBIDDEN,
                                  hint="only an end of a test files its result")
            a, b = (split_device_id(record[w])[0] for w in ("caller", "callee"))
            if tuple(sorted((a, b))) not in set(self.store.lines()):
                raise RemoteError(f"there is no line between {a} and {b}",
                                  code=ErrorCode.NO_LINE)
            linetest.check_not_future(record, now_ms)
            try:
                linetest.verify_record(record, self.store.device(record["caller"]),
                                       self.store.device(record["callee"]))
            except ParleyError as exc:  # a SecurityAlarm: told to the filer as refused
                raise RemoteError(exc.message, code=exc.code, hint=exc.hint) from None
        except RemoteError as exc:
            self.refused[str(exc.code)] += 1
            raise
        status, reasons = linetest.evaluate(record, self.thresholds)
        if not self.store.add_linetest(record, now_ms, status, reasons):
            return status, reasons  # filed before (a retry after a lost reply)
        self.filed += 1
        self._last.pop(record["line"], None)
        return status, reasons

    # -- state out -------------------------------------------------------------------

    def last(self, line: str) -> tuple[dict[str, Any], str, list[str]] | None:
        if line not in self._last:
            self._last[line] = self.store.last_linetest(line)
        return self._last[line]

    def state(self, line: str, now_ms: int) -> linetest.LineState:
        last = self.last(line)
        return linetest.line_status(line, last[0] if last else None,
                                    (last[1], last[2]) if last else None, now_ms,
                                    self.default_interval_s)

    def line_names(self) -> list[str]:
        return sorted(linetest.line_id(a, b) for a, b in self.store.lines())

    def states(self, now_ms: int) -> list[linetest.LineState]:
        return [self.state(line, now_ms) for line in self.line_names()]

    def tick(self, now_ms: int) -> list[Change]:
        """Lines whose state differs from what was last announced (`mark` them once the
        alerts for them are queued, in the same transaction)."""
        announced = self.store.line_states()
        changes = []
        for state in self.states(now_ms):
            before = announced.get(state.line)
            untested = before is not None and before[1] == ["never tested"]
            if before is not None and before[0] == state.status and not (
                    untested and state.reasons != ("never tested",)):
                continue  # (a first result that is red is a change from "never tested")
            if (before is None and state.reasons == ("never tested",)) or (
                    before is not None and before[1] == ["never tested"]
                    and state.status == linetest.GREEN):
                # A new line starts red, and turns green at its first test, without an
                # alert: nothing has gone wrong, nor come right again.
                self.store.set_line_state(state.line, state.status, list(state.reasons),
                                          now_ms)
                continue
            last = self.last(state.line)
            changes.append(Change(state.line, before[0] if before else None,
                                  before[2] if before else None, state,
                                  last[0]["test_id"] if last else None))
        return changes

    def mark(self, changes: list[Change], now_ms: int) -> None:
        """These changes are announced."""
        for change in changes:
            self.store.set_line_state(change.line, change.state.status,
                                      list(change.state.reasons), now_ms)

    def forget_cached(self) -> None:
        """What the store holds may not be what was cached (a commit failed)."""
        self._last.clear()

    def forget(self, line: str) -> None:
        """A test of this line was filed on another node: read it from the store anew."""
        self._last.pop(line, None)

    def forget_old(self, now_ms: int) -> int:
        return self.store.forget_linetests(now_ms - KEPT_MS)

    def for_party(self, party: str, now_ms: int) -> list[dict[str, Any]]:
        """What a device of `party` is told of its lines: each state with its last record."""
        out = []
        for line in self.line_names():
            if party not in line.split(":"):
                continue
            last = self.last(line)
            out.append({**self.state(line, now_ms).to_json(),
                        "record": last[0] if last else None})
        return out

