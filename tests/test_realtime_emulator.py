"""The Realtime emulator speaks GA faithfully and echoes each user turn bit-exact.

Every server event any test here receives over a socket is validated against the
``openai`` package's ``RealtimeServerEvent`` union; every client event we send is built
with ``wire.realtime`` and validated against ``RealtimeClientEvent``.
"""

from __future__ import annotations

import asyncio
import base64
import math
import signal
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from emulators.realtime import (
    DEFAULT_THRESHOLD_RMS,
    FRAME_BYTES,
    FRAME_SAMPLES,
    TEXT_REPLY_PCM,
    Pacing,
    RealtimeEmulator,
    RealtimeServerSession,
    SessionRecord,
    SpeechEnd,
    TurnDetector,
    expected_replies,
    reply_transcript,
    speech_spans,
    text_reply_transcript,
    user_transcript,
)
from wire import realtime as rt
from wire.audio import BYTES_PER_MS, SAMPLE_RATE_HZ

SERVER_EVENT = TypeAdapter(RealtimeServerEvent)
CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)
MODEL = "gpt-realtime-mini"
FAST = Pacing(speed=math.inf)
EVENT_TIMEOUT_S = 5.0


# -- audio ------------------------------------------------------------------------------


def tone(ms: int, *, hz: int = 440, amplitude: int = 8000) -> bytes:
    samples = array(
        "h",
        (
            int(amplitude * math.sin(2 * math.pi * hz * i / SAMPLE_RATE_HZ))
            for i in range(ms * SAMPLE_RATE_HZ // 1000)
        ),
    )
    return samples.tobytes()


def hiss(ms: int, *, amplitude: int = 120, seed: int = 1) -> bytes:
    """Quiet deterministic noise, well under the VAD threshold (not digital silence)."""
    state, samples = seed, array("h")
    for _ in range(ms * SAMPLE_RATE_HZ // 1000):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        samples.append(state % (2 * amplitude + 1) - amplitude)
    return samples.tobytes()


def utterance(*parts: tuple[str, int]) -> bytes:
    """("tone", ms) and ("gap", ms) segments, each a whole number of 10 ms frames."""
    pcm = b""
    for index, (kind, ms) in enumerate(parts):
        pcm += tone(ms, hz=300 + 50 * index) if kind == "tone" else hiss(ms, seed=index + 1)
    return pcm


# Two turns: bursts 300 ms apart are one turn; 600 ms of quiet ends it.
TWO_TURNS = utterance(
    ("gap", 200),
    ("tone", 400),
    ("gap", 300),
    ("tone", 250),
    ("gap", 600),
    ("tone", 300),
    ("gap", 700),
)
TWO_TURN_SPANS = [
    (200 * BYTES_PER_MS, 1150 * BYTES_PER_MS),
    (1750 * BYTES_PER_MS, 2050 * BYTES_PER_MS),
]


# -- a small test client ----------------------------------------------------------------


class Client:
    """A socket to the emulator that validates every event both ways."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.received: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any]) -> None:
        CLIENT_EVENT.validate_python(event)
        await self.socket.send(orjson.dumps(event).decode())

    async def send_raw(self, frame: str | bytes) -> None:
        await self.socket.send(frame)

    async def append(self, pcm: bytes, chunk: int = 4800) -> None:
        for start in range(0, len(pcm), chunk):
            await self.send(rt.input_audio_append(pcm[start : start + chunk]))

    async def next(self, timeout: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
        event = orjson.loads(await asyncio.wait_for(self.socket.recv(), timeout))
        SERVER_EVENT.validate_python(event)
        self.received.append(event)
        return event

    async def until(
        self, event_type: str, timeout: float = EVENT_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Events up to and including the next one of ``event_type``."""
        events = []
        while True:
            event = await self.next(timeout)
            events.append(event)
            if event["type"] == event_type:
                return events

    async def quiet_for(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever arrives within ``seconds`` (nothing, ideally)."""
        events = []
        try:
            while True:
                events.append(await self.next(seconds))
        except TimeoutError:
            return events


def run(test: Callable[[RealtimeEmulator], Awaitable[None]], **emulator: Any) -> None:
    async def main() -> None:
        async with RealtimeEmulator(**({"pacing": FAST} | emulator)) as server:
            await test(server)

    asyncio.run(main())


DEFAULT_CONFIG = rt.SessionConfig()


def session_client(
    server: RealtimeEmulator, *, config: rt.SessionConfig | None = DEFAULT_CONFIG
) -> _ClientContext:
    return _ClientContext(server, config)


class _ClientContext:
    def __init__(self, server: RealtimeEmulator, config: rt.SessionConfig | None) -> None:
        self._server = server
        self._config = config
        self._socket: Any = None

    async def __aenter__(self) -> Client:
        self._socket = connect(
            rt.connect_url(self._server.url, MODEL),
            additional_headers=rt.auth_headers("sk-test"),
            compression=None,
        )
        client = Client(await self._socket.__aenter__())
        created = await client.next()
        assert created["type"] == rt.SESSION_CREATED
        if self._config is not None:
            await client.send(rt.session_update(self._config))
            assert (await client.next())["type"] == rt.SESSION_UPDATED
        return client

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._socket.__aexit__(*exc_info)


def audio_of(events: list[dict[str, Any]], response_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(e["delta"])
        for e in events
        if e["type"] == rt.OUTPUT_AUDIO_DELTA and response_id in (None, e["response_id"])
    )


def types_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def without_repeats(types: list[str]) -> list[str]:
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


# -- the VAD, pure ----------------------------------------------------------------------


def reference_spans(pcm: bytes, silence_ms: int = 500) -> list[tuple[int, int]]:
    """An independent, slow statement of the rule: frames at absolute 10 ms positions."""
    frames = len(pcm) // FRAME_BYTES
    loud = [
        sum(
            s * s
            for s in struct.unpack(
                f"<{FRAME_SAMPLES}h", pcm[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
            )
        )
        > DEFAULT_THRESHOLD_RMS**2 * FRAME_SAMPLES
        for i in range(frames)
    ]
    spans, onset, last = [], None, 0
    for index, is_loud in enumerate(loud):
        if is_loud:
            onset = index if onset is None else onset
            last = index
        elif onset is not None and index - last >= silence_ms // 10:
            spans.append((onset * FRAME_BYTES, (last + 1) * FRAME_BYTES))
            onset = None
    return spans


def test_bursts_less_than_500ms_apart_are_one_turn_and_500ms_of_quiet_ends_it() -> None:
    assert speech_spans(TWO_TURNS) == TWO_TURN_SPANS
    one = utterance(("tone", 200), ("gap", 490), ("tone", 200), ("gap", 500))
    assert speech_spans(one) == [(0, 890 * BYTES_PER_MS)]
    two = utterance(("tone", 200), ("gap", 500), ("tone", 200), ("gap", 500))
    assert speech_spans(two) == [(0, 200 * BYTES_PER_MS), (700 * BYTES_PER_MS, 900 * BYTES_PER_MS)]


def test_a_turn_needs_its_full_silence_unless_flushed() -> None:
    open_turn = utterance(("gap", 100), ("tone", 300), ("gap", 490))
    assert speech_spans(open_turn) == []
    assert speech_spans(open_turn, flush=True) == [(100 * BYTES_PER_MS, 400 * BYTES_PER_MS)]
    assert speech_spans(utterance(("tone", 300), ("gap", 300)), silence_ms=300) == [
        (0, 300 * BYTES_PER_MS)
    ]


def test_expected_replies_are_the_spans_of_the_input() -> None:
    replies = expected_replies(TWO_TURNS)
    assert replies == [TWO_TURNS[s:e] for s, e in TWO_TURN_SPANS]


segments = st.lists(
    st.tuples(st.booleans(), st.integers(min_value=1, max_value=9000)), min_size=1, max_size=12
)
chunkings = st.lists(st.integers(min_value=1, max_value=12_000), min_size=1, max_size=20)


def random_audio(parts: list[tuple[bool, int]]) -> bytes:
    """Loud and quiet runs of arbitrary sample counts (so edges fall anywhere in a frame)."""
    pcm = b""
    for index, (is_loud, samples) in enumerate(parts):
        ms_ceiling = -(-samples // 24)
        run = tone(ms_ceiling, hz=200 + 37 * index) if is_loud else hiss(ms_ceiling, seed=index)
        pcm += run[: samples * 2]
    return pcm


def chunked(pcm: bytes, sizes: list[int]) -> list[bytes]:
    chunks, start, index = [], 0, 0
    while start < len(pcm):
        size = sizes[index % len(sizes)]
        chunks.append(pcm[start : start + size])
        start, index = start + size, index + 1
    return chunks


@settings(max_examples=150, deadline=None)
@given(parts=segments, sizes=chunkings)
def test_turns_do_not_depend_on_chunking_and_match_the_reference(
    parts: list[tuple[bool, int]], sizes: list[int]
) -> None:
    pcm = random_audio(parts)
    detector = TurnDetector()
    boundaries = [b for chunk in chunked(pcm, sizes) for b in detector.feed(chunk)]
    spans = [(b.start_byte, b.end_byte) for b in boundaries if isinstance(b, SpeechEnd)]
    assert spans == speech_spans(pcm) == reference_spans(pcm)


# -- the session core, pure -------------------------------------------------------------


def core_session(**kwargs: Any) -> RealtimeServerSession:
    record = SessionRecord(index=0, model=MODEL, path="/v1/realtime", headers=[])
    core = RealtimeServerSession(record, **kwargs)
    core.open()
    core.receive_text(orjson.dumps(rt.session_update(rt.SessionConfig())).decode())
    core.events_to_send()
    return core


def core_append(core: RealtimeServerSession, pcm: bytes) -> list[dict[str, Any]]:
    core.receive_text(orjson.dumps(rt.input_audio_append(pcm)).decode())
    return core.events_to_send()


def drain_response(core: RealtimeServerSession, response_id: str) -> list[dict[str, Any]]:
    events = []
    while core.response_step(response_id) is not None:
        events += core.events_to_send()
    return events + core.events_to_send()


def test_core_streams_a_reply_step_by_step_and_a_barge_in_ends_it() -> None:
    core = core_session()
    turn = utterance(("tone", 800), ("gap", 500))
    events = core_append(core, turn)
    assert types_of(events) == [
        rt.SPEECH_STARTED,
        rt.SPEECH_STOPPED,
        rt.COMMITTED,
        rt.ITEM_ADDED,
        rt.ITEM_DONE,
        rt.RESPONSE_CREATED,
    ]
    response_id = core.streaming_response_id
    assert response_id is not None
    assert core.response_step(response_id) == 0  # output item and content part
    carried = core.response_step(response_id)
    assert carried is not None and 50 * BYTES_PER_MS <= carried <= 100 * BYTES_PER_MS
    core.events_to_send()
    barge_in = core_append(core, tone(30))
    assert types_of(barge_in) == [
        rt.SPEECH_STARTED,
        rt.OUTPUT_AUDIO_DONE,
        rt.OUTPUT_TRANSCRIPT_DONE,
        rt.CONTENT_PART_DONE,
        rt.ITEM_DONE,
        rt.OUTPUT_ITEM_DONE,
        rt.RESPONSE_DONE,
        rt.RATE_LIMITS_UPDATED,
    ]
    done = barge_in[-2]["response"]
    assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "turn_detected")
    assert core.response_step(response_id) is None
    assert core.record.responses[0].sent_bytes == carried


def test_core_keeps_no_audio_between_turns() -> None:
    core = core_session()
    for _ in range(50):  # 10 s of near silence
        core_append(core, hiss(200))
    assert len(core._kept) < FRAME_BYTES  # only a partial frame waits


def core_send(core: RealtimeServerSession, event: dict[str, Any]) -> list[dict[str, Any]]:
    core.receive_text(orjson.dumps(event).decode())
    return core.events_to_send()


def manual_turns() -> dict[str, Any]:
    update = rt.session_update(rt.SessionConfig())
    update["session"]["audio"]["input"]["turn_detection"] = None
    return update


def test_core_frames_stay_absolute_when_vad_is_switched_off_and_on() -> None:
    core = core_session()
    core_send(core, manual_turns())
    odd_start = hiss(333)  # not a whole number of frames
    core_append(core, odd_start)
    core_send(core, {"type": rt.INPUT_AUDIO_CLEAR})
    core_send(core, rt.session_update(rt.SessionConfig()))
    spoken = utterance(("tone", 400), ("gap", 600))
    core_append(core, spoken)
    response_id = core.streaming_response_id
    assert response_id is not None
    reply = audio_of(drain_response(core, response_id))
    assert reply == expected_replies(odd_start + spoken)[0]
    assert (core.record.turns[0].start_byte, core.record.turns[0].end_byte) == speech_spans(
        odd_start + spoken
    )[0]


def test_core_manual_commit_echoes_the_committed_buffer() -> None:
    core = core_session()
    core_send(core, manual_turns())
    spoken = tone(250)
    core_append(core, spoken)
    committed = core_send(core, {"type": rt.INPUT_AUDIO_COMMIT})
    assert types_of(committed)[:3] == [rt.COMMITTED, rt.ITEM_ADDED, rt.ITEM_DONE]
    assert committed[-1]["transcript"] == user_transcript(len(spoken))  # transcription is on
    assert core.streaming_response_id is None  # no turn detection: the client asks
    core_send(core, rt.response_create())
    response_id = core.streaming_response_id
    assert response_id is not None
    assert audio_of(drain_response(core, response_id)) == spoken


# -- a whole turn over the socket -------------------------------------------------------


def test_a_spoken_turn_gets_every_ga_event_and_a_bit_exact_echo() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.append(TWO_TURNS[: TWO_TURN_SPANS[0][1] + 600 * BYTES_PER_MS])
            events = await client.until(rt.RATE_LIMITS_UPDATED)
        start, end = TWO_TURN_SPANS[0]
        assert audio_of(events) == TWO_TURNS[start:end]
        assert without_repeats(types_of(events)) == [
            rt.SPEECH_STARTED,
            rt.SPEECH_STOPPED,
            rt.COMMITTED,
            rt.ITEM_ADDED,
            rt.ITEM_DONE,
            rt.RESPONSE_CREATED,
            rt.OUTPUT_ITEM_ADDED,
            rt.ITEM_ADDED,
            rt.CONTENT_PART_ADDED,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.INPUT_TRANSCRIPT_DELTA,
            rt.INPUT_TRANSCRIPT_COMPLETED,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.OUTPUT_TRANSCRIPT_DELTA,
            rt.OUTPUT_AUDIO_DELTA,
            rt.OUTPUT_AUDIO_DONE,
            rt.OUTPUT_TRANSCRIPT_DONE,
            rt.CONTENT_PART_DONE,
            rt.ITEM_DONE,
            rt.OUTPUT_ITEM_DONE,
            rt.RESPONSE_DONE,
            rt.RATE_LIMITS_UPDATED,
        ]
        by_type = {e["type"]: e for e in events}
        user_item = by_type[rt.SPEECH_STARTED]["item_id"]
        # Onset at 200 ms less 300 ms of prefix padding; the end includes the 500 ms of quiet.
        assert by_type[rt.SPEECH_STARTED]["audio_start_ms"] == 0
        assert by_type[rt.SPEECH_STOPPED]["audio_end_ms"] == 1150 + 500
        assert by_type[rt.COMMITTED]["item_id"] == user_item
        assert by_type[rt.INPUT_TRANSCRIPT_COMPLETED]["transcript"] == user_transcript(end - start)
        assert by_type[rt.OUTPUT_TRANSCRIPT_DONE]["transcript"] == reply_transcript(end - start)
        done = by_type[rt.RESPONSE_DONE]["response"]
        assert done["status"] == "completed" and done["usage"]["output_tokens"] > 0
        assert done["output"][0]["content"][0]["transcript"] == "echo of 950 ms of audio"
        session = server.sessions[0]
        assert session.beta_header is None
        assert session.header("authorization") == "Bearer sk-test"
        assert session.model == MODEL
        assert [(t.start_byte, t.end_byte) for t in session.turns] == [TWO_TURN_SPANS[0]]
        for client_event in session.client_events:
            CLIENT_EVENT.validate_python(client_event)

    run(test)


def test_delta_sizes_and_pacing_are_realistic() -> None:
    async def test(server: RealtimeEmulator) -> None:
        loop = asyncio.get_running_loop()
        async with session_client(server) as client:
            await client.append(utterance(("tone", 1000), ("gap", 500)))
            await client.until(rt.RESPONSE_CREATED)
            started = loop.time()
            events = await client.until(rt.RESPONSE_DONE)
            elapsed = loop.time() - started
        sizes = [
            len(base64.b64decode(e["delta"])) for e in events if e["type"] == rt.OUTPUT_AUDIO_DELTA
        ]
        assert sum(sizes) == 1000 * BYTES_PER_MS
        assert all(50 * BYTES_PER_MS <= size <= 100 * BYTES_PER_MS for size in sizes[:-1])
        # 1 s of audio at 10x after a 100 ms think: paced, yet faster than real time.
        assert 0.1 + 0.9 / 10 <= elapsed < 1.0

    run(test, pacing=Pacing(speed=10, think_delay_s=0.1))


# Between turn 1's end (1650 ms) and turn 2's onset (1750 ms), mid-sample: the socket test
# waits there for reply 1, so turn 2 cannot barge in on it however fast the input flows.
BETWEEN_TURNS = 1700 * BYTES_PER_MS + 1


@settings(max_examples=12, deadline=None)
@given(sizes=st.lists(st.integers(min_value=97, max_value=12_000), min_size=1, max_size=20))
def test_the_echo_is_bit_exact_however_the_input_is_chunked(sizes: list[int]) -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            for chunk in chunked(TWO_TURNS[:BETWEEN_TURNS], sizes):
                await client.send(rt.input_audio_append(chunk))
            first = await client.until(rt.RESPONSE_DONE)
            for chunk in chunked(TWO_TURNS[BETWEEN_TURNS:], sizes):
                await client.send(rt.input_audio_append(chunk))
            second = await client.until(rt.RESPONSE_DONE)
        assert [audio_of(first), audio_of(second)] == expected_replies(TWO_TURNS)
        assert [r.status for r in server.sessions[0].responses] == ["completed", "completed"]

    run(test)


def test_session_update_sets_the_silence_that_ends_a_turn() -> None:
    async def test(server: RealtimeEmulator) -> None:
        config = rt.SessionConfig(vad_silence_ms=300)
        async with session_client(server, config=config) as client:
            pcm = utterance(("tone", 200), ("gap", 400), ("tone", 200), ("gap", 400))
            await client.append(pcm[: 550 * BYTES_PER_MS])
            first = await client.until(rt.RESPONSE_DONE)
            await client.append(pcm[550 * BYTES_PER_MS :])
            second = await client.until(rt.RESPONSE_DONE)
        assert [audio_of(first), audio_of(second)] == expected_replies(pcm, silence_ms=300)
        assert len(expected_replies(pcm, silence_ms=300)) == 2
        session = server.sessions[0].session
        assert session["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300

    run(test)


# -- text turns -------------------------------------------------------------------------


def test_a_text_turn_gets_a_short_tone_and_a_transcript_echoing_the_text() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.send(rt.user_text_item("hello there"))
            await client.send(rt.response_create())
            events = await client.until(rt.RATE_LIMITS_UPDATED)
        assert audio_of(events) == TEXT_REPLY_PCM
        assert len(TEXT_REPLY_PCM) == 300 * BYTES_PER_MS
        transcript = next(e for e in events if e["type"] == rt.OUTPUT_TRANSCRIPT_DONE)
        assert transcript["transcript"] == text_reply_transcript("hello there")
        added = next(e for e in events if e["type"] == rt.ITEM_ADDED)
        assert added["item"]["content"] == [{"type": "input_text", "text": "hello there"}]
        assert rt.INPUT_TRANSCRIPT_COMPLETED not in types_of(events)

    run(test)


def test_a_user_audio_item_created_by_the_client_is_echoed() -> None:
    async def test(server: RealtimeEmulator) -> None:
        spoken = tone(170)
        item = {
            "type": rt.ITEM_CREATE,
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio", "audio": base64.b64encode(spoken).decode()}],
            },
        }
        async with session_client(server) as client:
            await client.send(item)
            added = await client.next()
            await client.send(rt.response_create())
            events = await client.until(rt.RESPONSE_DONE)
        assert added["item"]["content"] == [{"type": "input_audio"}]  # no audio echoed back
        assert audio_of(events) == spoken

    run(test)


def test_a_second_response_create_while_one_is_active_is_refused() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.send(rt.user_text_item("one"))
            await client.send(rt.response_create())
            await client.send({**rt.response_create(), "event_id": "evt_again"})
            events = await client.until(rt.ERROR)
        error = events[-1]["error"]
        assert error["code"] == "conversation_already_has_active_response"
        assert error["event_id"] == "evt_again"

    run(test, pacing=Pacing(speed=1))


# -- cancellation and barge-in ----------------------------------------------------------


def test_response_cancel_mid_response_cancels_it_and_no_more_deltas_follow() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.append(utterance(("tone", 2000), ("gap", 500)))
            first_delta = await client.until(rt.OUTPUT_AUDIO_DELTA)
            response_id = first_delta[-1]["response_id"]
            await client.send(rt.response_cancel())
            events = await client.until(rt.RESPONSE_DONE)
            later = await client.quiet_for(0.3)
        done = events[-1]["response"]
        assert done["id"] == response_id
        assert (done["status"], done["status_details"]["reason"]) == (
            "cancelled",
            "client_cancelled",
        )
        assert done["output"][0]["status"] == "incomplete"
        assert rt.OUTPUT_AUDIO_DELTA not in types_of(later)
        assert types_of(later) == [rt.RATE_LIMITS_UPDATED]
        record = server.sessions[0].responses[0]
        assert (record.status, record.reason) == ("cancelled", "client_cancelled")
        assert 0 < record.sent_bytes < record.reply_bytes
        assert len(audio_of(first_delta + events)) == record.sent_bytes

    run(test, pacing=Pacing(speed=1))


def test_response_cancel_with_nothing_active_is_the_ga_error() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.send({**rt.response_cancel(), "event_id": "evt_cancel"})
            error = (await client.next())["error"]
        assert error == {
            "type": "invalid_request_error",
            "code": "response_cancel_not_active",
            "message": "Cancellation failed: no active response found",
            "param": None,
            "event_id": "evt_cancel",
        }
        assert error["code"] in rt.BENIGN_ERROR_CODES

    run(test)


def test_speech_during_a_response_interrupts_it() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            first_turn = utterance(("tone", 2000), ("gap", 500))
            await client.append(first_turn)
            await client.until(rt.OUTPUT_AUDIO_DELTA)
            second_turn = utterance(("tone", 300), ("gap", 500))
            await client.append(second_turn)
            interrupted = await client.until(rt.RESPONSE_DONE)
            answered = await client.until(rt.RESPONSE_DONE)
        barge_in = types_of(interrupted).index(rt.SPEECH_STARTED)
        assert rt.OUTPUT_AUDIO_DELTA not in types_of(interrupted[barge_in:])
        assert interrupted[-1]["response"]["status_details"]["reason"] == "turn_detected"
        assert audio_of(answered) == expected_replies(first_turn + second_turn)[1]
        assert [r.status for r in server.sessions[0].responses] == ["cancelled", "completed"]

    run(test, pacing=Pacing(speed=1))


# -- truncation -------------------------------------------------------------------------


def test_truncate_within_the_generated_audio_is_applied_and_beyond_it_is_the_ga_error() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.append(utterance(("tone", 1000), ("gap", 500)))
            events = await client.until(rt.RATE_LIMITS_UPDATED)
            item_id = events[-2]["response"]["output"][0]["id"]
            await client.send(rt.item_truncate(item_id, 1000))
            truncated = await client.next()
            await client.send({**rt.item_truncate(item_id, 1001), "event_id": "evt_past"})
            refused = await client.next()
            await client.send(rt.item_truncate("item_nope", 10))
            unknown = await client.next()
            user_item = events[0]["item_id"]
            await client.send(rt.item_truncate(user_item, 10))
            not_audio = await client.next()
        assert truncated == {**truncated, "type": rt.ITEM_TRUNCATED, "item_id": item_id}
        assert (truncated["audio_end_ms"], truncated["content_index"]) == (1000, 0)
        assert refused["error"] == {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "Audio content of 1000ms is already shorter than 1001ms",
            "param": "audio_end_ms",
            "event_id": "evt_past",
        }
        assert unknown["error"]["code"] == "item_truncate_invalid_item_id"
        assert not_audio["error"]["code"] == "unsupported_content_type"
        truncations = server.sessions[0].truncations
        assert [(t.audio_end_ms, t.accepted) for t in truncations] == [
            (1000, True),
            (1001, False),
            (10, False),
            (10, False),
        ]
        assert truncations[0].available_ms == 1000

    run(test)


def test_truncate_mid_response_is_bounded_by_the_audio_sent_so_far() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.append(utterance(("tone", 3000), ("gap", 500)))
            events = await client.until(rt.OUTPUT_AUDIO_DELTA)
            item_id = events[-1]["item_id"]
            sent_ms = len(audio_of(events)) // BYTES_PER_MS
            await client.send(rt.item_truncate(item_id, 2500))
            refused = next(e for e in await client.until(rt.ERROR) if e["type"] == rt.ERROR)
        assert refused["error"]["code"] == "invalid_value"
        available = server.sessions[0].truncations[0].available_ms
        assert available is not None and sent_ms <= available < 2500

    run(test, pacing=Pacing(speed=1))


# -- malformed input --------------------------------------------------------------------


def test_malformed_events_get_an_error_and_the_session_keeps_working() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            bad_frames: list[tuple[str | bytes, str, str | None]] = [
                ("not json", "invalid_json", None),
                ("[1, 2]", "invalid_type", None),
                ('{"event_id": "evt_1"}', "missing_required_parameter", "type"),
                ('{"type": "nope", "event_id": "evt_2"}', "invalid_value", "type"),
                ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
                ('{"type": "input_audio_buffer.append", "audio": "%%%"}', "invalid_value", "audio"),
                ('{"type": "conversation.item.truncate", "item_id": 5}', "invalid_type", "item_id"),
                (
                    '{"type": "session.update", "session": {}}',
                    "missing_required_parameter",
                    "session.type",
                ),
                (
                    '{"type": "session.update", "session": {"type": "realtime", "bogus": 1}}',
                    "unknown_parameter",
                    "session.bogus",
                ),
                (b"\x00\x01binary", "invalid_event", None),
            ]
            errors = []
            for frame, _, _ in bad_frames:
                await client.send_raw(frame)
                errors.append(await client.next())
            await client.send(rt.user_text_item("still there?"))
            await client.send(rt.response_create())
            events = await client.until(rt.RESPONSE_DONE)
        assert [(e["error"]["code"], e["error"]["param"]) for e in errors] == [
            (code, param) for _, code, param in bad_frames
        ]
        assert errors[1]["error"]["event_id"] is None
        assert errors[2]["error"]["event_id"] == "evt_1"
        assert "'session.update'" in errors[3]["error"]["message"]
        assert audio_of(events) == TEXT_REPLY_PCM
        assert len(server.sessions[0].errors) == len(bad_frames)

    run(test)


def test_a_rejected_session_update_changes_nothing() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            before = server.sessions[0].session
            update = rt.session_update(rt.SessionConfig(vad_silence_ms=200, voice="cedar"))
            update["session"]["audio"]["input"]["format"]["rate"] = 16000
            # Invalid on purpose, so it goes out raw (the client types refuse it).
            await client.send_raw(orjson.dumps({**update, "event_id": "evt_16k"}).decode())
            error = (await client.next())["error"]
        assert error["code"] == "integer_below_min_value"
        assert error["param"] == "session.audio.input.format.rate"
        assert error["event_id"] == "evt_16k"
        assert server.sessions[0].session == before
        assert before["audio"]["output"]["voice"] == "marin"

    run(test)


def test_manual_commit_and_clear() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await client.append(hiss(50))
            await client.send({"type": rt.INPUT_AUDIO_COMMIT})
            too_short = await client.next()
            await client.send({"type": rt.INPUT_AUDIO_CLEAR})
            cleared = await client.next()
        assert too_short["error"]["code"] == "input_audio_buffer_commit_empty"
        assert cleared["type"] == rt.INPUT_AUDIO_CLEARED

    run(test)


# -- handshake and fault injection ------------------------------------------------------


def test_no_model_in_the_url_is_an_error_then_close_4000() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with connect(server.url, compression=None) as socket:
            client = Client(socket)
            error = await client.next()
            with pytest.raises(ConnectionClosed):
                await client.next()
        assert error["error"]["code"] == "missing_model"
        assert socket.close_code == 4000

    run(test)


def test_the_beta_header_is_recorded_and_can_be_refused_as_the_api_does() -> None:
    async def test(server: RealtimeEmulator) -> None:
        headers = {"Authorization": "Bearer x", "OpenAI-Beta": "realtime=v1"}
        async with connect(
            rt.connect_url(server.url, MODEL), additional_headers=headers, compression=None
        ) as socket:
            error = await Client(socket).next()
            with pytest.raises(ConnectionClosed):
                await socket.recv()
        assert error["error"]["code"] == "beta_api_shape_disabled"
        assert server.sessions[0].beta_header == "realtime=v1"

    run(test, reject_beta_header=True)


def test_drop_closes_the_socket_abruptly_or_with_a_code() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            assert await server.drop(0)
            with pytest.raises(ConnectionClosedError):
                await client.next()
        async with session_client(server) as client:
            assert await server.drop(server.sessions[1], close_code=1011)
            with pytest.raises(ConnectionClosedError):
                await client.next()
            assert client.socket.close_code == 1011
        await asyncio.sleep(0.05)
        assert [s.closed for s in server.sessions] == [True, True]
        assert server.sessions[0].close_code == 1006
        assert not await server.drop(0)

    run(test)


def test_drop_mid_response_after_some_audio_deltas() -> None:
    async def test(server: RealtimeEmulator) -> None:
        async with session_client(server) as client:
            await server.drop(0, after_audio_deltas=3)
            await client.append(utterance(("tone", 2000), ("gap", 500)))
            received = []
            with pytest.raises(ConnectionClosedError):
                while True:
                    received.append(await client.next())
        deltas = types_of(received).count(rt.OUTPUT_AUDIO_DELTA)
        assert 1 <= deltas <= 3
        assert rt.RESPONSE_DONE not in types_of(received)

    run(test, pacing=Pacing(speed=20))


def test_a_session_at_its_maximum_duration_gets_session_expired_then_close_1001() -> None:
    async def test(server: RealtimeEmulator) -> None:
        started = asyncio.get_running_loop().time()
        async with session_client(server) as client:
            created = client.received[0]
            assert created["session"]["expires_at"] - time.time() <= 1.5
            events = await client.until(rt.ERROR)
            with pytest.raises(ConnectionClosed):
                await client.next()
            elapsed = asyncio.get_running_loop().time() - started
            assert client.socket.close_code == 1001
            reason = client.socket.close_reason
        error = events[-1]["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "session_expired"
        assert error["message"] == "Your session hit the maximum duration of 0.5 seconds."
        assert reason == error["message"]
        assert 0.5 <= elapsed < 2.0
        await asyncio.sleep(0.05)
        (session,) = server.sessions
        assert session.expired and session.closed and session.close_code == 1001

    run(test, max_session_seconds=0.5)


def test_the_session_expired_message_names_minutes_as_the_api_does() -> None:
    record = SessionRecord(index=0, model=MODEL, path="/", headers=[])
    core = RealtimeServerSession(record, lifetime_s=3600)
    assert core.expire() == "Your session hit the maximum duration of 60 minutes."
    (error,) = core.events_to_send()
    SERVER_EVENT.validate_python(error)
    assert error["error"]["code"] == "session_expired" and record.expired


def test_refusing_connections_answers_the_handshake_with_an_http_error() -> None:
    async def test(server: RealtimeEmulator) -> None:
        server.refuse_connections = True
        with pytest.raises(InvalidStatus) as refused:
            async with connect(rt.connect_url(server.url, MODEL)):
                pass
        assert refused.value.response.status_code == 503
        server.refuse_connections = False
        async with session_client(server):
            pass
        assert len(server.sessions) == 1

    run(test)


def test_other_paths_are_not_found() -> None:
    async def test(server: RealtimeEmulator) -> None:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url.replace("/v1/realtime", "/v1/nope")):
                pass
        assert refused.value.response.status_code == 404

    run(test)


def test_standalone_command_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.realtime", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url = line.split()[-1]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")

        async def hello() -> str:
            async with connect(rt.connect_url(url, MODEL), compression=None) as socket:
                return str(orjson.loads(await socket.recv())["type"])

        assert asyncio.run(hello()) == rt.SESSION_CREATED
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
