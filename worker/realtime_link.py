"""Transport: the WebSocket to the OpenAI Realtime API (or Azure OpenAI, or the emulator).

Events sent before the socket is open wait in order and go out first thing, so the
session core never has to know whether the model is connected yet. A socket that drops
or fails is replaced with backoff; each replacement first sends what ``on_reconnected``
returns (the session configuration and the conversation so far), then the waiting events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from wire import realtime as rt

log = logging.getLogger("voice-agent.worker.realtime")

# Realtime frames can be large (a full response's audio in one delta is allowed), so no
# size cap on what we read; outbound appends are at most 16 KB of PCM each.
_MAX_MESSAGE_BYTES = None
_OPEN_TIMEOUT_S = 10
# Pauses before each reconnect attempt; after the last one the call is given up.
RECONNECT_BACKOFF_S = (0.0, 0.25, 1.0, 2.0, 4.0)  # a drop is retried at once


class RealtimeLink:
    """One model session's socket: an ordered outbox and a reader that hands events on."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str,
        on_event: Callable[[dict[str, Any]], None],
        on_closed: Callable[[BaseException | None], None],
        on_reconnected: Callable[[], list[dict[str, Any]]] = list,
        backoff_s: tuple[float, ...] = RECONNECT_BACKOFF_S,
    ) -> None:
        self._url = rt.connect_url(base_url, model)
        self._headers = rt.auth_headers(api_key)
        self._on_event = on_event
        self._on_closed = on_closed
        self._on_reconnected = on_reconnected
        self._backoff_s = backoff_s
        self.reconnects = 0
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"realtime {self._url}")

    def send(self, event: dict[str, Any]) -> None:
        if not self._closing:
            self._outbox.put_nowait(orjson.dumps(event))

    async def close(self) -> None:
        """Close on purpose: the on_closed callback is not called."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        error: BaseException | None = None
        failures = 0
        connected_before = False
        while True:
            try:
                async with connect(
                    self._url,
                    additional_headers=self._headers,
                    max_size=_MAX_MESSAGE_BYTES,
                    compression=None,  # audio does not compress; deflate only costs CPU
                    open_timeout=_OPEN_TIMEOUT_S,
                ) as socket:
                    failures = 0
                    if connected_before:
                        self.reconnects += 1
                        log.info("model socket reconnected", extra={"reconnects": self.reconnects})
                        for event in self._on_reconnected():
                            await socket.send(orjson.dumps(event).decode())
                    connected_before = True
                    writer = asyncio.create_task(self._write(socket))
                    try:
                        await self._read(socket)
                    finally:
                        writer.cancel()
                error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure of the socket is retried
                error = exc
            if self._closing:
                return
            if failures >= len(self._backoff_s):
                break
            log.warning(
                "model socket lost; reconnecting",
                extra={"attempt": failures + 1, "error": repr(error) if error else None},
            )
            await asyncio.sleep(self._backoff_s[failures])
            failures += 1
        self._on_closed(error)

    async def _write(self, socket: ClientConnection) -> None:
        while True:
            data = await self._outbox.get()
            if data is None:
                return
            # Text frames: the Realtime API speaks JSON text.
            await socket.send(data.decode())

    async def _read(self, socket: ClientConnection) -> None:
        async for message in socket:
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                log.warning("model sent a frame that is not JSON", extra={"bytes": len(message)})
                continue
            if isinstance(event, dict):
                self._on_event(event)
