"""A command-line caller: streams PCM to a voice-agent endpoint as a microphone would, saves
what comes back and measures end of speech -> first agent audio.

Two transports share one timeline: ``call_gateway`` speaks the client protocol (the local
stack or a deployed stack), ``call_realtime_direct`` speaks the Realtime protocol straight
to a model endpoint (the emulator), which is the baseline the full path is compared with.

Latency is measured the way a person hears it: the caller "speaks" sample ``m`` at
``t0 + m`` ms and sends each frame once it is fully captured. The model's VAD reports where
speech ended (``speech_end_ms``, the model's ``audio_end_ms`` less its silence window); the
latency of that turn is the arrival of the next agent audio minus ``t0 + speech_end_ms``. It
includes the VAD's silence window (500 ms by default), as a person's experience does.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from websockets.asyncio.client import ClientConnection, connect

from wire import client as proto
from wire import realtime as rt
from wire.audio import ms_to_bytes

DEFAULT_FRAME_MS = 100  # uplink frame: 4,800 bytes of PCM, ~6.5 KB as JSON
DEFAULT_TAIL_MS = 1_000  # silence after the WAV so the VAD can end the last turn
# A call is over when every turn heard has had its reply and the server has said nothing
# for this long (in fast mode the model may still be catching up on queued audio).
QUIET_MS = 800


@dataclass
class TurnResult:
    speech_end_ms: int  # where the user's speech ended, in uplink audio
    speech_end_at: float  # wall clock (monotonic s) at which that sample was spoken
    first_audio_at: float | None = None

    @property
    def latency_ms(self) -> float | None:
        if self.first_audio_at is None:
            return None
        return (self.first_audio_at - self.speech_end_at) * 1000


@dataclass
class CallResult:
    reply_pcm: bytes = b""
    turns: list[TurnResult] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    audio_items_done: int = 0

    @property
    def latencies_ms(self) -> list[float]:
        return [t.latency_ms for t in self.turns if t.latency_ms is not None]


class _Timeline:
    """Maps uplink audio positions to wall-clock time and pairs turns with replies."""

    def __init__(self, pace: float, expected_turns: int | None = None) -> None:
        self.pace = pace
        # When known, the call is not over before this many replies (a reply delayed
        # past QUIET_MS, e.g. across a worker handover, is still waited for).
        self.expected_turns = expected_turns
        self.t0 = time.monotonic()
        self.last_event_at = self.t0
        self.result = CallResult()

    def restart(self) -> None:
        """Start the clock now: the caller begins to speak."""
        self.t0 = self.last_event_at = time.monotonic()

    def heard(self) -> None:
        self.last_event_at = time.monotonic()

    def spoken_at(self, ms: int) -> float:
        return self.t0 + ms / 1000 * self.pace

    def speech_stopped(self, speech_end_ms: int) -> None:
        self.result.turns.append(TurnResult(speech_end_ms, self.spoken_at(speech_end_ms)))

    def audio(self, pcm: bytes) -> None:
        self.result.reply_pcm += pcm
        now = time.monotonic()
        for turn in self.result.turns:
            if turn.first_audio_at is None and now >= turn.speech_end_at:
                turn.first_audio_at = now

    def replies_complete(self) -> bool:
        turns = max(len(self.result.turns), self.expected_turns or 0)
        quiet = (time.monotonic() - self.last_event_at) * 1000 >= QUIET_MS
        return turns > 0 and self.result.audio_items_done >= turns and quiet


async def _stream(
    send_audio: Callable[[bytes], Awaitable[None]],
    timeline: _Timeline,
    pcm: bytes,
    receiver: asyncio.Task[None],
    *,
    frame_ms: int,
    tail_ms: int,
    settle_timeout_s: float,
) -> None:
    """Send ``pcm`` then silence, paced like a microphone, until every turn is answered;
    then stop ``receiver``, the task reading the replies."""
    try:
        await stream_like_a_microphone(
            send_audio,
            timeline,
            pcm,
            frame_ms=frame_ms,
            tail_ms=tail_ms,
            settle_timeout_s=settle_timeout_s,
        )
    finally:
        receiver.cancel()


class PacedTimeline(Protocol):
    """What the paced sender needs of a call's clock (the caller's and the bench's)."""

    pace: float

    def spoken_at(self, ms: int) -> float: ...

    def replies_complete(self) -> bool: ...


