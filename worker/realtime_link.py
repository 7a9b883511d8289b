"""Transport: the WebSocket to the OpenAI Realtime API (or Azure OpenAI, or the emulator).

Events sent before the first socket is open wait in order and go out first thing, so the
session core never has to know whether the model is connected yet.

A socket that drops or fails is replaced with backoff; ``replace`` swaps a healthy one on
purpose (OpenAI ends a session at 60 minutes). Either way the new socket is a new model
session and starts with what ``on_reconnected`` returns: the core's whole restore (the
session configuration, the conversation so far, the uplink audio the old session had not
yet made a turn of). Events still waiting from before that call are dropped, not sent: the
replayed audio already contains the waiting appends, and cancels or truncates name items
of the old session. Everything sent after ``on_reconnected`` returns goes out after the
restore, in order.
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
# How long a replaced or abandoned socket may take to close before it is left to drop.
_CLOSE_TIMEOUT_S = 2
# Pauses before each reconnect attempt; after the last one the call is given up.
RECONNECT_BACKOFF_S = (0.0, 0.25, 1.0, 2.0, 4.0)  # a drop is retried at once


class RealtimeLink:
    """The call's model socket: an ordered outbox, a reader that hands events on, and the
    replacement of the socket (and so of the model session) when it is lost or too old."""

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
        self.reconnects = 0  # sockets lost and replaced
        self.replacements = 0  # sockets replaced on purpose (``replace``)
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # The socket whose events reach the core; None while there is none, and from the
        # moment a replacement is asked for.
        self._current: ClientConnection | None = None
        self._replace_requested = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"realtime {self._url}")

    def send(self, event: dict[str, Any]) -> None:
        if not self._closing:
            self._outbox.put_nowait(orjson.dumps(event))

    def replace(self) -> None:
        """Start a new model session now: the current socket is closed (no on_closed, no
        backoff), a new one opened, and ``on_reconnected`` called for it, as after a drop.

        The old socket is closed before the new one is opened. Its events stop reaching
        the core at once, so the state the core restores from is the state it decided to
        replace in: nothing the old session does afterwards (a turn it commits, a reply
        it starts) can be lost between the two. The cost is the time to connect, paid
        only by audio that arrives in that window: it waits in the replay and is heard.
        """
        if self._closing:
            return
        self._current = None
        self._replace_requested.set()

    async def close(self) -> None:
        """Close on purpose: the on_closed callback is not called."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._closers:
            await asyncio.wait(set(self._closers), timeout=_CLOSE_TIMEOUT_S)

    async def _run(self) -> None:
        error: BaseException | None = None
        failures = 0
        sessions = 0
        lost = False
        while True:
            replaced = False
            try:
                socket = await connect(
                    self._url,
                    additional_headers=self._headers,
                    max_size=_MAX_MESSAGE_BYTES,
                    compression=None,  # audio does not compress; deflate only costs CPU
                    open_timeout=_OPEN_TIMEOUT_S,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried
                error = exc
            else:
                failures = 0
                if lost:
                    lost = False
                    self.reconnects += 1
                    log.info("model socket reconnected", extra={"reconnects": self.reconnects})
                try:
                    if sessions or self._replace_requested.is_set():
                        await self._start_new_session(socket)
                    sessions += 1
                    replaced = await self._serve(socket)
                    error = None
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure of the socket is retried
                    error = exc
                finally:
                    self._current = None
                    self._close_in_background(socket)
            if self._closing:
                return
            if replaced:
                self.replacements += 1
                log.info("model session replaced", extra={"replacements": self.replacements})
                continue  # on purpose: no backoff, not a failure
            lost = sessions > 0
            if failures >= len(self._backoff_s):
                break
            log.warning(
                "model socket lost; reconnecting",
                extra={"attempt": failures + 1, "error": repr(error) if error else None},
            )
            await asyncio.sleep(self._backoff_s[failures])
            failures += 1
        self._on_closed(error)

    async def _start_new_session(self, socket: ClientConnection) -> None:
        """Send the core's restore first; what waited for the old session is dropped."""
        # No await between dropping the waiting events and asking for the restore: nothing
        # the core sends can fall in between and be lost.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._replace_requested.clear()
        events = self._on_reconnected()
        for event in events:
            await socket.send(orjson.dumps(event).decode())

    async def _serve(self, socket: ClientConnection) -> bool:
        """Relay on ``socket`` until it closes (False) or ``replace`` is called (True)."""
        self._current = socket
        reader = asyncio.create_task(self._read(socket))
        writer = asyncio.create_task(self._write(socket))
        replacing = asyncio.create_task(self._replace_requested.wait())
        try:
            done, _ = await asyncio.wait({reader, replacing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, replacing):
                task.cancel()
        if replacing in done:
            return True
        reader.result()  # the socket's failure, if it failed, is the reason to reconnect
        return False

    def _close_in_background(self, socket: ClientConnection) -> None:
        # The next socket need not wait for this one's closing handshake.
        closer = asyncio.get_running_loop().create_task(self._close_quietly(socket))
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    @staticmethod
    async def _close_quietly(socket: ClientConnection) -> None:
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await socket.close()
        except Exception:  # noqa: BLE001 - it is being abandoned either way
            socket.transport.abort()

    async def _write(self, socket: ClientConnection) -> None:
        while True:
            data = await self._outbox.get()
            if data is None:
                return
            # Text frames: the Realtime API speaks JSON text.
            await socket.send(data.decode())

    async def _read(self, socket: ClientConnection) -> None:
        async for message in socket:
            if socket is not self._current:
                return  # replaced: the old session's events must not reach the core
            try:
                event = orjson.loads(message)
            except orjson.JSONDecodeError:
                log.warning("model sent a frame that is not JSON", extra={"bytes": len(message)})
                continue
            if isinstance(event, dict):
                self._on_event(event)
