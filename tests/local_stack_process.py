"""Run ``voice-agent local`` as a user does, in its own process, and read its printed URLs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    state_dir: str
    page_url: str
    ws_url: str
    connections_url: str
    realtime_url: str
    lines: list[str]


@contextmanager
def local_stack(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> Iterator[RunningStack]:
    state_dir = tempfile.mkdtemp(prefix="voice-agent-state-")
    environment = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VOICE_AGENT_STATE_DIR": state_dir,
        **(env or {}),
    }
    environment.pop("OPENAI_API_KEY", None)  # the emulator, never the real service
    # LOCAL_STACK_STDERR=path keeps the stack's logs (JSON lines) for debugging a failure.
    stderr = open(environment.get("LOCAL_STACK_STDERR", os.devnull), "a")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "voice_agent.cli", "local", "--port", "0", *args],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while not any(line.startswith("Press Ctrl-C") for line in lines):
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"voice-agent local exited early: {lines}")
        lines.append(line.rstrip("\n"))
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"voice-agent local did not come up: {lines}")
    text = "\n".join(lines)
    stack = RunningStack(
        process=process,
        state_dir=state_dir,
        page_url=_find(r"Page:\s+(http://\S+)", text),
        ws_url=_find(r"WebSocket:\s+(ws://\S+)", text),
        connections_url=_find(r"@connections endpoint:\s+(http://\S+)", text),
        realtime_url=_find(r"emulator: (ws://[^)\s]+)", text),
        lines=lines,
    )
    try:
        yield stack
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise AssertionError(f"{pattern!r} not in the local stack's output:\n{text}")
    return match.group(1)
