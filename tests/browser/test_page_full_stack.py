"""The page against the whole local stack, as a person uses it: headless Chromium talking
into a fake microphone, through the API Gateway emulator, the real handlers, moto's queue,
the real worker and the Realtime emulator, whose "model" echoes each user turn bit-exact.

The fake microphone says two things. The first turn is long; its echo starts after the
VAD's 500 ms of silence, and the second turn starts while that echo is still playing, so
the emulator's VAD hears a barge-in: the page must silence its playback at once and report
how much of the echo was heard. Then the second turn's echo plays in full.
"""

from __future__ import annotations

import base64
import math
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import BrowserContext, Playwright, WebSocket

from emulators.realtime import expected_replies, reply_transcript, user_transcript
from tests.browser.audio_analysis import (
    db,
    pcm16_to_floats,
    rms,
    write_wav,
    zero_crossing_frequency,
)
from tests.browser.conftest import launch_chromium
from tests.browser.voice_page import VoicePage
from tests.local_stack_process import RunningStack, local_stack
from wire.audio import SAMPLE_RATE_HZ, bytes_to_ms


@dataclass(frozen=True)
class BargeInMicrophone:
    """What the fake microphone plays: a long turn, a pause the VAD ends the turn on, and a
    second turn that starts while the echo of the first is still playing.

    The echo of turn one starts 500 ms (the VAD's silence) plus a trip through the stack
    after turn one ends; turn two's speech_started reaches the page ``gap_s`` after that end
    plus a similar trip. So the barge-in lands about ``gap_s - 0.5`` s into the echo (about
    300 ms, measured), which leaves room for the trips to differ on a busy machine, and far
    from the end of an echo of ``first_s``.
    """

    rate_hz: int = 48_000
    amplitude: float = 0.3  # of full scale; far above the VAD's threshold (RMS 500 of 32767)
    lead_s: float = 0.5
    first_hz: float = 500.0
    first_s: float = 2.0
    gap_s: float = 0.9
    second_hz: float = 800.0
    second_s: float = 0.8
    tail_s: float = 0.7  # then the file ends (%noloop) and the microphone is silent

    @property
    def tone_rms(self) -> float:
        return self.amplitude / math.sqrt(2)

    def samples(self) -> array:
        pcm = array("h")
        for frequency, seconds in [
            (0.0, self.lead_s),
            (self.first_hz, self.first_s),
            (0.0, self.gap_s),
            (self.second_hz, self.second_s),
            (0.0, self.tail_s),
        ]:
            peak = self.amplitude * 32767 if frequency else 0.0
            step = 2 * math.pi * frequency / self.rate_hz
            pcm.extend(round(peak * math.sin(step * i)) for i in range(int(seconds * self.rate_hz)))
        return pcm


MICROPHONE = BargeInMicrophone()

# Records where the audio clock (the context's rendered frames) stood when each server event
# arrived, and when each tap batch arrived. Installed before the page's scripts, it wraps the
# constructors the page uses (AudioContext, AudioWorkletNode, WebSocket) and only listens
# alongside the page. The playback node counts frames from its own start, ``offset`` context
# frames in; the tap batches give it to a render quantum: the batch ending at node frame n
# arrives once context frame offset + n is rendered (or is being rendered).
PROBE = """
(() => {
  const probe = { events: [], tapBatches: [] };
  window.__fullStackProbe = probe;
  let context = null;
  const contextFrame = () => (context ? context.currentTime * context.sampleRate : null);
  const NativeAudioContext = window.AudioContext;
  window.AudioContext = class extends NativeAudioContext {
    constructor(...args) {
      super(...args);
      context = this;
    }
  };
  const NativeNode = window.AudioWorkletNode;
  window.AudioWorkletNode = class extends NativeNode {
    constructor(ctx, name, options) {
      super(ctx, name, options);
      if (name !== "playback") return;
      let frames = 0;
      this.port.addEventListener("message", ({ data }) => {
        if (data.type !== "tap") return;
        frames += data.samples.length;
        probe.tapBatches.push([frames, contextFrame()]);
      });
    }
  };
  const NativeSocket = window.WebSocket;
  window.WebSocket = class extends NativeSocket {
    constructor(...args) {
      super(...args);
      // Registered before the page's onmessage, so it runs first on every frame.
      this.addEventListener("message", ({ data }) => {
        const event = JSON.parse(data);
        probe.events.push({ type: event.type, frame: contextFrame() });
      });
    }
  };
})();
"""


