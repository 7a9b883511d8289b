"""Calls changing hands between workers, in one event loop against the Realtime emulator:
one bridge hands a call over mid-utterance, another resumes it from the saved state, and
the caller's echo is bit-exact across the two. Also: frames of a finished call, and
callers that vanish without a $disconnect."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from emulators.realtime import RealtimeEmulator, expected_replies
from tests.test_local_stack import silence, tone
from tests.test_worker_bridge import (
    RecordingConnections,
    envelope,
    make_bridge,
    speak,
    until,
    with_emulator,
)
from wire import client as proto
from wire.audio import ms_to_bytes
from wire.handover import CallHandover
from wire.queue import EnvelopeKind
from worker.session_rows import SessionRow


class MemoryRows:
    """Stands in for SessionRows: the session table's rows, in memory."""

    def __init__(self, live: set[str]) -> None:
        self.live = set(live)
        self.saved: dict[str, CallHandover] = {}
        self.cleared: list[str] = []

    async def load(self, connection_id: str) -> SessionRow | None:
        if connection_id not in self.live:
            return None
        # Through the wire format, as DynamoDB would store it.
        handover = self.saved.get(connection_id)
        if handover is not None:
            handover = CallHandover.from_attributes(handover.to_attributes())
        return SessionRow(connection_id, handover)

    async def save_handover(self, connection_id: str, handover: CallHandover) -> bool:
        if connection_id not in self.live:
            return False
        self.saved[connection_id] = handover
        return True

    async def clear_handover(self, connection_id: str) -> None:
        self.cleared.append(connection_id)
        self.saved.pop(connection_id, None)


class GoneConnections(RecordingConnections):
    def __init__(self, connected: bool) -> None:
        super().__init__()
        self.connected = connected
        self.checked: list[str] = []

    async def is_connected(self, connection_id: str) -> bool:
        self.checked.append(connection_id)
        return self.connected


def test_a_call_handed_over_mid_utterance_is_resumed_bit_exact() -> None:
    with_emulator(_handed_over_mid_utterance)


async def _handed_over_mid_utterance(emulator: RealtimeEmulator) -> None:
    first_turn = silence(200) + tone(600, 440) + silence(900)
    second_turn_start = tone(300, 520)  # the handover falls inside this utterance
    second_turn_rest = tone(400, 520) + silence(900)
    rows = MemoryRows({"conn-1"})
    old_posts, new_posts = RecordingConnections(), RecordingConnections()
    old = make_bridge(emulator, old_posts)
    old.rows = rows  # type: ignore[assignment]
    old.handle(envelope(EnvelopeKind.OPEN))
    seq = await speak(old, first_turn)
    await until(lambda: "audio_done" in old_posts.types("conn-1"))
    seq = await speak(old, second_turn_start, first_seq=seq)
    await asyncio.sleep(0.2)  # the model has the start of the utterance
    await until(lambda: old.calls["conn-1"].at_turn_boundary)

    states = old.hand_over_slot(0)
    assert [cid for cid, _ in states] == ["conn-1"]
    assert await rows.save_handover("conn-1", states[0][1])
    await old.wait_closed()
    assert "session_ended" not in old_posts.types("conn-1")  # the caller was not told
    assert old_posts.disconnected == []

    new = make_bridge(emulator, new_posts)
    new.rows = rows  # type: ignore[assignment]
    await speak(new, second_turn_rest, first_seq=seq)
    await until(lambda: "audio_done" in new_posts.types("conn-1"))
    assert new.resumed == 1 and rows.cleared == ["conn-1"]
    heard = old_posts.audio("conn-1") + new_posts.audio("conn-1")
    expected = b"".join(expected_replies(first_turn + second_turn_start + second_turn_rest))
    assert heard == expected
    errors = [e for e in new_posts.posts["conn-1"] if e["type"] == "error"]
    assert errors == []  # no audio_gap: the sequence went on where it stopped
    await new.shutdown()


def test_frames_of_a_finished_call_open_nothing() -> None:
    async def body(emulator: RealtimeEmulator) -> None:
        posts = RecordingConnections()
        bridge = make_bridge(emulator, posts)
        bridge.rows = MemoryRows(set())  # type: ignore[assignment]  # no row: the call is over
        await speak(bridge, tone(300, 400))
        await asyncio.sleep(0.2)
        assert bridge.calls == {} and posts.posts == {}
        assert emulator.sessions == []

    with_emulator(body)


def test_a_caller_gone_without_a_disconnect_is_ended_and_a_quiet_one_kept() -> None:
    async def body(emulator: RealtimeEmulator) -> None:
        for connected in (False, True):
            posts = GoneConnections(connected)
            bridge = make_bridge(emulator, posts)
            bridge.handle(envelope(EnvelopeKind.OPEN))
            await until(lambda b=bridge: b.calls and b.calls["conn-1"].core.ready)
            assert await bridge.end_silent_calls(silent_for_s=60) == 0  # not silent long
            ended = await bridge.end_silent_calls(silent_for_s=0)
            assert posts.checked == ["conn-1"]
            if connected:
                assert ended == 0 and "conn-1" in bridge.calls
                await bridge.shutdown()
            else:
                assert ended == 1 and bridge.calls == {}
                await bridge.wait_closed()
                assert "session_ended" not in posts.types("conn-1")  # nobody to tell

    with_emulator(body)


def test_envelopes_of_a_handed_over_call_are_declined_until_the_slot_moves() -> None:
    async def body(emulator: RealtimeEmulator) -> None:
        bridge = make_bridge(emulator, RecordingConnections())
        bridge.rows = MemoryRows({"conn-1"})  # type: ignore[assignment]
        assert bridge.handle(envelope(EnvelopeKind.OPEN), 3) is True
        bridge.hand_over(bridge.calls["conn-1"])
        assert bridge.handle(envelope(EnvelopeKind.FRAME, "{}", 1), 3) is False
        bridge.handed_over_slot(3)  # the slot is another worker's; it may come back
        assert bridge.handle(envelope(EnvelopeKind.FRAME, "{}", 2), 3) is True
        await bridge.settle()
        await bridge.shutdown()

    with_emulator(body)


def test_a_call_taken_over_without_saved_state_skips_the_outages_audio() -> None:
    """The worker holding the call died: frames from the outage are skipped (and reported),
    the first fresh frame and all after it reach the new model session."""

    async def body(emulator: RealtimeEmulator) -> None:
        posts = RecordingConnections()
        bridge = make_bridge(emulator, posts)
        bridge.rows = MemoryRows({"conn-1"})  # type: ignore[assignment]  # no handover state
        outage = silence(1000)
        now_ms = int(time.time() * 1000)
        for n, offset in enumerate(range(0, len(outage), ms_to_bytes(100))):
            stale = envelope(
                EnvelopeKind.FRAME, proto.audio_action(outage[offset : offset + 4800], seq=n), n
            )
            bridge.handle(dataclasses.replace(stale, received_at_ms=now_ms - 20_000))
        turn = silence(100) + tone(500, 440) + silence(700)
        await speak(bridge, turn, first_seq=10)
        await until(lambda: "audio_done" in posts.types("conn-1"))
        call = bridge.calls["conn-1"]
        assert call.stale_frames == 10 and not call.catching_up
        assert posts.audio("conn-1") == b"".join(expected_replies(turn))
        gaps = [e for e in posts.posts["conn-1"] if e["type"] == "error"]
        assert [e["code"] for e in gaps] == ["audio_gap"]
        await bridge.shutdown()

    with_emulator(body)
