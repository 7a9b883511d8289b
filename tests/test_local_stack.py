"""The whole local stack, started as the README starts it, called as a user calls it.

Production handlers and worker, moto, the API Gateway emulator and the Realtime emulator:
the emulator's "model" echoes each user turn bit-exact, so equality of what came back
with what was said proves nothing was lost, reordered or duplicated on the whole path.
"""

from __future__ import annotations

import array
import asyncio
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from emulators.realtime import expected_replies
from tests.local_stack_process import REPO, RunningStack, local_stack
from voice_agent.caller import DEFAULT_TAIL_MS, call_gateway
from voice_agent.wav import read_pcm24k, write_pcm24k
from wire import client as proto
from wire.audio import ms_to_bytes


@pytest.fixture(scope="module")
def stack() -> Iterator[RunningStack]:
    with local_stack() as running:
        yield running


def tone(ms: int, hz: float, amplitude: int = 8000) -> bytes:
    samples = (int(amplitude * math.sin(2 * math.pi * hz * i / 24_000)) for i in range(24 * ms))
    return array.array("h", samples).tobytes()


def silence(ms: int) -> bytes:
    return bytes(ms_to_bytes(ms))


# Three turns; the gaps inside the second (300 ms) are shorter than the VAD's 500 ms, so it
# stays one turn, as a pause between words does.
THREE_TURNS = (
    silence(300) + tone(700, 440) + silence(1200)
    + tone(300, 660) + silence(300) + tone(400, 520) + silence(1200)
    + tone(500, 300)
)  # fmt: skip


def expected_echo(pcm: bytes) -> bytes:
    return b"".join(expected_replies(pcm + silence(DEFAULT_TAIL_MS)))


def test_the_printed_urls_serve_the_page_and_the_websocket(stack: RunningStack) -> None:
    assert stack.page_url.startswith("http://") and "?ws=" in stack.page_url
    assert stack.ws_url.startswith("ws://")
    with urllib.request.urlopen(stack.page_url, timeout=5) as response:
        assert response.status == 200
        assert b"<html" in response.read().lower()


def test_each_turn_comes_back_bit_exact(stack: RunningStack) -> None:
    result = asyncio.run(call_gateway(stack.ws_url, THREE_TURNS, pace=1.0))
    assert result.errors == []
    assert len(result.turns) == 3
    assert result.reply_pcm == expected_echo(THREE_TURNS)
    # End of speech -> first audio includes the VAD's 500 ms of silence.
    assert all(500 <= latency < 3000 for latency in result.latencies_ms)


def test_audio_sent_faster_than_real_time_arrives_whole_and_in_order(
    stack: RunningStack,
) -> None:
    # One turn only: sent at full speed, a second turn would arrive while the agent still
    # answers the first and, as with a person, interrupt it.
    # 100 ms frames: 37 messages, within the per-caller burst (100); 20 ms frames (185
    # messages in well under a second) would rightly meet the rate limit.
    one_turn = silence(100) + b"".join(tone(90, 300 + 20 * k) for k in range(40))
    result = asyncio.run(call_gateway(stack.ws_url, one_turn, pace=0, frame_ms=100))
    assert result.errors == []
    assert result.reply_pcm == expected_echo(one_turn)


def test_concurrent_calls_do_not_mix(stack: RunningStack) -> None:
    voices = [silence(200) + tone(500 + 100 * i, 300 + 90 * i) for i in range(4)]

    async def calls() -> list[bytes]:
        results = await asyncio.gather(*(call_gateway(stack.ws_url, pcm, pace=0) for pcm in voices))
        return [r.reply_pcm for r in results]

    replies = asyncio.run(calls())
    assert replies == [expected_echo(pcm) for pcm in voices]


def test_a_spoken_sentence_comes_back_bit_exact(stack: RunningStack, tmp_path: Path) -> None:
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing in CI (.ci/run installs it)")
        pytest.skip("espeak-ng is not installed")
    wav = tmp_path / "speech.wav"
    subprocess.run(
        [
            espeak,
            "-w",
            str(wav),
            "Hello, can you hear me? I would like a table for two at eight tonight.",
        ],
        check=True,
    )
    pcm = read_pcm24k(wav)
    result = asyncio.run(call_gateway(stack.ws_url, pcm, pace=1.0))
    assert result.errors == []
    assert result.turns and result.reply_pcm == expected_echo(pcm)


