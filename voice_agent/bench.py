"""``voice-agent bench``: latency, relay, capacity and cold-start figures of the voice path,
measured through the local stack. docs/performance.md has the results and how to read them.

What runs where. The bench process holds the callers (the load generator) and a Realtime
emulator of its own that notes the time of every audio append it receives and every audio
delta it sends. The local stack (moto, the API Gateway emulator calling the production
handlers, and the production worker in its own process) runs in a child process, its
worker pointed at that emulator through ``REALTIME_BASE_URL``; nothing else differs from
``voice-agent local``. Callers and emulator share one clock (``time.monotonic``), so relay
times need no clock offsets. Each caller marks its call in the first samples of its audio
(below the VAD threshold) so the emulator's sessions can be matched to calls.

How a turn's latency divides. The callers measure end of speech -> first agent audio as
``voice-agent call`` does (``voice_agent.caller``). That is the VAD's silence window
(500 ms), plus the wait for the uplink frame that completes it to be captured (the *frame
wait*, known exactly from where speech ended and the frame length), plus the *path*: the
relay both ways and the model's reaction. Added latency and capacity are judged on the
path, so frame granularity does not masquerade as relay jitter.

Phases: cold start of each handler module (fresh interpreters); full path and direct
connection side by side (one call of each at a time); the capacity ramp (concurrent calls
on one worker until p99 added latency passes the limit or errors appear); downlink chunk
size and uplink frame size sweeps, priced with ``voice_agent.cost``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TextIO, cast

import orjson

from emulators.realtime import Pacing, RealtimeEmulator
from voice_agent.arguments import bounded_int, positive_number
from voice_agent.caller import (
    DEFAULT_TAIL_MS,
    QUIET_MS,
    CallResult,
    TurnResult,
    stream_like_a_microphone,
)
from wire import client as proto
from wire import realtime as rt
from wire.audio import BYTES_PER_MS, SAMPLE_RATE_HZ, ms_to_bytes

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER_MODULES = (
    "handlers.authorize",
    "handlers.connect",
    "handlers.default",
    "handlers.disconnect",
)
VAD_SILENCE_MS = rt.SessionConfig().vad_silence_ms

# The targets.
TARGET_ADDED_MEDIAN_MS = 15.0
TARGET_CALLS_PER_CORE = 300
TARGET_P99_ADDED_MS = 50.0
TARGET_HANDLER_INIT_MS = 150.0

# Fine steps at the low end, where the local stack's moto gives out, then the issue's.
DEFAULT_LEVELS = (
    *(2, 3, 4, 5, 7, 10, 15, 20, 25, 35, 50, 75),
    *(100, 150, 200, 300, 400, 500, 750, 1000),
)
DEFAULT_CHUNK_BYTES = (2400, 4800, 9600, 24000)
DEFAULT_FRAME_MS = (20, 40, 100, 200)
STACK_CHUNK_BYTES = 4800  # the worker's default; the main stack runs with it

CallPath = Literal["full", "direct"]


# ---------------------------------------------------------------------------------------
# Statistics (pure)
# ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between the two nearest
    ranks (numpy's default method): p50 of [1, 2, 3, 4] is 2.5, p100 is the maximum."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be 0-100, got {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Median, tail percentiles and range of a set of milliseconds."""

    count: int
    median: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    def to_json(self) -> dict[str, float | int]:
        return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(values: Iterable[float]) -> Summary | None:
    """A ``Summary`` of ``values``, or None when there are none."""
    data = list(values)
    if not data:
        return None
    return Summary(
        count=len(data),
        median=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        mean=statistics.fmean(data),
        min=min(data),
        max=max(data),
    )


def _summary_json(values: Iterable[float]) -> dict[str, float | int] | None:
    summary = summarize(values)
    return None if summary is None else summary.to_json()


def frame_wait_ms(speech_end_ms: int, frame_ms: int, silence_ms: int = VAD_SILENCE_MS) -> int:
    """How long after the VAD's silence window completes the caller sends the frame that
    completes it: a microphone delivers a frame once all of it is captured."""
    detected = speech_end_ms + silence_ms
    return -detected % frame_ms


# ---------------------------------------------------------------------------------------
# The capacity ramp (pure)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelOutcome:
    """What the ramp needs to know about one level: its added latency and its errors."""

    calls: int
    p99_added_ms: float | None  # None: no turn measured, which counts as a failure
    errors: int


def ramp_levels(max_calls: int, levels: Sequence[int] = DEFAULT_LEVELS) -> list[int]:
    """The levels to try, up to ``max_calls``, which is always tried last."""
    if max_calls < 1:
        raise ValueError("max calls must be at least 1")
    chosen = [level for level in levels if level < max_calls]
    return [*chosen, max_calls]


def level_passes(outcome: LevelOutcome, limit_ms: float) -> bool:
    """A level passes with no errors and p99 added latency within the limit."""
    return (
        outcome.errors == 0
        and outcome.p99_added_ms is not None
        and (outcome.p99_added_ms <= limit_ms)
    )


def next_level(
    levels: Sequence[int],
    done: Sequence[LevelOutcome],
    limit_ms: float,
    *,
    keep_going: bool = False,
) -> int | None:
    """The next level to run, or None: the ramp stops at the first failing level (with
    ``keep_going``, only at the last level, to draw the whole curve)."""
    if done and not keep_going and not level_passes(done[-1], limit_ms):
        return None
    tried = done[-1].calls if done else 0
    return next((level for level in levels if level > tried), None)


def ramp_capacity(done: Sequence[LevelOutcome], limit_ms: float) -> tuple[int, int | None]:
    """(the most calls carried within the limit, the level that failed or None)."""
    carried = 0
    for outcome in done:
        if not level_passes(outcome, limit_ms):
            return carried, outcome.calls
        carried = outcome.calls
    return carried, None


# ---------------------------------------------------------------------------------------
# What the callers say
# ---------------------------------------------------------------------------------------

LEAD_MS = 200
GAP_MS = 1_100  # silence after each turn: the 500 ms VAD window, the reply, some room
TONE_AMPLITUDE = 8_000
MARKER_MAGIC = 1_357  # first sample of every call: below the VAD threshold with the next two


@dataclass(frozen=True)
class Script:
    """A call's audio: turns of tone between silences, ending at known positions."""

    pcm: bytes
    turn_end_ms: tuple[int, ...]

    @property
    def audio_ms(self) -> int:
        return len(self.pcm) // BYTES_PER_MS


def burst_ms(turn: int) -> int:
    """Turn lengths 600-790 ms in 10 ms steps, so speech ends fall all over the frame grid."""
    return 600 + 10 * ((turn * 7) % 20)


def turn_period_ms(turns: int = 20) -> float:
    return statistics.fmean(burst_ms(t) for t in range(turns)) + GAP_MS


