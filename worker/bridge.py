"""The worker's event loop side: one ``LiveCall`` per connection, wiring the session core
to its transports (queue in, ``@connections`` out, the Realtime socket both ways)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from wire import client as proto
from wire.queue import EnvelopeKind, QueueEnvelope
from worker.connections import ConnectionsApi, Downlink
from worker.core import BridgeSession, Command, EndSession, SendToClient, SendToModel
from worker.realtime_link import RealtimeLink
from worker.settings import WorkerSettings

log = logging.getLogger("voice-agent.worker")


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class LiveCall:
    """One call in progress: the core plus its three transports and its timer."""

    def __init__(self, bridge: Bridge, connection_id: str) -> None:
        self.bridge = bridge
        self.connection_id = connection_id
        settings = bridge.settings
        self.core = BridgeSession(
            connection_id, settings.session, settings.bridge, now_ms=monotonic_ms()
        )
        self.downlink = Downlink(bridge.connections, connection_id, on_gone=self._caller_gone)
        self.link = RealtimeLink(
            base_url=settings.realtime_base_url,
            model=settings.session.model,
            api_key=settings.openai_api_key,
            on_event=self._model_event,
            on_closed=self._model_closed,
            on_reconnected=self._model_reconnected,
            backoff_s=settings.model_reconnect_backoff_s,
        )
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Request ids of recent envelopes: SQS delivers at least once, so a message can
        # come again (a lost delete, a visibility timeout); the model must hear it once.
        self._recent_requests: OrderedDict[str, None] = OrderedDict()
        self.apply(self.core.open())
        self.link.start()

    # --- inputs ---------------------------------------------------------------------------

    def client_frame(self, envelope: QueueEnvelope) -> None:
        if envelope.request_id in self._recent_requests:
            log.info(
                "duplicate delivery dropped",
                extra={"connection_id": self.connection_id, "request_id": envelope.request_id},
            )
            return
        self._recent_requests[envelope.request_id] = None
        if len(self._recent_requests) > _RECENT_REQUESTS:
            self._recent_requests.popitem(last=False)
        self.apply(self.core.receive_client_frame(envelope.body, monotonic_ms()))

    def _model_event(self, event: dict[str, Any]) -> None:
        self.apply(self.core.receive_model_event(event, monotonic_ms()))

    def _model_reconnected(self) -> list[dict[str, Any]]:
        """The events a replacement model session starts with (the rest of the core's
        output, e.g. a notice to the caller, is applied as usual)."""
        commands = self.core.model_reconnected(monotonic_ms())
        self.apply([c for c in commands if not isinstance(c, SendToModel)])
        return [c.event for c in commands if isinstance(c, SendToModel)]

    def _model_closed(self, error: BaseException | None) -> None:
        log.warning(
            "model socket closed",
            extra={"connection_id": self.connection_id, "error": repr(error) if error else None},
        )
        message = "the model session ended unexpectedly"
        self.downlink.send(proto.error_event(proto.ErrorCode.MODEL_UNAVAILABLE, message))
        self.end("model_unavailable")

    def _caller_gone(self) -> None:
        self.end("caller_gone")

    def _tick(self) -> None:
        self._timer = None
        self.apply(self.core.tick(monotonic_ms()))

    # --- outputs --------------------------------------------------------------------------

    def end(self, reason: str) -> None:
        """End the call from the worker's side, telling the caller why if it is still there."""
        self.apply(self.core.end(reason, monotonic_ms()))

    def apply(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, SendToClient):
                self.downlink.send(command.payload)
            elif isinstance(command, SendToModel):
                self.link.send(command.event)
            elif isinstance(command, EndSession):
                self._end(command)
                return
        if self.downlink.backlog > _MAX_DOWNLINK_BACKLOG:
            # The caller stopped reading (API Gateway holds what it cannot deliver): end the
            # call rather than hold ever more audio for it.
            self.apply(self.core.end("client_not_reading", monotonic_ms()))
            return
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline_ms()
        if deadline is not None:
            # asyncio's clock is time.monotonic, the clock of monotonic_ms.
            self._timer = asyncio.get_running_loop().call_at(deadline / 1000, self._tick)

    def _end(self, command: EndSession) -> None:
        reason = command.reason
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.bridge.forget(self.connection_id)
        log.info("call ended", extra={"connection_id": self.connection_id, "reason": reason})
        self.bridge.track(self._close_transports(command.caller_present))

    async def _close_transports(self, caller_present: bool) -> None:
        await self.link.close()
        # A caller still connected gets what is queued (e.g. session_ended), then its
        # WebSocket is closed, which makes API Gateway send $disconnect.
        await self.downlink.close(drain=caller_present)
        if caller_present:
            await self.bridge.connections.disconnect(self.connection_id)


# Enough to cover a visibility timeout's worth of frames (10 s at 10 frames/s) many times.
_RECENT_REQUESTS = 1024

# Downlink messages waiting for one caller before the call is given up: ~50 s of audio at
# 100 ms per message, far beyond any network hiccup.
_MAX_DOWNLINK_BACKLOG = 500


class Bridge:
    """All calls of this worker, keyed by connection id."""

    def __init__(self, settings: WorkerSettings, connections: ConnectionsApi) -> None:
        self.settings = settings
        self.connections = connections
        self.calls: dict[str, LiveCall] = {}
        self.accepting = True
        self._closing: set[asyncio.Task[None]] = set()

    def handle(self, envelope: QueueEnvelope) -> None:
        """Route one queue envelope to its call (opening the call if needed)."""
        call = self.calls.get(envelope.connection_id)
        if envelope.kind is EnvelopeKind.CLOSE:
            if call is not None:
                call.end("caller_disconnected")
            return
        if call is None:
            if not self.accepting:
                return
            # A frame for a call we do not hold (its open was lost, or this worker
            # restarted) opens the session too: the caller is still there.
            call = LiveCall(self, envelope.connection_id)
            self.calls[envelope.connection_id] = call
            log.info(
                "call opened",
                extra={"connection_id": envelope.connection_id, "trigger": envelope.kind.value},
            )
        if envelope.kind is EnvelopeKind.FRAME:
            call.client_frame(envelope)

    def forget(self, connection_id: str) -> None:
        self.calls.pop(connection_id, None)

    def track(self, closing: Any) -> None:
        """Keep a reference to a closing call's task until it finishes."""
        task = asyncio.get_running_loop().create_task(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def shutdown(self, reason: str = "worker_shutdown") -> None:
        """Take no new calls, end every call (telling each caller why), wait for cleanup."""
        self.accepting = False
        for call in list(self.calls.values()):
            call.end(reason)
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=10)