def test_bad_frames_get_error_events_and_the_call_goes_on(stack: RunningStack) -> None:
    bad = [
        "not json",
        "[1]",
        '{"no":"action"}',
        '{"action":"sing"}',
        '{"action":"audio","audio":"%%%"}',
        '{"action":"audio","audio":"AA=="}',
    ]

    async def session() -> tuple[list[str], bytes]:
        codes: list[str] = []
        audio = b""
        async with connect(stack.ws_url) as ws:
            for frame in bad:
                await ws.send(frame)
            pcm = silence(100) + tone(600, 440) + silence(700)
            for offset in range(0, len(pcm), 4800):
                await ws.send(proto.audio_action(pcm[offset : offset + 4800]))
            while True:
                event = orjson.loads(await asyncio.wait_for(ws.recv(), timeout=15))
                if event["type"] == "error":
                    codes.append(event["code"])
                elif event["type"] == "audio":
                    audio += proto.decode_audio(event)
                elif event["type"] == "audio_done":
                    return codes, audio

    codes, audio = asyncio.run(session())
    assert codes == [
        "invalid_json",
        "not_an_object",
        "missing_action",
        "unknown_action",
        "invalid_audio",
        "invalid_audio",
    ]
    assert audio == tone(600, 440)


def test_voice_agent_call_command_saves_the_reply(stack: RunningStack, tmp_path: Path) -> None:
    wav_in, wav_out = tmp_path / "in.wav", tmp_path / "out.wav"
    pcm = silence(200) + tone(600, 500) + silence(200)
    write_pcm24k(wav_in, pcm)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voice_agent.cli",
            "call",
            stack.ws_url,
            "--wav",
            str(wav_in),
            "--out",
            str(wav_out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "first audio" in done.stdout and "median" in done.stdout
    assert read_pcm24k(wav_out) == expected_echo(pcm)


def test_voice_agent_call_explains_a_bad_wav(tmp_path: Path) -> None:
    not_wav = tmp_path / "x.wav"
    not_wav.write_text("hello")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "voice_agent.cli",
            "call",
            "ws://127.0.0.1:9/x",
            "--wav",
            str(not_wav),
            "--out",
            str(tmp_path / "o.wav"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "not a PCM WAV" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_the_stack_and_its_worker() -> None:
    with local_stack() as running:
        children = subprocess.run(
            ["pgrep", "-P", str(running.process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert children, "the worker process was not started"
        running.process.send_signal(signal.SIGINT)
        assert running.process.wait(timeout=20) == 0
        assert running.process.stdout is not None
        assert "stopped" in running.process.stdout.read()
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_connects_without_a_valid_token_are_refused_at_the_handshake(
    stack: RunningStack,
) -> None:
    base = stack.ws_url.split("?")[0]

    async def status(url: str) -> int:
        try:
            async with connect(url):
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    assert asyncio.run(status(base)) == 401
    assert asyncio.run(status(base + "?token=not.a.token")) == 403
    assert asyncio.run(status(stack.ws_url)) == 101


def test_voice_agent_token_mints_a_url_that_connects(stack: RunningStack) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "token", "--local", "--ttl", "60"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "VOICE_AGENT_STATE_DIR": stack.state_dir},
    )
    assert done.returncode == 0, done.stderr
    url = re.search(r"WebSocket: (ws://\S+)", done.stdout).group(1)
    assert url != stack.ws_url and "token=" in url

    async def ready() -> str:
        async with connect(url) as ws:
            return orjson.loads(await asyncio.wait_for(ws.recv(), timeout=10))["type"]

    assert asyncio.run(ready()) == "ready"


def test_the_lean_sqs_route_carries_a_call_bit_exact() -> None:
    # $default as API Gateway's SQS integration: no Lambda per frame, same queue message.
    with local_stack("--default-route", "sqs") as lean:
        result = asyncio.run(call_gateway(lean.ws_url, THREE_TURNS, pace=1.0))
    assert result.errors == []
    assert result.reply_pcm == expected_echo(THREE_TURNS)