def speech_script(turns: int) -> Script:
    """``turns`` bursts of a 440 Hz tone (the emulator's VAD hears them as speech)."""
    parts = [bytes(ms_to_bytes(LEAD_MS))]
    ends = []
    position = LEAD_MS
    for turn in range(turns):
        length = burst_ms(turn)
        samples = array(
            "h",
            (
                int(TONE_AMPLITUDE * math.sin(2 * math.pi * 440 * i / SAMPLE_RATE_HZ))
                for i in range(length * SAMPLE_RATE_HZ // 1000)
            ),
        )
        if sys.byteorder == "big":
            samples.byteswap()
        parts.append(samples.tobytes())
        position += length
        ends.append(position)
        parts.append(bytes(ms_to_bytes(GAP_MS)))
        position += GAP_MS
    return Script(b"".join(parts), tuple(ends))


def marked(pcm: bytes, number: int) -> bytes:
    """``pcm`` with the call's number in its first samples (quiet enough for the VAD)."""
    if not 0 < number < 4096 * 4096:
        raise ValueError("call number out of range")
    head = array("h", [MARKER_MAGIC, number % 4096, number // 4096])
    if sys.byteorder == "big":
        head.byteswap()
    return head.tobytes() + pcm[6:]


def read_marker(pcm_head: bytes) -> int | None:
    """The call number marked in the first 6 bytes of a call's audio, if any."""
    if len(pcm_head) < 6:
        return None
    head = array("h")
    head.frombytes(pcm_head[:6])
    if sys.byteorder == "big":
        head.byteswap()
    if head[0] != MARKER_MAGIC:
        return None
    return head[1] + 4096 * head[2]


# ---------------------------------------------------------------------------------------
# The bench's Realtime emulator: timestamps of appends received and deltas sent
# ---------------------------------------------------------------------------------------


def _b64_bytes(text: str) -> int:
    padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
    return len(text) // 4 * 3 - padding


class SessionClock:
    """Times of one model session's audio: ``appends`` holds (received at, input bytes so
    far), ``deltas`` holds (sent at, item id, bytes of that item so far)."""

    __slots__ = ("_register", "marker", "appends", "deltas", "_stream", "_items")

    def __init__(self, register: Callable[[int, SessionClock], None]) -> None:
        self._register = register
        self.marker: int | None = None
        self.appends: list[tuple[float, int]] = []
        self.deltas: list[tuple[float, str, int]] = []
        self._stream = 0
        self._items: dict[str, int] = {}

    def received(self, text: str, now: float) -> None:
        if rt.INPUT_AUDIO_APPEND not in text:
            return
        audio = orjson.loads(text).get("audio")
        if not isinstance(audio, str):
            return
        if self._stream == 0:
            self.marker = read_marker(base64.b64decode(audio[:8]))
            if self.marker is not None:
                self._register(self.marker, self)
        self._stream += _b64_bytes(audio)
        self.appends.append((now, self._stream))

    def sending(self, text: str, now: float) -> None:
        if rt.OUTPUT_AUDIO_DELTA not in text:
            return
        event = orjson.loads(text)
        if event.get("type") != rt.OUTPUT_AUDIO_DELTA:
            return
        item = str(event.get("item_id"))
        total = self._items.get(item, 0) + _b64_bytes(str(event.get("delta", "")))
        self._items[item] = total
        self.deltas.append((now, item, total))


class _TimedSocket:
    """The emulator's side of one socket, noting when audio passes through it."""

    def __init__(self, websocket: Any, clock: SessionClock) -> None:
        self._websocket = websocket
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)

    def __aiter__(self) -> Any:
        return self._messages()

    async def _messages(self) -> Any:
        async for message in self._websocket:
            if isinstance(message, str):
                self._clock.received(message, time.monotonic())
            yield message

    async def send(self, message: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(message, str):
            self._clock.sending(message, time.monotonic())
        await self._websocket.send(message, *args, **kwargs)


class BenchEmulator(RealtimeEmulator):
    """The Realtime emulator with a bench-only hook: each session's audio timestamps, by
    the call number the caller marked in its audio. Production code is not touched."""

    def __init__(self) -> None:
        # No record of audio (memory stays flat over thousands of calls), no deflate (the
        # worker never asks for it), no thinking pause: only the relay is measured.
        super().__init__(pacing=Pacing(), keep_audio_in_records=False, compression=None)
        self.clocks: dict[int, SessionClock] = {}

    def _register(self, marker: int, clock: SessionClock) -> None:
        self.clocks[marker] = clock

    async def _handle(self, websocket: Any) -> None:
        await super()._handle(cast(Any, _TimedSocket(websocket, SessionClock(self._register))))


# ---------------------------------------------------------------------------------------
# Callers, with timestamps of what they send and receive
# ---------------------------------------------------------------------------------------

_call_numbers = itertools.count(1)


class ScriptTimeline:
    """A call's clock, measured as ``voice_agent.caller`` measures it (same ``CallResult``):
    audio position ``m`` is spoken at ``t0 + m`` ms, and a turn's latency runs from its end
    of speech to the next agent audio. Unlike the caller it keeps no reply audio, and it
    waits for every turn of its script: when the uplink lags, a call must not hang up
    before the model has heard its last turn."""

    pace = 1.0  # always real time: the bench measures latency

    def __init__(self, expected_turns: int) -> None:
        self.t0 = self.last_event_at = time.monotonic()
        self.expected_turns = expected_turns
        self.result = CallResult()

    def heard(self) -> None:
        self.last_event_at = time.monotonic()

    def spoken_at(self, ms: int) -> float:
        return self.t0 + ms / 1000

    def speech_stopped(self, speech_end_ms: int) -> None:
        self.result.turns.append(TurnResult(speech_end_ms, self.spoken_at(speech_end_ms)))

    def audio(self) -> None:
        now = time.monotonic()
        for turn in self.result.turns:
            if turn.first_audio_at is None and now >= turn.speech_end_at:
                turn.first_audio_at = now

    def replies_complete(self) -> bool:
        turns = len(self.result.turns)
        quiet = (time.monotonic() - self.last_event_at) * 1000 >= QUIET_MS
        return turns >= self.expected_turns and self.result.audio_items_done >= turns and quiet


@dataclass
class CallTrace:
    """One call as the caller saw it."""

    number: int
    path: CallPath
    frame_ms: int
    result: CallResult = field(default_factory=CallResult)
    sent_at: list[float] = field(default_factory=list)  # by frame seq
    audio: list[tuple[float, str, int]] = field(default_factory=list)  # at, item, bytes so far
    started_at: float | None = None  # the caller's t0: audio position 0 is spoken then
    audio_ms: int = 0
    audio_posts: int = 0
    audio_bytes: int = 0
    messages: int = 0  # every server message after ready: @connections posts on the full path
    error: str | None = None

    @property
    def streamed_until(self) -> float | None:
        return None if self.started_at is None else self.started_at + self.audio_ms / 1000


async def call_full_path(
    url: str, script: Script, trace: CallTrace, *, settle_timeout_s: float = 15.0
) -> None:
    """A call through the local stack, as ``voice-agent call`` makes it, with timestamps."""
    from websockets.asyncio.client import connect

    pcm = marked(script.pcm, trace.number)
    async with connect(url, max_size=2**20, compression=None, open_timeout=60) as socket:
        ready = asyncio.Event()
        holder: dict[str, ScriptTimeline] = {}
        item_bytes: dict[str, int] = {}

        async def receive() -> None:
            async for frame in socket:
                now = time.monotonic()
                event = proto.parse_server_event(frame)
                kind = event["type"]
                if kind == proto.EventType.READY:
                    ready.set()
                    continue
                timeline = holder.get("timeline")
                if timeline is None:
                    continue
                timeline.heard()
                trace.messages += 1
                if kind == proto.EventType.AUDIO:
                    pcm_in = proto.decode_audio(event)
                    timeline.audio()
                    item = str(event.get("item_id"))
                    item_bytes[item] = item_bytes.get(item, 0) + len(pcm_in)
                    trace.audio.append((now, item, item_bytes[item]))
                    trace.audio_posts += 1
                    trace.audio_bytes += len(pcm_in)
                elif kind == proto.EventType.SPEECH_STOPPED:
                    timeline.speech_stopped(int(event.get("speech_end_ms", event["audio_end_ms"])))
                elif kind == proto.EventType.AUDIO_DONE:
                    timeline.result.audio_items_done += 1
                elif kind in (proto.EventType.ERROR, proto.EventType.SESSION_ENDED):
                    timeline.result.errors.append(event)

        receiver = asyncio.create_task(receive())
        try:
            try:
                await asyncio.wait_for(ready.wait(), timeout=30)
            except TimeoutError:
                trace.error = "no ready within 30 s"
                return
            timeline = ScriptTimeline(len(script.turn_end_ms))
            holder["timeline"] = timeline
            trace.started_at = timeline.t0
            trace.audio_ms = script.audio_ms + DEFAULT_TAIL_MS
            sequence = itertools.count()

            async def send_audio(frame: bytes) -> None:
                trace.sent_at.append(time.monotonic())
                await socket.send(proto.audio_action(frame, seq=next(sequence)))

            await stream_like_a_microphone(
                send_audio,
                timeline,
                pcm,
                frame_ms=trace.frame_ms,
                settle_timeout_s=settle_timeout_s,
            )
            trace.result = timeline.result
        finally:
            receiver.cancel()


async def call_direct(
    base_url: str, script: Script, trace: CallTrace, *, settle_timeout_s: float = 15.0
) -> None:
    """The same call straight to the emulator, as ``call_realtime_direct`` makes it."""
    from websockets.asyncio.client import connect

    pcm = marked(script.pcm, trace.number)
    model = rt.DEFAULT_MODEL
    url = rt.connect_url(base_url, model)
    async with connect(url, max_size=None, compression=None, open_timeout=60) as socket:
        await socket.send(orjson.dumps(rt.session_update(rt.SessionConfig(model=model))).decode())
        async for frame in socket:
            if orjson.loads(frame).get("type") == rt.SESSION_UPDATED:
                break
        timeline = ScriptTimeline(len(script.turn_end_ms))
        trace.started_at = timeline.t0
        trace.audio_ms = script.audio_ms + DEFAULT_TAIL_MS
        item_bytes: dict[str, int] = {}

        async def receive() -> None:
            async for frame in socket:
                now = time.monotonic()
                event = orjson.loads(frame)
                kind = event.get("type")
                timeline.heard()
                if kind == rt.OUTPUT_AUDIO_DELTA:
                    pcm_in = base64.b64decode(event["delta"])
                    timeline.audio()
                    item = str(event.get("item_id"))
                    item_bytes[item] = item_bytes.get(item, 0) + len(pcm_in)
                    trace.audio.append((now, item, item_bytes[item]))
                    trace.audio_posts += 1
                    trace.audio_bytes += len(pcm_in)
                elif kind == rt.SPEECH_STOPPED:
                    end_ms = max(0, int(event["audio_end_ms"]) - VAD_SILENCE_MS)
                    timeline.speech_stopped(end_ms)
                elif kind == rt.OUTPUT_AUDIO_DONE:
                    timeline.result.audio_items_done += 1
                elif kind == rt.ERROR:
                    timeline.result.errors.append(event)

        async def send_audio(frame: bytes) -> None:
            trace.sent_at.append(time.monotonic())
            await socket.send(orjson.dumps(rt.input_audio_append(frame)).decode())

        receiver = asyncio.create_task(receive())
        try:
            await stream_like_a_microphone(
                send_audio,
                timeline,
                pcm,
                frame_ms=trace.frame_ms,
                settle_timeout_s=settle_timeout_s,
            )
            trace.result = timeline.result
        finally:
            receiver.cancel()


async def run_call(
    path: CallPath, target_url: str, script: Script, frame_ms: int, delay_s: float = 0.0
) -> CallTrace:
    """One call (after ``delay_s``); failures are recorded in the trace, never raised."""
    trace = CallTrace(number=next(_call_numbers), path=path, frame_ms=frame_ms)
    if delay_s:
        await asyncio.sleep(delay_s)
    call = call_full_path if path == "full" else call_direct
    try:
        await call(target_url, script, trace)
    except Exception as exc:  # noqa: BLE001 - a refused or dropped call is a measured error
        trace.error = f"{type(exc).__name__}: {exc}"
    return trace


# ---------------------------------------------------------------------------------------
# Turning traces into figures (pure)
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnSample:
    latency_ms: float  # end of speech -> first agent audio, as heard
    path_ms: float  # less the VAD's silence window and the frame wait
    speech_end_at: float  # monotonic


def turn_samples(trace: CallTrace) -> list[TurnSample]:
    samples = []
    for turn in trace.result.turns:
        latency = turn.latency_ms
        if latency is None:
            continue
        wait = frame_wait_ms(turn.speech_end_ms, trace.frame_ms)
        samples.append(TurnSample(latency, latency - VAD_SILENCE_MS - wait, turn.speech_end_at))
    return samples


def call_errors(trace: CallTrace, script: Script) -> list[str]:
    """What went wrong in a call: an exception, error events, turns heard or answered."""
    problems = []
    if trace.error:
        problems.append(trace.error)
    for event in trace.result.errors:
        problems.append(str(event.get("code") or event.get("reason") or event.get("error")))
    heard = len(trace.result.turns)
    if not trace.error and heard != len(script.turn_end_ms):
        problems.append(f"{heard} of {len(script.turn_end_ms)} turns heard")
    unanswered = sum(1 for t in trace.result.turns if t.latency_ms is None)
    if unanswered:
        problems.append(f"{unanswered} turn(s) without a reply")
    return problems


def uplink_relay_ms(sent_at: Sequence[float], frame_bytes: int, clock: SessionClock) -> list[float]:
    """Per frame: from the caller sending it to the model receiving its last byte."""
    out = []
    appends = clock.appends
    index = 0
    for seq, sent in enumerate(sent_at):
        needed = (seq + 1) * frame_bytes
        while index < len(appends) and appends[index][1] < needed:
            index += 1
        if index == len(appends):
            break
        out.append((appends[index][0] - sent) * 1000)
    return out


def downlink_relay_ms(
    deltas: Sequence[tuple[float, str, int]],
    received: Sequence[tuple[float, str, int]],
    *,
    first_only: bool = False,
) -> list[float]:
    """Per model delta: from the model sending it to the caller receiving its last byte.
    Deltas the caller never received (cut by barge-in) are left out. ``first_only``: only
    the first delta of each reply, the one that decides how fast the agent answers."""
    by_item: dict[str, list[tuple[float, int]]] = {}
    for at, item, total in received:
        by_item.setdefault(item, []).append((at, total))
    out = []
    seen: set[str] = set()
    for sent, item, total in deltas:
        if first_only and item in seen:
            continue
        seen.add(item)
        arrivals = by_item.get(item, [])
        arrival = next((at for at, got in arrivals if got >= total), None)
        if arrival is not None:
            out.append((arrival - sent) * 1000)
    return out


@dataclass
class Relay:
    uplink: list[float] = field(default_factory=list)
    downlink: list[float] = field(default_factory=list)
    downlink_first: list[float] = field(default_factory=list)

    def add(self, trace: CallTrace, emulator: BenchEmulator) -> None:
        clock = emulator.clocks.pop(trace.number, None)
        if clock is None:
            return
        self.uplink += uplink_relay_ms(trace.sent_at, ms_to_bytes(trace.frame_ms), clock)
        self.downlink += downlink_relay_ms(clock.deltas, trace.audio)
        self.downlink_first += downlink_relay_ms(clock.deltas, trace.audio, first_only=True)


# ---------------------------------------------------------------------------------------
# The local stack in a child process, and CPU time from /proc
# ---------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds and wall time of a set of processes over an interval."""

    pids: dict[str, int]
    started_wall: float = 0.0
    started_cpu: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.started_wall = time.monotonic()
        self.started_cpu = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> tuple[float, dict[str, float]]:
        wall = time.monotonic() - self.started_wall
        used = {
            name: process_cpu_seconds(pid) - self.started_cpu[name]
            for name, pid in self.pids.items()
        }
        return wall, used


class StackProcess:
    """``voice-agent local`` in a child process, its worker talking to the bench emulator."""

    def __init__(self, realtime_url: str, *, chunk_bytes: int, pollers: int) -> None:
        self.realtime_url = realtime_url
        self.chunk_bytes = chunk_bytes
        self.pollers = pollers
        self.process: subprocess.Popen[str] | None = None
        self.websocket_url = ""
        self.pid = 0
        self.worker_pid = 0
        self._state_dir = tempfile.TemporaryDirectory(prefix="voice-agent-bench-state-")
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept open while it runs
            mode="w+", prefix="voice-agent-bench-stack-", suffix=".log", delete=False
        )

    async def __aenter__(self) -> StackProcess:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_ROOT),
            # Its token state must not replace that of a stack the user is running.
            "VOICE_AGENT_STATE_DIR": self._state_dir.name,
        }
        env.pop("OPENAI_API_KEY", None)  # the emulator, never the real service
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voice_agent.bench",
                "serve-stack",
                "--realtime-url",
                self.realtime_url,
                "--chunk-bytes",
                str(self.chunk_bytes),
                "--pollers",
                str(self.pollers),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), 90)
            info = json.loads(line)
        except (TimeoutError, json.JSONDecodeError) as exc:
            tail = self.log_tail()
            await self.__aexit__()
            raise RuntimeError(f"the local stack did not start: {tail}") from exc
        self.websocket_url = info["websocket"]
        self.pid = int(info["pid"])
        self.worker_pid = int(info["worker_pids"][0])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None and process.stdin is not None:
            process.stdin.close()  # the child stops the stack when its stdin closes
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        if process.stdout is not None:
            process.stdout.close()
        self._log.close()
        os.unlink(self._log.name)
        self._state_dir.cleanup()

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = Path(self._log.name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class StackSlot:
    """The local stack a phase runs on, which a phase may replace with a fresh one (a level
    that failed may leave a backlog in moto's queue that would spoil the next)."""

    def __init__(self, realtime_url: str, *, chunk_bytes: int, pollers: int) -> None:
        self._args = (realtime_url, chunk_bytes, pollers)
        self._stack: StackProcess | None = None

    @property
    def stack(self) -> StackProcess:
        assert self._stack is not None, "the stack is not started"
        return self._stack

    async def start(self) -> StackProcess:
        realtime_url, chunk_bytes, pollers = self._args
        self._stack = await StackProcess(
            realtime_url, chunk_bytes=chunk_bytes, pollers=pollers
        ).__aenter__()
        return self._stack

    async def restart(self) -> StackProcess:
        await self.stop()
        return await self.start()

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__()


def _serve_stack(argv: Sequence[str]) -> int:
    """The child's side of ``StackProcess``: run the stack until stdin closes."""
    from voice_agent.local_stack import LocalStack, LocalStackOptions

    parser = argparse.ArgumentParser(prog="python -m voice_agent.bench serve-stack")
    parser.add_argument("--realtime-url", required=True)
    parser.add_argument("--chunk-bytes", type=int, required=True)
    parser.add_argument("--pollers", type=int, required=True)
    args = parser.parse_args(argv)
    options = LocalStackOptions(
        port=0,
        chunk_bytes=args.chunk_bytes,
        worker_env={"REALTIME_BASE_URL": args.realtime_url, "SQS_POLLERS": str(args.pollers)},
        max_sessions=0,  # the ramp measures the worker, not the stack's session limit
    )

    async def serve() -> None:
        stack = LocalStack(options)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            urls = await stack.start()
            info = {
                "websocket": urls.websocket,
                "pid": os.getpid(),
                "worker_pids": [worker.pid for worker in stack.worker_processes],
            }
            print(json.dumps(info), flush=True)
            stdin_closed = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stdin_closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        finally:
            await stack.stop()

    asyncio.run(serve())
    os._exit(0)  # the thread blocked on stdin must not hold the exit


# ---------------------------------------------------------------------------------------
# Progress on stderr
# ---------------------------------------------------------------------------------------


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, one line per
    step otherwise (a log file or CI)."""

    WIDTH = 30

    def __init__(self, total: float, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.started = time.monotonic()
        self._tty = self.stream.isatty()

    def update(self, label: str, advance: float = 0.0) -> None:
        self.done = min(self.total, self.done + advance)
        if not self.enabled:
            return
        fraction = self.done / self.total
        filled = int(fraction * self.WIDTH)
        elapsed = time.monotonic() - self.started
        line = (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:3.0f}% "
            f"{elapsed:4.0f}s  {label}"
        )
        if self._tty:
            self.stream.write("\r" + line[:120].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchSettings:
    turns: int
    max_calls: int
    level_seconds: float
    limit_ms: float
    chunk_bytes: tuple[int, ...]
    frame_ms: tuple[int, ...]
    sweep_turns: int
    cold_runs: int
    pollers: int
    skip: frozenset[str]
    keep_going: bool = False
    turns_per_call: int = 10


def cold_start(runs: int) -> dict[str, Any]:
    """Import-and-init time of each handler module in fresh interpreters, as Lambda's INIT
    does it: boto3's import and the module's clients included, the interpreter's start not."""
    probe = (
        "import importlib, sys, time\n"
        "t0 = time.perf_counter()\n"
        "import boto3\n"
        "t1 = time.perf_counter()\n"
        "importlib.import_module(sys.argv[1])\n"
        "t2 = time.perf_counter()\n"
        "print((t1 - t0) * 1000, (t2 - t0) * 1000)\n"
    )
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SESSIONS_TABLE": "bench-sessions",
        "AUDIO_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/000000000000/bench.fifo",
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"):
        env.pop(name, None)
    handlers: dict[str, Any] = {}
    starts = []
    for _ in range(runs):
        begun = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        starts.append((time.perf_counter() - begun) * 1000)
    for module in HANDLER_MODULES:
        boto3_ms, total_ms = [], []
        for _ in range(runs):
            done = subprocess.run(
                [sys.executable, "-c", probe, module],
                env=env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            first, second = done.stdout.split()
            boto3_ms.append(float(first))
            total_ms.append(float(second))
        median = statistics.median(total_ms)
        handlers[module] = {
            "median_ms": round(median, 1),
            "min_ms": round(min(total_ms), 1),
            "max_ms": round(max(total_ms), 1),
            "boto3_import_median_ms": round(statistics.median(boto3_ms), 1),
            "meets_target": median <= TARGET_HANDLER_INIT_MS,
        }
    return {
        "runs": runs,
        "target_ms": TARGET_HANDLER_INIT_MS,
        "interpreter_start_median_ms": round(statistics.median(starts), 1),
        "handlers": handlers,
    }


async def side_by_side(
    stack: StackProcess,
    emulator: BenchEmulator,
    settings: BenchSettings,
    progress: Progress,
    weight: float,
) -> tuple[dict[str, Any], list[float]]:
    """Full path and direct connection, one call of each at a time, run together."""
    turns_left = settings.turns
    traces: dict[CallPath, list[CallTrace]] = {"full": [], "direct": []}
    relay: dict[CallPath, Relay] = {"full": Relay(), "direct": Relay()}
    errors: list[str] = []
    calls = math.ceil(settings.turns / settings.turns_per_call)
    meter = CpuMeter({"worker": stack.worker_pid})
    meter.start()
    for _ in range(calls):
        script = speech_script(min(settings.turns_per_call, turns_left))
        turns_left -= len(script.turn_end_ms)
        progress.update(f"latency: full path and direct, {len(script.turn_end_ms)} turns")
        pair = await asyncio.gather(
            run_call("full", stack.websocket_url, script, 100),
            run_call("direct", emulator.url, script, 100),
        )
        for trace in pair:
            traces[trace.path].append(trace)
            relay[trace.path].add(trace, emulator)
            errors += [f"{trace.path}: {e}" for e in call_errors(trace, script)]
        progress.update("latency", weight / calls)
    _, worker_cpu = meter.stop()
    samples = {p: [s for t in traces[p] for s in turn_samples(t)] for p in traces}
    if not samples["full"] or not samples["direct"]:
        # Nothing to compare (or to ramp from): the bench itself is broken, not slow.
        raise RuntimeError(f"no turn was measured; {'; '.join(errors[:3]) or 'no error seen'}")
    call_minutes = sum(t.audio_ms for t in traces["full"] if t.started_at is not None) / 60_000
    full_traces = [t for t in traces["full"] if t.started_at is not None]
    out: dict[str, Any] = {
        "frame_ms": 100,
        "errors": errors,
        # What one call of this script costs in messages (talk ratio ~0.4: 0.6-0.8 s replies
        # to 0.6-0.8 s turns every 1.8 s).
        "downlink_posts_per_call_minute": (
            round(sum(t.messages for t in full_traces) / call_minutes, 1) if call_minutes else None
        ),
        "downlink_audio_posts_per_call_minute": (
            round(sum(t.audio_posts for t in full_traces) / call_minutes, 1)
            if call_minutes
            else None
        ),
        "worker_cpu_s_per_call_minute": (
            round(worker_cpu["worker"] / call_minutes, 3) if call_minutes else None
        ),
    }
    for p in ("full", "direct"):
        out[p] = {
            "latency_ms": _summary_json(s.latency_ms for s in samples[p]),
            "path_ms": _summary_json(s.path_ms for s in samples[p]),
            "frame_wait_ms": _summary_json(
                s.latency_ms - s.path_ms - VAD_SILENCE_MS for s in samples[p]
            ),
        }
    full = [s.latency_ms for s in samples["full"]]
    direct = [s.latency_ms for s in samples["direct"]]
    if full and direct:
        full_path = [s.path_ms for s in samples["full"]]
        direct_path = [s.path_ms for s in samples["direct"]]
        out["added_median_ms"] = round(statistics.median(full) - statistics.median(direct), 1)
        out["added_p95_ms"] = round(percentile(full, 95) - percentile(direct, 95), 1)
        out["added_p99_ms"] = round(percentile(full, 99) - percentile(direct, 99), 1)
        out["ratio_median"] = round(statistics.median(full) / statistics.median(direct), 3)
        out["path_ratio_median"] = round(
            statistics.median(full_path) / max(statistics.median(direct_path), 0.1), 2
        )
        out["meets_target"] = out["added_median_ms"] <= TARGET_ADDED_MEDIAN_MS
    relay_out = {
        direction: {p: _summary_json(getattr(relay[p], direction)) for p in ("full", "direct")}
        for direction in ("uplink", "downlink", "downlink_first")
    }
    for direction in ("uplink", "downlink", "downlink_first"):
        full_r, direct_r = getattr(relay["full"], direction), getattr(relay["direct"], direction)
        if full_r and direct_r:
            relay_out[direction]["added_median_ms"] = round(
                statistics.median(full_r) - statistics.median(direct_r), 1
            )
    baseline = [s.path_ms for s in samples["full"]]
    return {"latency": out, "relay": relay_out}, baseline


async def capacity_level(
    stack: StackProcess,
    emulator: BenchEmulator,
    calls: int,
    settings: BenchSettings,
    baseline_path_ms: float,
) -> dict[str, Any]:
    """``calls`` concurrent calls on the one worker; figures from the turns that ended
    while all of them were streaming."""
    period_s = turn_period_ms() / 1000
    stagger_s = min(10.0, max(period_s, calls * 0.02))
    # Room for the connects and model sessions to open before the measured window.
    slack_s = min(5.0, settings.level_seconds)
    turns = math.ceil((stagger_s + slack_s + settings.level_seconds) / period_s)
    script = speech_script(turns)
    meter = CpuMeter({"worker": stack.worker_pid, "stack": stack.pid, "bench": os.getpid()})
    meter.start()
    traces = await asyncio.gather(
        *(
            run_call("full", stack.websocket_url, script, 100, delay_s=stagger_s * i / calls)
            for i in range(calls)
        )
    )
    wall_s, cpu_s = meter.stop()
    relay = Relay()
    errors: list[str] = []
    for trace in traces:
        relay.add(trace, emulator)
        errors += call_errors(trace, script)
    started = [t.started_at for t in traces if t.started_at is not None]
    ended = [t.streamed_until for t in traces if t.streamed_until is not None]
    window = (max(started), min(ended)) if started and ended else (0.0, 0.0)
    samples = [
        s for t in traces for s in turn_samples(t) if window[0] <= s.speech_end_at <= window[1]
    ]
    added = [s.path_ms - baseline_path_ms for s in samples]
    call_minutes = sum(t.audio_ms for t in traces if t.started_at is not None) / 60_000
    worker_cpu = cpu_s["worker"]
    return {
        "calls": calls,
        "turns_measured": len(samples),
        "steady_window_s": round(max(0.0, window[1] - window[0]), 1),
        "latency_ms": _summary_json(s.latency_ms for s in samples),
        "path_ms": _summary_json(s.path_ms for s in samples),
        "added_ms": _summary_json(added),
        "relay_uplink_ms": _summary_json(relay.uplink),
        "relay_downlink_ms": _summary_json(relay.downlink),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "wall_s": round(wall_s, 1),
        "cpu_percent": {name: round(used / wall_s * 100, 1) for name, used in cpu_s.items()},
        "worker_cpu_s_per_call_minute": (
            round(worker_cpu / call_minutes, 3) if call_minutes else None
        ),
    }


async def capacity_ramp(
    slot: StackSlot,
    emulator: BenchEmulator,
    settings: BenchSettings,
    baseline: list[float],
    progress: Progress,
    weight: float,
) -> dict[str, Any]:
    levels = ramp_levels(settings.max_calls)
    baseline_path_ms = statistics.median(baseline)
    # The worker at rest: what its long-poll loop costs with no calls.
    meter = CpuMeter({"worker": slot.stack.worker_pid})
    meter.start()
    await asyncio.sleep(3)
    idle_wall, idle_cpu = meter.stop()
    done: list[LevelOutcome] = []
    results = []
    while (
        calls := next_level(levels, done, settings.limit_ms, keep_going=settings.keep_going)
    ) is not None:
        progress.update(f"capacity: {calls} concurrent calls")
        result = await capacity_level(slot.stack, emulator, calls, settings, baseline_path_ms)
        results.append(result)
        p99 = result["added_ms"]["p99"] if result["added_ms"] else None
        done.append(LevelOutcome(calls, p99, result["errors"]))
        progress.update(f"capacity: {calls} calls done", weight / len(levels))
        if level_passes(done[-1], settings.limit_ms):
            await asyncio.sleep(2)  # let the stack drain the disconnects
        else:
            progress.update("capacity: a fresh local stack after a failed level")
            await slot.restart()
    carried, failed_at = ramp_capacity(done, settings.limit_ms)
    # The worker's CPU per call-minute at the busiest level without errors (its batches
    # fill as calls grow, so the figure falls with load), else at the first level.
    measured = [r for r in results if r["worker_cpu_s_per_call_minute"] is not None]
    clean = [r for r in measured if not r["errors"]]
    cpu_level = clean[-1] if clean else (measured[0] if measured else None)
    cpu_per_call_minute = cpu_level["worker_cpu_s_per_call_minute"] if cpu_level else None
    progress.update("capacity done", weight * (1 - len(results) / len(levels)))
    return {
        "limit_p99_added_ms": settings.limit_ms,
        "baseline_path_median_ms": round(baseline_path_ms, 1),
        "levels": results,
        "calls_carried": carried,
        "failed_at": failed_at,
        "reached_max_calls": failed_at is None,
        "worker_idle_cpu_percent": round(idle_cpu["worker"] / idle_wall * 100, 2),
        "worker_cpu_s_per_call_minute": cpu_per_call_minute,
        "worker_cpu_measured_at_calls": cpu_level["calls"] if cpu_level else None,
        # If the worker alone were the limit: one core's seconds per minute over its cost.
        "worker_cpu_bound_calls_per_core": (
            int(60 / cpu_per_call_minute) if cpu_per_call_minute else None
        ),
        "meets_target": carried >= TARGET_CALLS_PER_CORE,
    }


def _prices() -> Any:
    from voice_agent import cost

    return cost.PriceTable.from_toml(cost.PRICES_PATH.read_text())


def _lean_scenario(**changes: Any) -> Any:
    from voice_agent import cost

    base = {
        "region": "us-east-1",
        "model": rt.DEFAULT_MODEL,
        "default_route": "sqs",
        "chunk_bytes": 24_000,
        "frame_ms": 100,
        "concurrency": 1000,
    }
    return cost.Scenario(**{**base, **changes})


async def chunk_point(
    stack: StackProcess, emulator: BenchEmulator, chunk: int, turns: int
) -> dict[str, Any]:
    """One call with ``chunk`` bytes per downlink post: latency, downlink relay, posts."""
    from voice_agent import cost

    script = speech_script(turns)
    trace = await run_call("full", stack.websocket_url, script, 100)
    relay = Relay()
    relay.add(trace, emulator)
    samples = turn_samples(trace)
    reply_s = trace.audio_bytes / (BYTES_PER_MS * 1000)
    posts_per_speech_s = trace.audio_posts / reply_s if reply_s else None
    estimate = cost.estimate_cost(_lean_scenario(chunk_bytes=chunk), _prices())
    downlink = next(i for i in estimate.items if i.item.startswith("downlink audio posts"))
    talk_s = 60 * estimate.scenario.talk_ratio
    measured_posts = posts_per_speech_s * talk_s if posts_per_speech_s else None
    measured_usd = (
        downlink.usd_per_call_minute * measured_posts / downlink.quantity
        if measured_posts and downlink.quantity
        else None
    )
    return {
        "chunk_bytes": chunk,
        "chunk_ms": chunk // BYTES_PER_MS,
        "errors": call_errors(trace, script),
        "latency_ms": _summary_json(s.latency_ms for s in samples),
        "path_ms": _summary_json(s.path_ms for s in samples),
        "relay_downlink_ms": _summary_json(relay.downlink),
        "posts_per_second_of_reply": round(posts_per_speech_s, 2) if posts_per_speech_s else None,
        "mean_post_pcm_bytes": (
            round(trace.audio_bytes / trace.audio_posts) if trace.audio_posts else None
        ),
        "cost_model_posts_per_call_minute": round(downlink.quantity, 1),
        "measured_posts_per_call_minute": round(measured_posts, 1) if measured_posts else None,
        "cost_model_downlink_usd_per_call_minute": downlink.usd_per_call_minute,
        "measured_downlink_usd_per_call_minute": measured_usd,
        "lean_aws_usd_per_call_minute_at_1000": estimate.aws_usd_per_call_minute,
    }


async def frame_point(
    stack: StackProcess, emulator: BenchEmulator, frame_ms: int, turns: int
) -> dict[str, Any]:
    """A full-path and a direct call with ``frame_ms`` uplink frames, side by side."""
    from voice_agent import cost

    script = speech_script(turns)
    full, direct = await asyncio.gather(
        run_call("full", stack.websocket_url, script, frame_ms),
        run_call("direct", emulator.url, script, frame_ms),
    )
    relay_full, relay_direct = Relay(), Relay()
    relay_full.add(full, emulator)
    relay_direct.add(direct, emulator)
    full_s, direct_s = turn_samples(full), turn_samples(direct)
    prices = _prices()
    lean = cost.estimate_cost(_lean_scenario(frame_ms=frame_ms), prices)
    default = cost.estimate_cost(
        _lean_scenario(frame_ms=frame_ms, default_route="lambda", chunk_bytes=4800), prices
    )
    return {
        "frame_ms": frame_ms,
        "errors": call_errors(full, script) + call_errors(direct, script),
        "full_latency_ms": _summary_json(s.latency_ms for s in full_s),
        "direct_latency_ms": _summary_json(s.latency_ms for s in direct_s),
        "full_path_ms": _summary_json(s.path_ms for s in full_s),
        "frame_wait_mean_ms": (
            round(statistics.fmean(s.latency_ms - s.path_ms - VAD_SILENCE_MS for s in full_s), 1)
            if full_s
            else None
        ),
        "relay_uplink_full_ms": _summary_json(relay_full.uplink),
        "relay_uplink_direct_ms": _summary_json(relay_direct.uplink),
        "uplink_messages_per_minute": 60_000 // frame_ms,
        "lean_aws_usd_per_call_minute_at_1000": lean.aws_usd_per_call_minute,
        "default_aws_usd_per_call_minute_at_1000": default.aws_usd_per_call_minute,
    }


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("moto", "boto3", "websockets", "aiohttp")},
        # Other work on the machine skews every figure: compare with the core count.
        "load_average_start": _load_average(),
        "note": (
            "one machine: moto, the API Gateway emulator with the handlers, the worker, the "
            "Realtime emulator and the callers share its cores"
        ),
    }