async def stream_like_a_microphone(
    send_audio: Callable[[bytes], Awaitable[None]],
    timeline: PacedTimeline,
    pcm: bytes,
    *,
    frame_ms: int,
    tail_ms: int = DEFAULT_TAIL_MS,
    settle_timeout_s: float,
) -> None:
    """Send ``pcm`` and ``tail_ms`` of silence in frames, each once it is fully "captured",
    then (at real-time pace) more silence, as an open microphone would, until every turn
    is answered or ``settle_timeout_s`` has passed."""
    frame_bytes = ms_to_bytes(frame_ms)
    silence = bytes(frame_bytes)
    sent_ms = 0
    total_ms = len(pcm) // ms_to_bytes(1) + tail_ms
    deadline: float | None = None
    while True:
        if sent_ms >= total_ms:
            if deadline is None:
                deadline = time.monotonic() + settle_timeout_s
            if timeline.replies_complete() or time.monotonic() >= deadline:
                return
            if timeline.pace == 0:
                await asyncio.sleep(0.02)  # fast mode: wait without sending more
                continue
        start = ms_to_bytes(sent_ms)
        frame = pcm[start : start + frame_bytes] if start < len(pcm) else silence
        if len(frame) < frame_bytes and start < len(pcm):
            frame += bytes(frame_bytes - len(frame))
        # A microphone delivers a frame once all of it is captured.
        wait = timeline.spoken_at(sent_ms + frame_ms) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        await send_audio(frame)
        sent_ms += frame_ms


async def call_gateway(
    url: str,
    pcm: bytes,
    *,
    frame_ms: int = DEFAULT_FRAME_MS,
    tail_ms: int = DEFAULT_TAIL_MS,
    pace: float = 1.0,
    settle_timeout_s: float = 20.0,
    ready_timeout_s: float = 10.0,
    expected_turns: int | None = None,
) -> CallResult:
    """Call a voice-agent WebSocket endpoint (client protocol) and collect the replies."""
    async with connect(url, max_size=2**20, compression=None) as socket:
        ready = asyncio.Event()
        timeline = _Timeline(pace, expected_turns)

        async def receive() -> None:
            async for frame in socket:
                event = proto.parse_server_event(frame)
                kind = event["type"]
                if kind == proto.EventType.READY:
                    ready.set()
                    continue
                timeline.heard()
                if kind == proto.EventType.AUDIO:
                    timeline.audio(proto.decode_audio(event))
                    continue
                timeline.result.events.append(event)
                if kind == proto.EventType.SPEECH_STOPPED:
                    end_ms = event.get("speech_end_ms", event["audio_end_ms"])
                    timeline.speech_stopped(int(end_ms))
                elif kind == proto.EventType.AUDIO_DONE:
                    timeline.result.audio_items_done += 1
                elif kind == proto.EventType.ERROR:
                    timeline.result.errors.append(event)

        receiver = asyncio.create_task(receive())
        try:
            # The model session is opened at $connect; wait for it so the clock starts
            # when the caller would start talking.
            await asyncio.wait_for(ready.wait(), timeout=ready_timeout_s)
        except TimeoutError:
            pass  # a deployment that never says ready still gets the audio
        timeline.restart()
        sequence = itertools.count()

        async def send_audio(frame: bytes) -> None:
            await socket.send(proto.audio_action(frame, seq=next(sequence)))

        await _stream(
            send_audio,
            timeline,
            pcm,
            receiver,
            frame_ms=frame_ms,
            tail_ms=tail_ms,
            settle_timeout_s=settle_timeout_s,
        )
        return timeline.result


async def call_realtime_direct(
    base_url: str,
    pcm: bytes,
    *,
    model: str = "gpt-realtime-mini",
    api_key: str = "",
    frame_ms: int = DEFAULT_FRAME_MS,
    tail_ms: int = DEFAULT_TAIL_MS,
    pace: float = 1.0,
    settle_timeout_s: float = 20.0,
) -> CallResult:
    """The same call straight to a Realtime endpoint: the baseline with nothing between."""
    url = rt.connect_url(base_url, model)
    async with connect(
        url, additional_headers=rt.auth_headers(api_key), max_size=None, compression=None
    ) as socket:
        await socket.send(orjson.dumps(rt.session_update(rt.SessionConfig(model=model))).decode())
        await _wait_for(socket, rt.SESSION_UPDATED)
        timeline = _Timeline(pace)

        async def receive() -> None:
            async for frame in socket:
                event = orjson.loads(frame)
                kind = event.get("type")
                timeline.heard()
                if kind == rt.OUTPUT_AUDIO_DELTA:
                    timeline.audio(base64.b64decode(event["delta"]))
                elif kind == rt.SPEECH_STOPPED:
                    silence = rt.SessionConfig().vad_silence_ms
                    timeline.speech_stopped(max(0, int(event["audio_end_ms"]) - silence))
                elif kind == rt.OUTPUT_AUDIO_DONE:
                    timeline.result.audio_items_done += 1
                elif kind == rt.ERROR:
                    timeline.result.errors.append(event)

        async def send_audio(frame: bytes) -> None:
            await socket.send(orjson.dumps(rt.input_audio_append(frame)).decode())

        receiver = asyncio.create_task(receive())
        await _stream(
            send_audio,
            timeline,
            pcm,
            receiver,
            frame_ms=frame_ms,
            tail_ms=tail_ms,
            settle_timeout_s=settle_timeout_s,
        )
        return timeline.result


async def _wait_for(socket: ClientConnection, event_type: str, timeout_s: float = 10) -> None:
    async def wait() -> None:
        async for frame in socket:
            if orjson.loads(frame).get("type") == event_type:
                return

    await asyncio.wait_for(wait(), timeout=timeout_s)
