"""Bad input through the whole local stack: each gets its documented answer, the call (or,
for frame-level violations, the stack) keeps working, and no log line carries audio,
transcript text, tokens or secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.local_stack_process import RunningStack, local_stack
from tests.test_local_stack import expected_echo, silence, tone
from voice_agent.caller import call_gateway
from voice_agent.local_stack import LocalState
from wire import client as proto

LOG_FILE_NAME = "stack.log"


@pytest.fixture(scope="module")
def logged_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningStack, Path]]:
    log = tmp_path_factory.mktemp("logs") / LOG_FILE_NAME
    # DEBUG: the most the stack ever logs. Small rate limits so a flood is quick to provoke.
    env = {
        "LOCAL_STACK_STDERR": str(log),
        "CLIENT_MESSAGES_PER_SECOND": "20",
        "CLIENT_MESSAGE_BURST": "40",
    }
    with local_stack("--log-level", "DEBUG", env=env) as running:
        yield running, log


async def _events_until(ws, kind: str, timeout: float = 15) -> list[dict]:
    seen = []
    while True:
        event = orjson.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))
        seen.append(event)
        if event["type"] == kind:
            return seen


def test_binary_frames_close_with_1003_and_oversized_with_1009(logged_stack) -> None:
    stack, _ = logged_stack

    async def close_code(frame: str | bytes) -> int | None:
        async with connect(stack.ws_url, max_size=None) as ws:
            await ws.send(frame)
            try:
                await asyncio.wait_for(ws.recv(), timeout=10)
            except ConnectionClosed:
                pass
            return ws.close_code

    assert asyncio.run(close_code(b"\x00\x01binary")) == 1003
    assert asyncio.run(close_code("x" * (proto.MAX_FRAME_BYTES + 1))) == 1009


def test_a_flood_is_rate_limited_and_the_call_recovers(logged_stack) -> None:
    stack, _ = logged_stack

    async def flood() -> tuple[list[str], bytes]:
        async with connect(stack.ws_url) as ws:
            await _events_until(ws, "ready")
            for _ in range(200):  # 200 pings at once against a burst of 40
                await ws.send('{"action":"ping"}')
            events = []
            started = asyncio.get_running_loop().time()
            while True:  # everything the flood provoked, until the line is quiet for 1.5 s
                try:
                    events.append(orjson.loads(await asyncio.wait_for(ws.recv(), timeout=1.5)))
                except TimeoutError:
                    break
            flood_seconds = asyncio.get_running_loop().time() - started
            await asyncio.sleep(2.5)  # the bucket refills
            pcm = silence(100) + tone(400, 440) + silence(700)
            for seq, offset in enumerate(range(0, len(pcm), 4800)):
                await ws.send(proto.audio_action(pcm[offset : offset + 4800], seq=seq))
                await asyncio.sleep(0.06)
            audio = b""
            for event in await _events_until(ws, "audio_done"):
                if event["type"] == "audio":
                    audio += proto.decode_audio(event)
            return [e.get("code", e["type"]) for e in events], audio, flood_seconds

    kinds, audio, seconds = asyncio.run(flood())
    # The burst, plus what the bucket refilled (20/s) while the flood was arriving.
    assert 40 <= kinds.count("pong") <= 40 + 20 * seconds + 1 < 200
    # One error a second at most, however many frames were dropped.
    assert 1 <= kinds.count("rate_limited") <= seconds + 1
    assert audio == tone(400, 440)


def test_frames_after_disconnect_and_a_vanished_caller_disturb_no_one(logged_stack) -> None:
    stack, _ = logged_stack

    async def leave_mid_reply() -> None:
        async with connect(stack.ws_url) as ws:
            await _events_until(ws, "ready")
            pcm = silence(100) + tone(2000, 300) + silence(700)
            for seq, offset in enumerate(range(0, len(pcm), 4800)):
                await ws.send(proto.audio_action(pcm[offset : offset + 4800], seq=seq))
            await _events_until(ws, "audio")
        # Gone while the agent talks: posts to this connection now get 410.

    asyncio.run(leave_mid_reply())
    voice = silence(200) + tone(500, 520)
    result = asyncio.run(call_gateway(stack.ws_url, voice, pace=0))
    assert result.reply_pcm == expected_echo(voice)


def test_no_log_line_carries_audio_text_tokens_or_secrets(logged_stack) -> None:
    stack, log = logged_stack
    secret_phrase = "my card number is 4111 1111"

    async def call_with_text() -> None:
        async with connect(stack.ws_url) as ws:
            await _events_until(ws, "ready")
            await ws.send(proto.text_action(secret_phrase))
            await _events_until(ws, "audio_done")

    asyncio.run(call_with_text())
    voice = silence(200) + tone(700, 610)
    asyncio.run(call_gateway(stack.ws_url, voice, pace=0))

    text = log.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) > 20, "the stack logged too little for this check to mean anything"
    token = stack.ws_url.split("token=")[1]
    state = LocalState.load_from(Path(stack.state_dir))
    forbidden = {
        "the connect token": token,
        "the token's signature": token.split(".")[-1],
        "the signing secret": state.secret,
        "typed text": secret_phrase,
        "transcript text": "echo of",
        "the audio as sent": base64.b64encode(voice[4800:9600]).decode()[:64],
    }
    for what, value in forbidden.items():
        assert value not in text, f"{what} appears in the logs"
    # No long base64 run (audio) anywhere, whatever its alignment.
    assert not re.search(r"[A-Za-z0-9+/]{400,}", text), "something like base64 audio is logged"
    for line in lines:  # every line is one JSON object
        assert isinstance(json.loads(line), dict)