async def run_bench(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    """Every phase, in order; the JSON document ``--json`` prints."""
    began = time.monotonic()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            **{k: v for k, v in asdict(settings).items() if k != "skip"},
            "skip": sorted(settings.skip),
        },
        "cold_start": None,
        "latency": None,
        "relay": None,
        "capacity": None,
        "chunk_sweep": [],
        "frame_sweep": [],
    }
    if "cold-start" not in settings.skip:
        progress.update("cold start: handler imports in fresh interpreters")
        report["cold_start"] = await asyncio.to_thread(cold_start, settings.cold_runs)
    progress.update("cold start done", 5)
    emulator = BenchEmulator()
    await emulator.start()
    slot = StackSlot(emulator.url, chunk_bytes=STACK_CHUNK_BYTES, pollers=settings.pollers)
    try:
        await slot.start()
        progress.update("local stack started")
        first, baseline = await side_by_side(slot.stack, emulator, settings, progress, 30)
        report.update(first)
        if "capacity" not in settings.skip:
            report["capacity"] = await capacity_ramp(
                slot, emulator, settings, baseline, progress, 40
            )
        else:
            progress.update("capacity skipped", 40)
        if "frames" not in settings.skip:
            for frame_ms in settings.frame_ms:
                progress.update(f"uplink frames of {frame_ms} ms")
                point = await frame_point(slot.stack, emulator, frame_ms, settings.sweep_turns)
                report["frame_sweep"].append(point)
                progress.update(f"frames {frame_ms} ms done", 10 / len(settings.frame_ms))
        if "chunks" not in settings.skip and STACK_CHUNK_BYTES in settings.chunk_bytes:
            progress.update(f"downlink chunks of {STACK_CHUNK_BYTES} B")
            point = await chunk_point(slot.stack, emulator, STACK_CHUNK_BYTES, settings.sweep_turns)
            report["chunk_sweep"].append(point)
            progress.update("chunks done", 15 / len(settings.chunk_bytes))
        await slot.stop()
        if "chunks" not in settings.skip:
            for chunk in settings.chunk_bytes:
                if chunk == STACK_CHUNK_BYTES:
                    continue
                progress.update(f"downlink chunks of {chunk} B (restarting the stack)")
                other = StackSlot(emulator.url, chunk_bytes=chunk, pollers=settings.pollers)
                try:
                    point = await chunk_point(
                        await other.start(), emulator, chunk, settings.sweep_turns
                    )
                finally:
                    await other.stop()
                report["chunk_sweep"].append(point)
                progress.update(f"chunks {chunk} B done", 15 / len(settings.chunk_bytes))
            report["chunk_sweep"].sort(key=lambda p: p["chunk_bytes"])
    finally:
        await slot.stop()  # stopping a stopped stack does nothing
        await emulator.stop()
    progress.update("done", progress.total)
    report["machine"]["load_average_end"] = _load_average()
    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.monotonic() - began, 1)
    return report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Each of the issue's targets next to what was measured."""
    latency = report.get("latency") or {}
    capacity = report.get("capacity") or {}
    cold = report.get("cold_start") or {}
    slowest = max((h["median_ms"] for h in (cold.get("handlers") or {}).values()), default=None)
    return {
        "added_median_ms": {
            "target": f"<= {TARGET_ADDED_MEDIAN_MS:g}",
            "measured": latency.get("added_median_ms"),
            "met": latency.get("meets_target"),
        },
        "calls_per_worker_core": {
            "target": f">= {TARGET_CALLS_PER_CORE} at p99 added <= {TARGET_P99_ADDED_MS:g} ms",
            "measured": capacity.get("calls_carried"),
            "met": capacity.get("meets_target"),
        },
        "handler_init_ms": {
            "target": f"<= {TARGET_HANDLER_INIT_MS:g} each",
            "measured": slowest,
            "met": None if slowest is None else slowest <= TARGET_HANDLER_INIT_MS,
        },
    }


