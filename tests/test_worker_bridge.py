"""The worker's bridge against the Realtime emulator, in one event loop: real model
sockets, envelopes fed as the queue consumer would, ``@connections`` posts captured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter

from emulators.realtime import TEXT_REPLY_PCM, Pacing, RealtimeEmulator, expected_replies
from tests.test_local_stack import silence, tone
from wire import client as proto
from wire import realtime as rt
from wire.audio import ms_to_bytes
from wire.queue import EnvelopeKind, QueueEnvelope
from worker.bridge import Bridge
from worker.core import BridgeSettings
from worker.settings import WorkerSettings

CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)


class RecordingConnections:
    """Stands in for ConnectionsApi: keeps what each caller was sent."""

    def __init__(self) -> None:
        self.posts: dict[str, list[dict]] = {}
        self.disconnected: list[str] = []

    async def post(self, connection_id: str, data: bytes) -> bool:
        self.posts.setdefault(connection_id, []).append(orjson.loads(data))
        return True

    async def disconnect(self, connection_id: str) -> None:
        self.disconnected.append(connection_id)

    def audio(self, connection_id: str) -> bytes:
        return b"".join(
            proto.decode_audio(e) for e in self.posts.get(connection_id, []) if e["type"] == "audio"
        )

    def types(self, connection_id: str) -> list[str]:
        return [e["type"] for e in self.posts.get(connection_id, [])]


def envelope(kind: EnvelopeKind, body: str = "{}", n: int = 0) -> QueueEnvelope:
    return QueueEnvelope(kind, "conn-1", f"req-{kind.value}-{n}", int(time.time() * 1000), body)


def with_emulator(
    body: Callable[[RealtimeEmulator], Awaitable[None]], **emulator_options: Any
) -> None:
    """Run ``body`` in a fresh event loop with a Realtime emulator serving."""

    async def main() -> None:
        emulator = RealtimeEmulator(pacing=Pacing(speed=8.0), **emulator_options)
        await emulator.start()
        try:
            await asyncio.wait_for(body(emulator), timeout=60)
        finally:
            await emulator.stop()

    asyncio.run(main())


def make_bridge(
    emulator: RealtimeEmulator,
    connections: RecordingConnections,
    bridge_settings: BridgeSettings | None = None,
) -> Bridge:
    settings = WorkerSettings(
        sessions_table="t",
        audio_queue_url="q",
        connections_endpoint_url="http://unused",
        realtime_base_url=emulator.url,
        openai_api_key="sk-test",
        session=rt.SessionConfig(),
        bridge=bridge_settings or BridgeSettings(),
        model_reconnect_backoff_s=(0.05, 0.05, 0.05),
    )
    return Bridge(settings, connections)  # type: ignore[arg-type]


async def speak(bridge: Bridge, pcm: bytes, first_seq: int = 0) -> int:
    frame = ms_to_bytes(100)
    seq = first_seq
    for offset in range(0, len(pcm), frame):
        body = proto.audio_action(pcm[offset : offset + frame], seq=seq)
        bridge.handle(envelope(EnvelopeKind.FRAME, body, seq))
        seq += 1
        await asyncio.sleep(0.005)
    return seq


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


def test_a_call_through_the_bridge_is_echoed_bit_exact() -> None:
    with_emulator(_a_call_through_the_bridge_is_echoed_bit_exact)


async def _a_call_through_the_bridge_is_echoed_bit_exact(emulator: RealtimeEmulator) -> None:
    connections = RecordingConnections()
    bridge = make_bridge(emulator, connections)
    bridge.handle(envelope(EnvelopeKind.OPEN))
    await until(lambda: "ready" in connections.types("conn-1"))
    turn = silence(100) + tone(600, 440) + silence(700)
    await speak(bridge, turn)
    await until(lambda: "audio_done" in connections.types("conn-1"))
    assert connections.audio("conn-1") == b"".join(expected_replies(turn))
    (session,) = emulator.sessions
    assert session.beta_header is None  # GA: no OpenAI-Beta header
    assert session.header("authorization") == "Bearer sk-test"
    for event in session.client_events:  # everything the worker sent is a valid GA event
        CLIENT_EVENT.validate_python(event)
    bridge.handle(envelope(EnvelopeKind.CLOSE))
    await until(lambda: session.closed)
    assert bridge.calls == {}


def test_a_dropped_model_socket_is_replaced_and_the_conversation_restored() -> None:
    with_emulator(_a_dropped_model_socket_is_replaced_and_the_conversation_restored)


async def _a_dropped_model_socket_is_replaced_and_the_conversation_restored(
    emulator: RealtimeEmulator,
) -> None:
    connections = RecordingConnections()
    bridge = make_bridge(emulator, connections)
    bridge.handle(envelope(EnvelopeKind.OPEN))
    await until(lambda: "ready" in connections.types("conn-1"))
    first = silence(100) + tone(1500, 330) + silence(700)
    seq = await speak(bridge, first)
    # The user's turn is transcribed before the reply starts: it is history by now.
    await until(lambda: "audio" in connections.types("conn-1"))
    assert "transcript" in connections.types("conn-1")
    dropped_at = time.monotonic()
    await emulator.drop(0, after_audio_deltas=1)  # mid-response
    await emulator.wait_for_sessions(2)
    recovered_in = time.monotonic() - dropped_at
    # The reply cut short is asked for again: the new session answers the user's turn,
    # which it knows as text (the emulator answers text with its tone).
    await until(lambda: connections.types("conn-1").count("audio_done") == 1)
    assert connections.audio("conn-1").endswith(TEXT_REPLY_PCM)
    second = silence(100) + tone(500, 550) + silence(700)
    before = len(connections.audio("conn-1"))
    await speak(bridge, second, first_seq=seq)
    await until(lambda: connections.types("conn-1").count("audio_done") == 2)
    assert connections.audio("conn-1")[before:] == b"".join(expected_replies(second))
    replacement = emulator.sessions[1]
    kinds = [e["type"] for e in replacement.client_events if isinstance(e, dict)]
    assert kinds[0] == "session.update"
    restored = [
        e["item"]["role"]
        for e in replacement.client_events
        if isinstance(e, dict) and e["type"] == "conversation.item.create"
    ]
    assert restored and restored[0] == "user"  # the user's first turn, as text
    assert "session_ended" not in connections.types("conn-1")
    assert recovered_in < 2.0
    bridge.handle(envelope(EnvelopeKind.CLOSE))


def test_an_unreachable_model_ends_the_call_with_a_reason() -> None:
    with_emulator(_an_unreachable_model_ends_the_call_with_a_reason)


async def _an_unreachable_model_ends_the_call_with_a_reason(emulator: RealtimeEmulator) -> None:
    emulator.refuse_connections = True
    connections = RecordingConnections()
    bridge = make_bridge(emulator, connections)
    bridge.handle(envelope(EnvelopeKind.OPEN))
    await until(lambda: "session_ended" in connections.types("conn-1"))
    events = connections.posts["conn-1"]
    assert events[-2]["code"] == "model_unavailable"
    assert events[-1] == {"type": "session_ended", "reason": "model_unavailable"}
    await until(lambda: connections.disconnected == ["conn-1"])
    assert bridge.calls == {}


def test_a_drop_in_the_middle_of_an_utterance_loses_none_of_it() -> None:
    with_emulator(_a_drop_in_the_middle_of_an_utterance_loses_none_of_it)


async def _a_drop_in_the_middle_of_an_utterance_loses_none_of_it(
    emulator: RealtimeEmulator,
) -> None:
    connections = RecordingConnections()
    bridge = make_bridge(emulator, connections)
    bridge.handle(envelope(EnvelopeKind.OPEN))
    await until(lambda: "ready" in connections.types("conn-1"))
    turn = silence(100) + tone(1500, 440) + silence(700)
    middle = ms_to_bytes(900)
    seq = await speak(bridge, turn[:middle])
    await until(lambda: "speech_started" in connections.types("conn-1"))
    await emulator.drop(0)  # the model hears the start of the utterance, then is gone
    await emulator.wait_for_sessions(2)
    await speak(bridge, turn[middle:], first_seq=seq)
    await until(lambda: "audio_done" in connections.types("conn-1"))
    # The new session was given the utterance's start again: the echo is whole.
    assert connections.audio("conn-1") == b"".join(expected_replies(turn))
    assert bridge.calls["conn-1"].link.reconnects == 1
    assert "error" not in connections.types("conn-1")
    bridge.handle(envelope(EnvelopeKind.CLOSE))


def test_an_old_model_session_is_replaced_between_turns_without_losing_a_turn() -> None:
    # The emulator ends a session at 3 s as OpenAI does at 60 minutes; the bridge replaces
    # its sessions after 1.5 s, at a turn boundary.
    with_emulator(_an_old_model_session_is_replaced_between_turns, max_session_seconds=3.0)


async def _an_old_model_session_is_replaced_between_turns(emulator: RealtimeEmulator) -> None:
    connections = RecordingConnections()
    settings = BridgeSettings(model_session_max_ms=1_500, model_session_hard_max_ms=2_800)
    bridge = make_bridge(emulator, connections, settings)
    bridge.handle(envelope(EnvelopeKind.OPEN))
    await until(lambda: "ready" in connections.types("conn-1"))
    link = bridge.calls["conn-1"].link
    seq = 0
    started = time.monotonic()
    turns = 0
    while time.monotonic() - started < 2.2 or link.replacements == 0:
        turn = silence(100) + tone(300, 330 + 40 * turns) + silence(700)
        before = len(connections.audio("conn-1"))
        seq = await speak(bridge, turn, first_seq=seq)
        turns += 1
        await until(lambda n=turns: connections.types("conn-1").count("audio_done") == n)
        assert connections.audio("conn-1")[before:] == b"".join(expected_replies(turn))
        await asyncio.sleep(0.25)
    assert turns >= 3 and link.replacements >= 1 and link.reconnects == 0
    assert len(emulator.sessions) == link.replacements + 1
    for session in emulator.sessions:
        assert not session.expired  # replaced before the server's limit
        # At a boundary: no reply of a replaced session was cut short.
        assert all(r.status == "completed" for r in session.responses)
    for session in emulator.sessions[1:]:
        kinds = [e["type"] for e in session.client_events if isinstance(e, dict)]
        assert kinds[0] == "session.update" and "response.create" not in kinds
        for event in session.client_events:
            CLIENT_EVENT.validate_python(event)
    types = connections.types("conn-1")
    assert "error" not in types and "session_ended" not in types
    assert types.count("ready") == 1
    bridge.handle(envelope(EnvelopeKind.CLOSE))
