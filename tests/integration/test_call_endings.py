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


async def test_a_call_whose_media_stops_ends_and_the_line_is_free_again(
        line: LocalLine) -> None:
    await line.provision()
    quick = RobotOptions(silence_timeout_s=2)
    washington = await line.terminal("washington", robot=quick)
    moscow = await line.terminal("moscow", auto_answer=True, robot=quick)
    mine, theirs = await active_call(washington, moscow)
    # Washington's media stops coming, without a word (its camera and microphone gone, its
    # uplink dead): the connection stays up, nothing is signalled.
    for sender in washington.sessions[mine.call_id].pc.getSenders():
        sender.replaceTrack(None)
    await wait_until(lambda: moscow.book.info(theirs.call_id).state is CallState.ENDED, 15,
                     "moscow's call ended for want of media")
    ended = moscow.book.info(theirs.call_id)
    assert ended.end_reason is EndReason.FAILED, ended
    assert ended.alarm and "no media from the peer for 2 s" in ended.alarm, ended
    assert moscow.book.live() == []