# ---------------------------------------------------------------------------------------
# Output: table, JSON, plot
# ---------------------------------------------------------------------------------------


def _ms(summary: dict[str, Any] | None, key: str = "median") -> str:
    if not summary:
        return "-"
    return f"{summary[key]:.0f}"


def _triple(summary: dict[str, Any] | None) -> str:
    if not summary:
        return "-"
    return f"{summary['median']:.0f} / {summary['p95']:.0f} / {summary['p99']:.0f}"


def _met(value: Any) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[value]


def format_table(report: dict[str, Any]) -> str:
    """The readable report."""
    lines: list[str] = []
    machine = report["machine"]
    lines.append(
        f"voice-agent bench on {machine['cpu']} ({machine['cores']} cores, Python "
        f"{machine['python']}); everything shares this machine"
    )
    load = machine.get("load_average_start")
    if load and load[0] > 0.5:
        lines.append(
            f"  note: load average {load[0]:.1f} when the bench began: other work was running"
        )
    latency = report.get("latency")
    if latency:
        lines += ["", "End of speech -> first agent audio, ms (median / p95 / p99)"]
        lines.append(f"  {'':28} {'full path':>18} {'direct':>18}")
        for label, key in (
            ("as heard", "latency_ms"),
            ("path (less VAD + frame wait)", "path_ms"),
        ):
            lines.append(
                f"  {label:28} {_triple(latency['full'][key]):>18} "
                f"{_triple(latency['direct'][key]):>18}"
            )
        turns = (latency["full"]["latency_ms"] or {}).get("count", 0)
        if "added_median_ms" in latency:
            lines.append(
                f"  full path adds {latency['added_median_ms']:.1f} ms at the median "
                f"(p95 {latency['added_p95_ms']:+.0f}, p99 {latency['added_p99_ms']:+.0f}); "
                f"ratio {latency['ratio_median']:.3f} as heard, "
                f"{latency['path_ratio_median']:.2f} on the path; {turns} turns each"
            )
        if latency.get("worker_cpu_s_per_call_minute") is not None:
            lines.append(
                f"  worker CPU with one call: {latency['worker_cpu_s_per_call_minute']:.2f} s "
                f"per call-minute; {latency['downlink_posts_per_call_minute']:.0f} @connections "
                f"posts per call-minute ({latency['downlink_audio_posts_per_call_minute']:.0f} "
                "of them audio)"
            )
        for error in latency["errors"][:5]:
            lines.append(f"  error: {error}")
    relay = report.get("relay")
    if relay:
        lines += ["", "Relay per audio chunk, ms (median / p95 / p99)"]
        lines.append(f"  {'':28} {'full path':>18} {'direct':>18}")
        for direction, label in (
            ("uplink", "uplink (frame -> model)"),
            ("downlink", "downlink (delta -> caller)"),
            ("downlink_first", "  first delta of a reply"),
        ):
            lines.append(
                f"  {label:28} {_triple(relay[direction]['full']):>18} "
                f"{_triple(relay[direction]['direct']):>18}"
            )
    capacity = report.get("capacity")
    if capacity:
        lines += [
            "",
            f"Capacity of one worker process (p99 added <= {capacity['limit_p99_added_ms']:g} ms "
            f"over the 1-call path median {capacity['baseline_path_median_ms']:.0f} ms)",
            f"  {'calls':>6} {'turns':>6} {'added p50':>9} {'p99':>6} {'up p99':>7} "
            f"{'down p99':>8} {'errors':>6} {'worker':>7} {'stack':>6} {'bench':>6} "
            f"{'cpu s/call-min':>14}",
        ]
        for level in capacity["levels"]:
            cpu = level["cpu_percent"]
            per_min = level["worker_cpu_s_per_call_minute"]
            lines.append(
                f"  {level['calls']:>6} {level['turns_measured']:>6} "
                f"{_ms(level['added_ms']):>9} {_ms(level['added_ms'], 'p99'):>6} "
                f"{_ms(level['relay_uplink_ms'], 'p99'):>7} "
                f"{_ms(level['relay_downlink_ms'], 'p99'):>8} {level['errors']:>6} "
                f"{cpu['worker']:>6.0f}% {cpu['stack']:>5.0f}% {cpu['bench']:>5.0f}% "
                f"{per_min if per_min is not None else '-':>14}"
            )
        failed = capacity["failed_at"]
        verdict = (
            f"carried {capacity['calls_carried']} calls; failed at {failed}"
            if failed
            else f"carried every level up to {capacity['calls_carried']} (--max-calls)"
        )
        lines.append(f"  {verdict}")
        if capacity["worker_cpu_s_per_call_minute"]:
            lines.append(
                f"  worker CPU {capacity['worker_cpu_s_per_call_minute']:.3f} s per call-minute "
                f"at {capacity['worker_cpu_measured_at_calls']} calls: "
                f"{capacity['worker_cpu_bound_calls_per_core']} calls per core if the worker "
                f"alone were the limit; idle {capacity['worker_idle_cpu_percent']:.1f}% of a core"
            )
        for level in capacity["levels"]:
            for example in level["error_examples"][:2]:
                lines.append(f"  error at {level['calls']} calls: {example}")
    if report.get("frame_sweep"):
        lines += [
            "",
            "Uplink frame size (one call each way; latency medians in ms; AWS $/call-minute "
            "at 1,000 calls)",
            f"  {'frame':>6} {'full':>6} {'direct':>7} {'frame wait':>10} {'uplink p50':>10} "
            f"{'msgs/min':>8} {'lean $':>9} {'default $':>9}",
        ]
        for point in report["frame_sweep"]:
            wait = point["frame_wait_mean_ms"]
            lines.append(
                f"  {point['frame_ms']:>4}ms {_ms(point['full_latency_ms']):>6} "
                f"{_ms(point['direct_latency_ms']):>7} "
                f"{(f'{wait:.0f}' if wait is not None else '-'):>10} "
                f"{_ms(point['relay_uplink_full_ms']):>10} "
                f"{point['uplink_messages_per_minute']:>8} "
                f"{point['lean_aws_usd_per_call_minute_at_1000']:>9.5f} "
                f"{point['default_aws_usd_per_call_minute_at_1000']:>9.5f}"
            )
    if report.get("chunk_sweep"):
        lines += [
            "",
            "Downlink chunk size (one call each; ms; posts and $ per call-minute, talk ratio "
            "0.5, lean path, 1,000 calls)",
            f"  {'chunk':>7} {'latency':>7} {'down p50/p95':>12} {'B/post':>7} "
            f"{'posts model':>11} {'measured':>8} {'$ model':>9} {'$ measured':>10}",
        ]
        for point in report["chunk_sweep"]:
            relay_down = point["relay_downlink_ms"]
            down = f"{relay_down['median']:.0f}/{relay_down['p95']:.0f}" if relay_down else "-"
            measured_usd = point["measured_downlink_usd_per_call_minute"]
            lines.append(
                f"  {point['chunk_bytes']:>6}B {_ms(point['latency_ms']):>7} {down:>12} "
                f"{point['mean_post_pcm_bytes'] or '-':>7} "
                f"{point['cost_model_posts_per_call_minute']:>11} "
                f"{point['measured_posts_per_call_minute'] or '-':>8} "
                f"{point['cost_model_downlink_usd_per_call_minute']:>9.6f} "
                f"{(f'{measured_usd:.6f}' if measured_usd is not None else '-'):>10}"
            )
    cold = report.get("cold_start")
    if cold:
        lines += [
            "",
            f"Handler cold start: import + init in a fresh interpreter, median of {cold['runs']} "
            f"(interpreter start {cold['interpreter_start_median_ms']:.0f} ms, not included)",
        ]
        for module, figures in cold["handlers"].items():
            lines.append(
                f"  {module:22} {figures['median_ms']:6.0f} ms (boto3 import "
                f"{figures['boto3_import_median_ms']:.0f} ms)"
            )
    lines += ["", "Targets"]
    for name, target in report["targets"].items():
        lines.append(
            f"  {name:24} {target['target']:34} measured {target['measured']}: "
            f"{_met(target['met'])}"
        )
    lines.append(f"\n({report['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def plot_capacity(report: dict[str, Any], path: Path) -> bool:
    """Added latency (median and p99) against concurrent calls, as a PNG. False when
    matplotlib is missing (it is in the dev extra) or there is nothing to plot."""
    capacity = report.get("capacity")
    if not capacity or not capacity["levels"]:
        return False
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    levels = [lv for lv in capacity["levels"] if lv["added_ms"]]
    calls = [lv["calls"] for lv in levels]
    median = [lv["added_ms"]["median"] for lv in levels]
    p99 = [lv["added_ms"]["p99"] for lv in levels]
    one_call = (report.get("latency") or {}).get("full", {}).get("path_ms")
    if one_call:  # the baseline itself: added is the path less its own median
        calls, median = [1, *calls], [0.0, *median]
        p99 = [one_call["p99"] - one_call["median"], *p99]
    figure, (axes, cpu_axes) = plt.subplots(
        2, 1, figsize=(8, 6.4), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    limit = capacity["limit_p99_added_ms"]
    axes.plot(calls, p99, "o-", color="#c0392b", label="p99 added")
    axes.plot(calls, median, "s-", color="#2c7fb8", label="median added")
    axes.axhline(limit, color="grey", linestyle="--", linewidth=1, label=f"limit {limit:g} ms")
    for level in levels:
        if level["errors"]:
            axes.annotate(
                f"{level['errors']} errors",
                (level["calls"], level["added_ms"]["p99"]),
                textcoords="offset points",
                xytext=(-8, -14),
                horizontalalignment="right",
                fontsize=8,
                color="#c0392b",
            )
    # Linear up to the limit, logarithmic above: both the target and a collapse stay legible.
    axes.set_yscale("symlog", linthresh=limit, linscale=1.5)
    top = max(limit * 2, *p99) * 1.6
    bottom = min(-5.0, *median) * 1.2
    axes.set_ylim(bottom, top)
    ticks = (-25, 0, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)
    axes.set_yticks([t for t in ticks if bottom <= t <= top])
    axes.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    axes.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes.set_ylabel("added over 1 call, ms")
    machine = report["machine"]
    axes.set_title(
        "End of speech -> first audio: latency added by concurrent calls\n"
        f"local stack on {machine['cores']} cores shared by moto, the gateway emulator, the "
        "worker, the model emulator and the callers",
        fontsize=9,
    )
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    names = {
        "worker": "worker process",
        "stack": "moto + gateway + handlers",
        "bench": "callers + model emulator",
    }
    for name, style in (("worker", "o-"), ("stack", "^-"), ("bench", "x-")):
        axes_x = [lv["calls"] for lv in levels]
        cpu_axes.plot(axes_x, [lv["cpu_percent"][name] for lv in levels], style, label=names[name])
    cpu_axes.set_ylabel("CPU, % of one core")
    cpu_axes.set_ylim(0, max(110, *(max(lv["cpu_percent"].values()) + 10 for lv in levels)))
    cpu_axes.grid(True, alpha=0.3)
    cpu_axes.legend(fontsize=8, loc="upper left")
    cpu_axes.set_xscale("log")
    cpu_axes.set_xticks(calls)
    cpu_axes.set_xticklabels([str(c) for c in calls])
    cpu_axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    cpu_axes.set_xlabel("concurrent calls on one worker process")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


# ---------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------

BENCH_PHASES = ("capacity", "frames", "chunks", "cold-start")


def _int_list(what: str, check: Callable[[int], str | None]) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        values = []
        for part in text.split(","):
            try:
                number = int(part)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{what} must be comma-separated integers, got {text!r}"
                ) from None
            problem = check(number)
            if problem:
                raise argparse.ArgumentTypeError(f"{what}: {problem}")
            values.append(number)
        return tuple(dict.fromkeys(values))

    return parse


def _check_chunk(number: int) -> str | None:
    from voice_agent.cost import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES

    if not MIN_CHUNK_BYTES <= number <= MAX_CHUNK_BYTES or number % 2:
        return f"{number} is not an even number of bytes in {MIN_CHUNK_BYTES}-{MAX_CHUNK_BYTES}"
    return None


def _check_frame(number: int) -> str | None:
    # 20 ms is the fastest the worker's rate limit (50 messages a second) lets through.
    if not 20 <= number <= proto.MAX_UPLINK_PCM_BYTES // BYTES_PER_MS:
        return f"{number} ms is outside 20-{proto.MAX_UPLINK_PCM_BYTES // BYTES_PER_MS} ms"
    return None


def _phases(text: str) -> frozenset[str]:
    names = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = names - set(BENCH_PHASES)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown phase {', '.join(sorted(unknown))}; choose from {', '.join(BENCH_PHASES)}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``voice-agent bench``."""
    parser.description = (
        "Measure the voice path on the local stack: end-of-speech -> first-audio latency "
        "(full path and direct), relay per chunk, worker capacity, handler cold start, "
        "chunk and frame sizes. Takes several minutes; --quick is a tiny run."
    )
    parser.add_argument(
        "--turns",
        type=bounded_int(1, 1000, "turns"),
        help="turns per path in the side-by-side latency run (default 30)",
    )
    parser.add_argument(
        "--max-calls",
        type=bounded_int(1, 5000, "max calls"),
        help="highest concurrency the ramp tries (default 1000)",
    )
    parser.add_argument(
        "--level-seconds",
        type=bounded_int(1, 600, "level seconds"),
        help="seconds each ramp level runs with all its calls live (default 20)",
    )
    parser.add_argument(
        "--limit-ms",
        type=positive_number("limit"),
        default=TARGET_P99_ADDED_MS,
        help="p99 added latency a ramp level may reach (default 50)",
    )
    parser.add_argument(
        "--chunk-bytes",
        type=_int_list("chunk bytes", _check_chunk),
        help="downlink chunk sizes to compare (default 2400,4800,9600,24000)",
    )
    parser.add_argument(
        "--frame-ms",
        type=_int_list("frame ms", _check_frame),
        help="uplink frame lengths to compare (default 20,40,100,200)",
    )
    parser.add_argument(
        "--sweep-turns",
        type=bounded_int(1, 200, "sweep turns"),
        help="turns per point of the chunk and frame sweeps (default 10)",
    )
    parser.add_argument(
        "--cold-runs",
        type=bounded_int(1, 100, "cold runs"),
        help="fresh interpreters per handler module (default 5)",
    )
    parser.add_argument(
        "--pollers",
        type=bounded_int(1, 16, "pollers"),
        default=1,
        help="SQS_POLLERS of the worker (default 1: moto's FIFO long poll "
        "spins when several pollers share a queue)",
    )
    parser.add_argument(
        "--skip",
        type=_phases,
        default=frozenset(),
        help=f"phases to leave out, comma-separated: {', '.join(BENCH_PHASES)}",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every ramp level up to --max-calls, past the first failing one (for the "
        "plot; the capacity verdict is still the first failure)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run (seconds, for tests): few turns, 2 calls, one point each",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--out", type=Path, help="directory for bench.json and latency-vs-concurrency.png"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    quick = args.quick

    def pick(value: Any, normal: Any, tiny: Any) -> Any:
        return value if value is not None else (tiny if quick else normal)

    return BenchSettings(
        turns=pick(args.turns, 30, 2),
        max_calls=pick(args.max_calls, 1000, 2),
        level_seconds=pick(args.level_seconds, 20, 2),
        limit_ms=args.limit_ms,
        chunk_bytes=pick(args.chunk_bytes, DEFAULT_CHUNK_BYTES, (STACK_CHUNK_BYTES,)),
        frame_ms=pick(args.frame_ms, DEFAULT_FRAME_MS, (100,)),
        sweep_turns=pick(args.sweep_turns, 10, 1),
        cold_runs=pick(args.cold_runs, 5, 1),
        pollers=args.pollers,
        skip=args.skip,
        keep_going=args.keep_going,
    )


def run(args: argparse.Namespace) -> int:
    """``voice-agent bench``: 0 when it ran (whatever the figures), 1 if it could not."""
    settings = settings_from_args(args)
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"voice-agent bench: cannot create {args.out}: {exc}", file=sys.stderr)
            return 2
    progress = Progress(100, enabled=not args.no_progress)
    try:
        report = asyncio.run(run_bench(settings, progress))
    except (OSError, RuntimeError) as exc:
        progress.finish()
        print(f"voice-agent bench: {exc}", file=sys.stderr)
        return 1
    progress.finish()
    if args.out is not None:
        plot = args.out / "latency-vs-concurrency.png"
        report["plot"] = str(plot) if plot_capacity(report, plot) else None
        (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-stack"]:
        sys.exit(_serve_stack(sys.argv[2:]))
    print("run `voice-agent bench`", file=sys.stderr)
    sys.exit(2)
