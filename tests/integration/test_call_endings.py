"""A call always ends at both sides: a hang-up the server could not carry goes once it is
back, and a call whose media stopped coming ends instead of holding the line busy.

Real server, real terminals, real aiortc media over loopback.
"""

from __future__ import annotations

from parley.core.call import CallState, EndReason
from parley.media.robot import RobotOptions
from tests.harness import LocalLine, active_call, wait_until


async def test_a_hang_up_while_the_server_is_down_arrives_once_it_is_back(
        line: LocalLine) -> None:
    await line.provision()
    patient = RobotOptions(silence_timeout_s=120)  # media stopping does not end it here
    washington = await line.terminal("washington", robot=patient)
    moscow = await line.terminal("moscow", auto_answer=True, robot=patient)
    mine, theirs = await active_call(washington, moscow)
    await line.stop_server()
    await wait_until(lambda: not washington.link.connected.is_set(), 10, "the link down")
    washington.hangup(mine.call_id)
    await wait_until(lambda: washington.book.info(mine.call_id).state is CallState.ENDED, 5,
                     "washington hung up")
    assert moscow.book.info(theirs.call_id).state is CallState.ACTIVE  # told nothing yet
    await line.start(port=line.port)
    await wait_until(lambda: moscow.book.info(theirs.call_id).state is CallState.ENDED, 30,
                     "moscow told of the hang-up")
    assert moscow.book.info(theirs.call_id).end_reason is EndReason.REMOTE_HUNG_UP
    # The line is free again at both ends: a new call is answered, not "busy".
    again, _ = await active_call(washington, moscow)
    assert again.state is CallState.ACTIVE
    assert not moscow.alarms and not washington.alarms


async def test_a_call_whose_media_stops_reconnects_with_a_new_peer_connection(
        line: LocalLine) -> None:
    await line.provision()
    quick = RobotOptions(silence_timeout_s=2)
    washington = await line.terminal("washington", robot=quick)
    moscow = await line.terminal("moscow", auto_answer=True, robot=quick)
    mine, theirs = await active_call(washington, moscow)
    states: list[str] = []
    moscow.subscribe(lambda e: states.append(e["call"]["state"]) if e["t"] == "call" else None)
    # Washington's media stops coming, without a word (its camera and microphone gone, its
    # uplink dead): the connection stays up, nothing is signalled.
    old_pc = washington.sessions[mine.call_id].pc
    for sender in old_pc.getSenders():
        sender.replaceTrack(None)
    await wait_until(lambda: "reconnecting" in states, 10, "moscow reconnecting")
    # Moscow asked; washington offered a new peer connection; both are active again, the
    # new handshake verified, and the SAS what it was (the same certificates).
    await wait_until(lambda: moscow.book.info(theirs.call_id).state is CallState.ACTIVE
                     and washington.book.info(mine.call_id).state is CallState.ACTIVE, 20,
                     "the call back")
    back = washington.book.info(mine.call_id)
    assert back.gen >= 1 and back.verified and back.sas == mine.sas and not back.sas_changed
    assert washington.sessions[mine.call_id].pc is not old_pc
    assert moscow.book.info(theirs.call_id).sas == theirs.sas


async def test_a_call_whose_peer_is_gone_ends_as_connection_lost(line: LocalLine) -> None:
    await line.provision()
    quick = RobotOptions(silence_timeout_s=2)
    washington = await line.terminal("washington", robot=quick, reconnect_give_up_s=6)
    moscow = await line.terminal("moscow", auto_answer=True, robot=quick)
    mine, _theirs = await active_call(washington, moscow)
    # Moscow's terminal dies without a word (as a process killed would): nothing of it runs
    # any more, its media and its link to the server gone.
    for task in moscow._tasks:
        task.cancel()
    await moscow.link.close()
    for session in list(moscow.sessions.values()):
        await session.close()
    await wait_until(lambda: washington.book.info(mine.call_id).state is CallState.ENDED, 20,
                     "washington gave up")
    ended = washington.book.info(mine.call_id)
    assert ended.end_reason is EndReason.CONNECTION_LOST, ended
    assert ended.alarm and "the connection was lost" in ended.alarm, ended
    assert washington.book.live() == []
    await wait_until(lambda: not washington.sessions, 5, "its media closed")