class SocketLog:
    """Every frame of the page's WebSocket, as JSON, in order, seen through the browser."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    def attach(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: self.sent.append(orjson.loads(payload)))
        ws.on("framereceived", lambda payload: self.received.append(orjson.loads(payload)))

    def uplink_pcm(self) -> bytes:
        frames = sorted((m for m in self.sent if m["action"] == "audio"), key=lambda m: m["seq"])
        assert [m["seq"] for m in frames] == list(range(len(frames)))
        return b"".join(base64.b64decode(m["audio"]) for m in frames)

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.received if e["type"] == event_type]

    def downlink_pcm(self, item_id: str) -> bytes:
        return b"".join(
            base64.b64decode(e["audio"]) for e in self.of_type("audio") if e["item_id"] == item_id
        )

    def interrupts(self) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["action"] == "interrupt"]


StartStackCall = Callable[[], tuple[VoicePage, SocketLog]]


@pytest.fixture(scope="module")
def stack(chromium_executable: Path) -> Iterator[RunningStack]:
    # chromium_executable first: skip (or, in CI, fail) before starting anything.
    with local_stack() as running:
        yield running


@pytest.fixture(scope="module")
def page_url(stack: RunningStack) -> str:
    return stack.page_url.split("?", 1)[0]  # open_page adds ?ws= itself


@pytest.fixture(scope="module")
def ws_url(stack: RunningStack) -> str:
    return stack.ws_url


@pytest.fixture(scope="module")
def browser_context(
    chromium_executable: Path,
    playwright_driver: Playwright,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrowserContext]:
    """A browser of its own: the fake microphone's file is fixed per browser process."""
    directory = tmp_path_factory.mktemp("full-stack")
    wav = write_wav(directory / "barge-in.wav", MICROPHONE.samples(), MICROPHONE.rate_hz)
    context = launch_chromium(playwright_driver, chromium_executable, wav, directory / "profile")
    yield context
    context.close()


@pytest.fixture
def start_stack_call(open_page: Callable[..., VoicePage]) -> StartStackCall:
    """Like ``start_call``, for the local stack: the server's side is not in this process,
    so the page's WebSocket is read through the browser instead."""

    def start() -> tuple[VoicePage, SocketLog]:
        page = open_page(init_script=PROBE)
        log = SocketLog()
        page.page.on("websocket", log.attach)
        page.connect()
        return page, log

    return start


