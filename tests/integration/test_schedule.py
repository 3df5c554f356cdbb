"""Scheduled talks between real terminals through the real server: the exchange, reminders,
calendar files, and a server that learns nothing of what is scheduled."""

from __future__ import annotations

from pathlib import Path

import icalendar

from parley.core import schedule
from tests.harness import LocalLine, wait_until


def state_at(terminal: object, talk_id: str) -> str | None:
    talk = terminal.talks.book.talks.get(talk_id)  # type: ignore[attr-defined]
    return None if talk is None else talk.state


async def test_a_talk_is_requested_countered_moved_and_confirmed_at_both_ends(
        line: LocalLine, tmp_path: Path) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    title, agenda = "Strategic stability, round 3", "Item one: the hotline itself"
    start = "2031-12-09 15:00 UTC"
    asked = await washington.talks.request("moscow", title=title, at=start,
                                           duration_s=7200, agenda=agenda)
    talk_id = asked["talk_id"]
    assert asked["when"] == ("2031-12-09 15:00 UTC -- 10:00 Tue in America/New_York (-05:00),"
                             " 18:00 Tue in Europe/Moscow (+03:00)")
    await wait_until(lambda: state_at(moscow, talk_id) == schedule.PROPOSED, 10, "the request")
    await moscow.talks.learn_zones()
    seen = next(t for t in moscow.talks.all() if t["talk_id"] == talk_id)
    assert seen["zones"] == ["Europe/Moscow", "America/New_York"] and not seen["mine"]
    assert seen["with_name"] == "The White House"

    await moscow.talks.act("counter", talk_id, at="2031-12-11 19:00", note="Thursday evening")
    await wait_until(lambda: state_at(washington, talk_id) == schedule.COUNTERED, 10,
                     "the counter")
    countered = next(t for t in washington.talks.all() if t["talk_id"] == talk_id)
    assert countered["counter_when"].startswith("2031-12-11 16:00 UTC")  # 19:00 in Moscow
    await washington.talks.act("take-counter", talk_id)
    await wait_until(lambda: moscow.talks.book.talks[talk_id].sequence == 1, 10, "re-request")
    await moscow.talks.act("accept", talk_id)
    await wait_until(lambda: state_at(washington, talk_id) == schedule.CONFIRMED, 10, "accept")
    assert washington.talks.book.talks[talk_id] == moscow.talks.book.talks[talk_id]

    # Reminders: 24 h, 1 h, 10 min before, and at the start; each once.
    begins = washington.talks.book.talks[talk_id].start_ms
    assert begins is not None
    given = washington.talks.remind(begins - 10 * 60_000)
    assert [r["lead_ms"] for r in given] == [600_000]
    assert "starts in 10 min" in given[0]["text"]
    assert washington.talks.remind(begins - 10 * 60_000 + 5000) == []
    assert [r["lead_ms"] for r in moscow.talks.remind(begins)] == [0]

    # A calendar file of it, read by the icalendar package: Moscow's evening, sequence 1.
    cal = icalendar.Calendar.from_ical(washington.talks.export(talk_id))
    (event,) = cal.walk("VEVENT")
    assert int(event["sequence"]) == 1 and str(event["status"]) == "CONFIRMED"
    assert event["dtstart"].dt.astimezone(schedule.zone("Europe/Moscow")).hour == 19

    # Imported back: the same talk (nothing new); under another UID, a new request.
    exported = washington.talks.export(talk_id)
    (same,) = await washington.talks.import_ics(exported)
    assert same["talk_id"] == talk_id and len(washington.talks.book.talks) == 1
    (new,) = await washington.talks.import_ics(exported.replace(talk_id.encode(),
                                                                b"imported-talk-0001"))
    assert new["talk_id"] == "imported-talk-0001" and new["state"] == schedule.PROPOSED
    assert new["start_ms"] == begins and new["title"] == title
    await wait_until(lambda: state_at(moscow, "imported-talk-0001") == schedule.PROPOSED, 10,
                     "the imported request at moscow")

    # The server holds nothing of the talk: not its title, its agenda, nor its time.
    assert line.server is not None
    line.server.store.commit_group()
    raw = b"".join(p.read_bytes() for p in (line.root / "server").glob("server.db*"))
    for secret in (title, agenda, "Thursday evening", str(begins), "2031-12"):
        assert secret.encode() not in raw, secret
    # ...and both terminals keep it across a restart.
    await moscow.stop()
    line.terminals.remove(moscow)
    again = await line.terminal("moscow")
    assert again.talks.book.talks[talk_id].state == schedule.CONFIRMED


async def test_an_answer_given_while_the_server_is_down_goes_when_it_is_back(
        line: LocalLine) -> None:
    await line.provision()
    washington = await line.terminal("washington")
    moscow = await line.terminal("moscow")
    asked = await washington.talks.request("moscow", title="t", at="2031-12-09 15:00 UTC",
                                           duration_s=3600)
    talk_id = asked["talk_id"]
    await wait_until(lambda: state_at(moscow, talk_id) == schedule.PROPOSED, 10, "request")
    await line.stop_server()
    await wait_until(lambda: not moscow.link.connected.is_set(), 10, "the link down")
    answered = await moscow.talks.act("accept", talk_id)  # kept, not lost, not refused
    assert answered["state"] == schedule.CONFIRMED
    assert moscow.store.queued_sealed()
    await line.start(port=line.port)
    await wait_until(lambda: state_at(washington, talk_id) == schedule.CONFIRMED, 30,
                     "the accept, once the server is back")
    await wait_until(lambda: not moscow.store.queued_sealed(), 10, "the outbox empty")
    assert washington.talks.book.talks[talk_id] == moscow.talks.book.talks[talk_id]
