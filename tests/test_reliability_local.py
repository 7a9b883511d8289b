"""Reliability through the whole local stack (``voice-agent local`` in its own process):
frames repeated and reordered on their way to the queue, a worker stopped mid-call with
its calls handed over, and a soak of many short calls that must leave nothing behind.

The Realtime emulator echoes each user turn bit-exact, so "the reply equals the expected
echo" proves no audio was lost, repeated or reordered anywhere on the path.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from websockets.asyncio.client import connect

from emulators.realtime import expected_replies
from tests.local_stack_process import RunningStack, local_stack
from tests.test_local_stack import silence, tone
from voice_agent.caller import DEFAULT_TAIL_MS, call_gateway
from wire import client as proto
from wire import slots
from wire.audio import ms_to_bytes


def expected_echo(pcm: bytes) -> bytes:
    return b"".join(expected_replies(pcm + silence(DEFAULT_TAIL_MS)))


def runtime_info(stack: RunningStack) -> dict[str, Any]:
    return json.loads((Path(stack.state_dir) / "runtime.json").read_text())


def worker_stats(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def slots_held(stack: RunningStack) -> list[list[int]]:
    held = []
    for worker in runtime_info(stack)["workers"]:
        try:
            held.append(worker_stats(worker["health_file"])["slots"])
        except (OSError, ValueError):
            held.append([])
    return held


def turns(count: int, base_hz: float, pause_ms: int = 900) -> bytes:
    pcm = silence(200)
    for k in range(count):
        pcm += tone(500, base_hz + 37 * k) + silence(pause_ms)
    return pcm


def test_frames_repeated_and_reordered_at_the_queue_are_heard_once_in_order() -> None:
    voices = [turns(3, 300 + 40 * i) for i in range(3)]
    with local_stack("--queue-chaos", "7") as stack:

        async def calls() -> list[Any]:
            return await asyncio.gather(*(call_gateway(stack.ws_url, pcm) for pcm in voices))

        results = asyncio.run(calls())
        chaos = runtime_info(stack)["queue_chaos"]
    assert chaos["repeated"] > 5 and chaos["reordered"] > 5, chaos
    for pcm, result in zip(voices, results, strict=True):
        assert [e for e in result.errors] == []
        assert result.reply_pcm == expected_echo(pcm)


@pytest.fixture()
def stack_env() -> dict[str, str]:
    # Worker health files (their counters) in a directory of the test's own.
    return {"TMPDIR": tempfile.mkdtemp(prefix="voice-agent-workers-")}


@pytest.mark.parametrize("replaced", [False, True], ids=["survivor-only", "replacement-starts"])
def test_calls_continue_bit_exact_when_a_worker_is_stopped_mid_call(
    stack_env: dict[str, str], replaced: bool
) -> None:
    """2 slots, 20 concurrent calls; one worker gets SIGTERM (as from ECS on a Spot
    interruption) in the middle: its calls are handed over to the other worker, and every
    call's echo stays bit-exact (the replayed audio covers a turn in progress).

    The documented gap: what the caller says during the handover waits in the queue and
    reaches the new model session in a burst, sooner than in real time. A caller who
    starts the next turn within about (VAD silence + handover gap) of the last one can
    therefore cut the model's reply short, as a barge-in; these callers pause 1.6 s.

    With ``replaced``, a new worker starts in place of the stopped one (as ECS does) and
    the survivor gives it a slot back mid-call: a second handover, same result."""
    calls = 20
    voices = [turns(5, 250 + 23 * i, pause_ms=1600) for i in range(calls)]
    options = ["--workers", "2", "--log-level", os.environ.get("STACK_LOG_LEVEL", "WARNING")]
    if not replaced:
        options.append("--no-respawn")
    with local_stack(*options, env=stack_env) as stack:
        wait_for(lambda: sorted(map(len, slots_held(stack))) == [1, 1], 20, "both slots leased")
        victim = runtime_info(stack)["workers"][0]
        survivor = runtime_info(stack)["workers"][1]

        async def scenario() -> list[Any]:
            running = [
                # A long settle window: one CI run saw every caller's last reply come later
                # than 20 s (not reproduced in 16 local runs); bit-exactness is what counts.
                asyncio.create_task(
                    call_gateway(
                        stack.ws_url, pcm, frame_ms=300, expected_turns=5, settle_timeout_s=45
                    )
                )
                for pcm in voices
            ]
            await asyncio.sleep(3.0)  # mid-call: a turn or so in
            os.kill(victim["pid"], signal.SIGTERM)
            return await asyncio.gather(*running)

        results = asyncio.run(scenario())
        # Health files are rewritten every 5 s: wait for the one that shows the outcome.
        wait_for(lambda: worker_stats(survivor["health_file"])["resumed"] >= 1, 8, "resumes")
        stats = worker_stats(survivor["health_file"])
        if replaced:
            replacement = runtime_info(stack)["workers"][0]
            assert replacement["pid"] != victim["pid"]
            wait_for(lambda: worker_stats(replacement["health_file"])["resumed"] >= 1, 8, "resumes")
            replacement_stats = worker_stats(replacement["health_file"])
            stats = worker_stats(survivor["health_file"])
    failures = [
        {
            "call": i,
            "errors": r.errors,
            "bytes": (len(r.reply_pcm), len(expected_echo(pcm))),
            "first_difference": _first_difference(r.reply_pcm, expected_echo(pcm)),
        }
        for i, (pcm, r) in enumerate(zip(voices, results, strict=True))
        if r.errors or r.reply_pcm != expected_echo(pcm)
    ]
    assert failures == []
    assert stats["resumed"] >= 1  # the survivor took the stopped worker's slot and calls
    if replaced:
        # The replacement got a slot back, with the calls on it.
        assert len(stats["slots"]) == len(replacement_stats["slots"]) == 1
        assert stats["handed_over"] >= 1 and replacement_stats["resumed"] >= 1
    else:
        assert stats["slots"] == [0, 1]
    gaps = stats["resume_gaps_ms"]
    latencies = sorted(ms for r in results for ms in r.latencies_ms)
    print(
        f"\nhandover: {stats['resumed']} calls resumed; gap saved->resumed ms "
        f"median {statistics.median(gaps):.0f} max {max(gaps)}; end of speech -> first "
        f"audio over all {len(latencies)} turns: median {statistics.median(latencies):.0f} "
        f"p95 {latencies[int(0.95 * len(latencies))]:.0f} max {latencies[-1]:.0f} ms"
    )


def test_calls_survive_a_worker_killed_outright(stack_env: dict[str, str]) -> None:
    """SIGKILL: no drain, no saved state. The other worker takes the slot once its lease
    runs out (3 s here; 20 s + a 5 s tick in the cloud), and a call's frames the dead worker
    had received come back after the queue's visibility timeout (10 s). The calls go on with
    a new model session; frames older than 3 s when the call is taken over (the outage's)
    are skipped and reported (``audio_gap``), so the model hears what the caller says from
    then on, as it says it, and answers it whole. A crash costs the conversation so far and
    what was said during the outage (known limit)."""
    calls, count = 10, 6
    voices = [turns(count, 250 + 23 * i, pause_ms=1600) for i in range(calls)]
    with local_stack("--workers", "2", "--no-respawn", env=stack_env) as stack:
        wait_for(lambda: sorted(map(len, slots_held(stack))) == [1, 1], 20, "both slots leased")
        victim = runtime_info(stack)["workers"][0]

        async def scenario() -> list[Any]:
            running = [
                asyncio.create_task(
                    call_gateway(
                        stack.ws_url,
                        pcm,
                        frame_ms=300,
                        expected_turns=count,
                        settle_timeout_s=12,
                    )
                )
                for pcm in voices
            ]
            await asyncio.sleep(3.0)
            os.kill(victim["pid"], signal.SIGKILL)
            return await asyncio.gather(*running)

        results = asyncio.run(scenario())
    hit = 0
    for pcm, result in zip(voices, results, strict=True):
        replies = expected_replies(pcm + silence(DEFAULT_TAIL_MS))
        codes = {e.get("code") for e in result.errors}
        assert codes <= {"audio_gap"}, result.errors
        if codes:
            hit += 1
            # The call was not dropped, and what follows the outage is heard whole.
            assert "session_ended" not in [e["type"] for e in result.events]
            # The frames of the outage are skipped (audio_gap), so the model hears what the
            # caller says after it, as it says it: the last turn comes back. Whether its
            # first frames count as the outage's depends on when the takeover lands (one CI
            # run skipped into it), so only its end is required bit-exact.
            assert result.reply_pcm[-ms_to_bytes(100) :] == replies[-1][-ms_to_bytes(100) :]
        else:
            assert result.reply_pcm == b"".join(replies)  # a call on the surviving worker
    assert hit >= 1  # the killed worker had calls


def test_a_thousand_short_calls_leave_no_call_task_socket_or_row_behind(
    stack_env: dict[str, str],
) -> None:
    """Soak: 1,000 connect / speak / hang-up cycles, ten at a time, over two workers; some
    hang up without a word, some mid-turn. Afterwards the workers hold no call, their task
    and open-file counts are where they were after a warm-up (pools full), no model
    session is open and the table holds no session row."""
    with local_stack("--workers", "2", "--max-sessions", "0", env=stack_env) as stack:
        info = runtime_info(stack)
        wait_for(lambda: sorted(map(len, slots_held(stack))) == [1, 1], 20, "both slots leased")

        async def one_call(index: int) -> None:
            async with connect(stack.ws_url, max_size=2**20) as socket:
                if index % 3 == 0:
                    return  # hangs up without a word
                await socket.send(proto.audio_action(tone(100, 400), seq=0))
                if index % 3 == 1:
                    await socket.send(proto.audio_action(silence(100), seq=1))

        async def soak(cycles: int, concurrency: int = 10) -> None:
            gate = asyncio.Semaphore(concurrency)

            async def guarded(index: int) -> None:
                async with gate:
                    await one_call(index)

            await asyncio.gather(*(guarded(i) for i in range(cycles)))

        def settled() -> list[dict[str, Any]]:
            """Once every call has ended and a fresh health file was written."""
            wait_for(
                lambda: (
                    all(worker_stats(w["health_file"])["calls"] == 0 for w in info["workers"])
                    and runtime_info(stack)["model_sessions_open"] == 0
                ),
                60,
                "every call and model session to end",
            )
            time.sleep(6)  # a health file is rewritten every 5 s
            return [worker_stats(w["health_file"]) for w in info["workers"]]

        asyncio.run(soak(100))  # warm-up: thread and connection pools fill
        warm = settled()
        started = time.monotonic()
        asyncio.run(soak(1000))
        elapsed = time.monotonic() - started
        after = settled()
        rows = session_rows(info)
        model_sessions_open = runtime_info(stack)["model_sessions_open"]
    print(
        f"\nsoak: 1000 calls in {elapsed:.1f} s; tasks warm/after "
        f"{[w['tasks'] for w in warm]}/{[a['tasks'] for a in after]}, open files "
        f"{[w['open_files'] for w in warm]}/{[a['open_files'] for a in after]}"
    )
    assert rows == []
    assert model_sessions_open == 0
    for w, a in zip(warm, after, strict=True):
        assert a["calls"] == 0
        assert a["tasks"] == w["tasks"]
        # A leak would grow with the calls (a socket each); pools may open a few more.
        assert a["open_files"] <= w["open_files"] + 4


def session_rows(info: dict[str, Any]) -> list[str]:
    client = boto3.client(
        "dynamodb",
        region_name="us-east-1",
        endpoint_url=info["moto"],
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    keys = []
    for page in client.get_paginator("scan").paginate(TableName=info["table"]):
        keys += [item["connectionId"]["S"] for item in page["Items"]]
    return [
        k
        for k in keys
        if not k.startswith(slots.SLOT_KEY_PREFIX) and k != slots.WORKER_REGISTRY_KEY
    ]


def _first_difference(a: bytes, b: bytes) -> int:
    """Where two byte strings part (for a failure message: which turn went wrong)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
