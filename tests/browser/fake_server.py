"""A stand-in for a voice-agent stack: the server side of wire/client.py, scripted by tests.

It serves ``static/`` over HTTP (at ``/`` and under a sub-path, as a static host might) and
accepts the page's WebSocket at ``/ws``. Every frame the page sends goes through the one
protocol parser, ``wire.client.parse_client_frame``, exactly as the real server's does; tests
read what arrived and send server events built by ``wire.client`` from their own thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import WSMsgType, web

from tests.browser.audio_analysis import tone_pcm16
from wire.audio import BYTES_PER_MS
from wire.client import (
    AudioIn,
    ClientMessage,
    InterruptIn,
    ProtocolError,
    TextIn,
    audio_event,
    error_event,
    parse_client_frame,
    ready_event,
)

SUBPATH = "hosted/under/a/path/"  # the page must not assume it lives at the site's root
READY = ready_event(model="fake-model", voice="fake-voice")

T = TypeVar("T")


def agent_audio(item_id: str, seconds: float, chunk_bytes: int = 4_800) -> list[bytes]:
    """``audio`` events of a 600 Hz tone at 0.4 of full scale, 100 ms each by default (the
    worker's default chunk)."""
    pcm = tone_pcm16(600, seconds=seconds, amplitude=0.4)
    return [audio_event(pcm[i : i + chunk_bytes], item_id) for i in range(0, len(pcm), chunk_bytes)]


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Polls ``condition`` until it returns something truthy; fails the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class PageConnection:
    """One WebSocket from the page, seen from the server: what it sent, and a way to answer."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, ws: web.WebSocketResponse, query: dict[str, str]
    ) -> None:
        self._loop = loop
        self._ws = ws
        self.query = query
        self.messages: list[ClientMessage] = []
        self.frame_lengths: list[int] = []  # characters of every text frame, in order
        self.rejected: list[ProtocolError] = []
        self.binary_frames = 0
        self.closed = threading.Event()

    def receive(self, frame: str) -> ProtocolError | None:
        self.frame_lengths.append(len(frame))
        try:
            self.messages.append(parse_client_frame(frame))
        except ProtocolError as exc:
            self.rejected.append(exc)
            return exc
        return None

    def send(self, *events: bytes) -> None:
        """Sends server events (``wire.client`` builds them) as text frames, in order."""

        async def send_all() -> None:
            for event in events:
                await self._ws.send_str(event.decode())

        asyncio.run_coroutine_threadsafe(send_all(), self._loop).result(timeout=5)

    @property
    def audio(self) -> list[AudioIn]:
        return [m for m in self.messages if isinstance(m, AudioIn)]

    @property
    def interrupts(self) -> list[InterruptIn]:
        return [m for m in self.messages if isinstance(m, InterruptIn)]

    @property
    def texts(self) -> list[TextIn]:
        return [m for m in self.messages if isinstance(m, TextIn)]

    def uplink_pcm(self) -> bytes:
        return b"".join(m.pcm for m in self.audio)

    def uplink_ms(self) -> float:
        return sum(len(m.pcm) for m in self.audio) / BYTES_PER_MS

    def wait_for_uplink_ms(self, ms: float, timeout: float = 10) -> None:
        wait_until(lambda: self.uplink_ms() >= ms, timeout, f"{ms} ms of uplink audio")

    def wait_for_interrupt(self, timeout: float = 5) -> InterruptIn:
        return wait_until(lambda: next(iter(self.interrupts), None), timeout, "an interrupt")


class FakeVoiceServer:
    """Runs on its own thread and event loop, so sync Playwright can drive the page meanwhile."""

    def __init__(self, static_dir: Path) -> None:
        self.static_dir = static_dir.resolve()
        self.connections: list[PageConnection] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def connection_after(self, count: int, timeout: float = 10) -> PageConnection:
        """The connection that follows the first ``count`` ones, once the page has opened it."""
        return wait_until(
            lambda: self.connections[count] if len(self.connections) > count else None,
            timeout,
            "the page's WebSocket",
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/{path:.*}", self._static_file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = PageConnection(self._loop, ws, dict(request.query))
        self.connections.append(connection)
        await ws.send_str(READY.decode())  # as the worker does once the model session is up
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    problem = connection.receive(message.data)
                    if problem is not None:
                        await ws.send_str(error_event(problem.code, problem.message).decode())
                elif message.type == WSMsgType.BINARY:
                    connection.binary_frames += 1  # API Gateway would close with 1003
        finally:
            connection.closed.set()
        return ws

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        relative = request.match_info["path"]
        if relative.startswith(SUBPATH):
            relative = relative[len(SUBPATH) :]
        path = (self.static_dir / (relative or "index.html")).resolve()
        if not path.is_relative_to(self.static_dir) or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})