def wait_for(page: VoicePage, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Polls ``condition`` while Playwright runs: it delivers the socket's frames to the
    ``SocketLog`` only inside its own calls, never during a plain ``time.sleep``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        page.page.wait_for_timeout(50)


@dataclass(frozen=True)
class Playback:
    """One item as the playback node output it: from its first to its last non-zero sample,
    with the node's underruns (runs of exact zeros: the queue ran dry) taken out."""

    start: int
    end: int
    gaps: list[tuple[int, int]]
    sound: list[float]  # the samples without the gaps

    @property
    def gap_frames(self) -> int:
        return sum(b - a for a, b in self.gaps)

    @property
    def frames(self) -> int:
        return self.end - self.start - self.gap_frames


def playback_of(samples: list[float], min_gap: int = 16) -> Playback:
    loud = [i for i, s in enumerate(samples) if s != 0.0]
    assert loud, "nothing was played"
    start, end = loud[0], loud[-1] + 1
    gaps: list[tuple[int, int]] = []
    sound: list[float] = []
    run_start = None
    for i in range(start, end):
        if samples[i] == 0.0:
            run_start = i if run_start is None else run_start
            continue
        if run_start is not None:
            if i - run_start >= min_gap:
                gaps.append((run_start, i))
            else:
                sound.extend(samples[run_start:i])
            run_start = None
        sound.append(samples[i])
    return Playback(start, end, gaps, sound)


def edge_zeros(pcm: bytes) -> tuple[int, int]:
    """Silent samples at the start and end of a 24 kHz turn: the VAD keeps whole 10 ms
    frames, so a turn may begin and end with a few ms of silence, which no tap can see."""
    samples = pcm16_to_floats(pcm)
    loud = [i for i, s in enumerate(samples) if s != 0.0]
    return loud[0], len(samples) - loud[-1] - 1


def steady(samples: list[float]) -> list[float]:
    """The middle 80%: no onset or offset clicks."""
    return samples[len(samples) // 10 : len(samples) - len(samples) // 10]


def test_two_turns_with_a_barge_in_make_the_round_trip(start_stack_call: StartStackCall) -> None:
    page, log = start_stack_call()

    def second_echo_done() -> bool:
        stopped = [i for i, e in enumerate(log.received) if e["type"] == "speech_stopped"]
        done = [i for i, e in enumerate(log.received) if e["type"] == "audio_done"]
        return len(stopped) >= 2 and bool(done) and done[-1] > stopped[-1]

    wait_for(page, second_echo_done, 20, "two turns, and the echo of the second one")
    page.page.wait_for_selector("#agent-speaking", state="hidden", timeout=10_000)
    page.page.wait_for_timeout(150)  # the tap's last batch

    snapshot = page.snapshot()
    probe = page.page.evaluate("() => window.__fullStackProbe")
    played = page.tap()
    rate = snapshot["contextRate"]
    measured: dict[str, Any] = {"context_rate": rate, "latencies_ms": snapshot["latenciesMs"]}

    # -- the stack: the emulator echoed exactly what the page sent, turn by turn. The worker
    # passes the model's errors on as `error` events, so none also means the emulator took
    # the worker's cancel and truncation after the barge-in.
    assert log.of_type("error") == [] and page.page.is_hidden("#errors-card")
    turns = expected_replies(log.uplink_pcm())
    assert len(turns) == 2, f"the emulator's VAD hears {len(turns)} turns in the page's uplink"
    for turn, seconds, hz in [
        (turns[0], MICROPHONE.first_s, MICROPHONE.first_hz),
        (turns[1], MICROPHONE.second_s, MICROPHONE.second_hz),
    ]:
        said = pcm16_to_floats(turn)  # the microphone at 24 kHz: close, not bit-exact
        assert len(said) / SAMPLE_RATE_HZ == pytest.approx(seconds, abs=0.03)
        assert zero_crossing_frequency(steady(said), SAMPLE_RATE_HZ) == pytest.approx(hz, rel=0.01)

    received = log.received
    speech_started = [i for i, e in enumerate(received) if e["type"] == "speech_started"]
    assert len(speech_started) == 2
    items = list(dict.fromkeys(e["item_id"] for e in log.of_type("audio")))
    # A barge-in before the first echo reached the page would cancel that echo unheard.
    assert len(items) == 2, "one echo per turn"
    first_item, second_item = items
    first_echo, second_echo = log.downlink_pcm(first_item), log.downlink_pcm(second_item)
    # Bit-exact: nothing lost, reordered or duplicated. The first echo is cut short by the
    # barge-in, and none of it follows speech_started; the second is whole.
    assert first_echo and turns[0].startswith(first_echo)
    assert all(
        e["item_id"] != first_item
        for e in received[speech_started[1] :]
        if e["type"] in ("audio", "audio_done")
    )
    assert second_echo == turns[1]  # and the model answers again after the truncation

    # -- barge-in: the page went silent at once and said how much of the echo was heard
    flush = snapshot["lastFlush"]
    assert flush["itemId"] == first_item
    stop_at = flush["atFrame"]
    first = playback_of(played[:stop_at])
    # The node sounded up to the render quantum the flush arrived in, not after it.
    assert stop_at - 128 - 8 <= first.end <= stop_at
    assert not any(played[stop_at : stop_at + 4_410])
    (interrupt,) = log.interrupts()
    assert interrupt["item_id"] == first_item
    lead, _ = edge_zeros(turns[0])
    heard_ms = (first.frames + lead * rate / SAMPLE_RATE_HZ) * 1000 / rate
    assert interrupt["played_ms"] == pytest.approx(heard_ms, abs=3)
    assert 0 < interrupt["played_ms"] <= bytes_to_ms(len(first_echo))
    assert interrupt["played_ms"] < bytes_to_ms(len(turns[0])) - 200, "cut mid-echo"
    assert snapshot["counters"]["interruptsSent"] == 1
    assert snapshot["counters"]["staleAudioDropped"] == 0

    # On the audio clock, from the arrival of speech_started to the node's silence.
    arrival = [e for e in probe["events"] if e["type"] == "speech_started"][1]
    offset = min(frame - n for n, frame in probe["tapBatches"])
    stop_ms = (offset + first.end - arrival["frame"]) * 1000 / rate
    measured |= {
        "played_ms": interrupt["played_ms"],
        "stop_after_speech_started_ms": round(stop_ms, 1),
        "flush_round_trip_ms": flush["delayMs"],
        "underruns_ms": [round((b - a) * 1000 / rate, 1) for a, b in first.gaps],
    }

    # -- the round trip: what the node played is what the microphone said
    second = playback_of(played[stop_at:])
    measured["underruns_ms"] += [round((b - a) * 1000 / rate, 1) for a, b in second.gaps]
    lead, trail = edge_zeros(turns[1])
    assert (second.frames + (lead + trail) * rate / SAMPLE_RATE_HZ) / rate == pytest.approx(
        len(turns[1]) / 2 / SAMPLE_RATE_HZ, abs=0.003
    )
    assert second.frames / rate == pytest.approx(MICROPHONE.second_s, abs=0.04)
    for playback, hz in [(first, MICROPHONE.first_hz), (second, MICROPHONE.second_hz)]:
        tone = steady(playback.sound)
        assert zero_crossing_frequency(tone, rate) == pytest.approx(hz, rel=0.01)
        assert db(rms(tone) / MICROPHONE.tone_rms) == pytest.approx(0, abs=1.5)
    print(f"measured: {measured}")  # shown with -s, or with the failure below

    assert -6 <= stop_ms <= 25, "playback must stop within a render quantum or so"

    # -- what the page shows
    latencies = snapshot["latenciesMs"]
    assert len(latencies) == 2
    # From the end of speech: at least the VAD's 500 ms of silence, and not seconds more.
    assert all(500 <= ms <= 3_000 for ms in latencies)
    assert page.text("#latency") == f"{math.floor(latencies[-1] + 0.5)} ms"  # JS Math.round
    users = page.page.locator("#transcript li.user .words").all_inner_texts()
    agents = page.page.locator("#transcript li.assistant .words").all_inner_texts()
    assert users == [user_transcript(len(t)) for t in turns]
    assert len(agents) == 2 and agents[-1] == reply_transcript(len(turns[1]))
