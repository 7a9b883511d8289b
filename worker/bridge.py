"""The worker's event loop side: one ``LiveCall`` per connection, wiring the session core
to its transports (queue in, ``@connections`` out, the Realtime socket both ways).

Calls change hands between workers (wire/slots.py): a worker giving up a slot hands each
of its calls over (the core's state goes on the session row) without a word to the
caller, and the worker that takes the slot resumes a call when its first frame arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from wire import client as proto
from wire.handover import CallHandover
from wire.queue import EnvelopeKind, QueueEnvelope
from worker.connections import ConnectionsApi, Downlink
from worker.core import BridgeSession, Command, EndSession, SendToClient, SendToModel
from worker.realtime_link import RealtimeLink
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.session_rows import SessionRow, SessionRows

log = logging.getLogger("voice-agent.worker")


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class LiveCall:
    """One call in progress: the core plus its three transports and its timer."""

    def __init__(
        self,
        bridge: Bridge,
        connection_id: str,
        *,
        slot: int = 0,
        handover: CallHandover | None = None,
        catching_up: bool = False,
    ) -> None:
        self.bridge = bridge
        self.connection_id = connection_id
        self.slot = slot
        settings = bridge.settings
        if handover is None:
            self.core = BridgeSession(
                connection_id, settings.session, settings.bridge, now_ms=monotonic_ms()
            )
        else:
            self.core = BridgeSession.resume(
                connection_id, settings.session, settings.bridge, handover, now_ms=monotonic_ms()
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
        self.last_frame_at = time.monotonic()
        # Taken over from a worker that died without handing over: the call's frames from
        # the outage (a lease and a visibility timeout long) are skipped until they are
        # fresh again. Fed to a new model session in one burst, each turn would barge in on
        # the reply to the one before; skipped, the caller gets audio_gap and a model that
        # hears what it says now.
        self.catching_up = catching_up
        self.stale_frames = 0
        # Request ids of recent envelopes: SQS delivers at least once, so a message can
        # come again (a lost delete, a visibility timeout); the model must hear it once.
        self._recent_requests: OrderedDict[str, None] = OrderedDict()
        self.apply(self.core.open())
        self.link.start()

    # --- inputs ---------------------------------------------------------------------------

    def client_frame(self, envelope: QueueEnvelope) -> None:
        self.last_frame_at = time.monotonic()
        if envelope.request_id in self._recent_requests:
            log.info(
                "duplicate delivery dropped",
                extra={"connection_id": self.connection_id, "request_id": envelope.request_id},
            )
            return
        self._recent_requests[envelope.request_id] = None
        if len(self._recent_requests) > _RECENT_REQUESTS:
            self._recent_requests.popitem(last=False)
        if self.catching_up:
            if time.time() * 1000 - envelope.received_at_ms > _STALE_AFTER_MS:
                self.stale_frames += 1
                return
            self.catching_up = False  # caught up: from here on every frame counts
            if self.stale_frames:
                log.info(
                    "stale audio skipped after a takeover",
                    extra={"connection_id": self.connection_id, "frames": self.stale_frames},
                )
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
            else:  # ReplaceModelSession: the model session is near OpenAI's 60-minute limit
                self.link.replace()
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

    def hand_over(self) -> CallHandover:
        """Stop serving this call without ending it: what the model already said is sent
        on, the model socket is closed, and the state another worker resumes from is
        returned. The caller hears silence until the call is resumed."""
        handover, commands = self.core.hand_over(monotonic_ms())
        # Stamped with wall-clock time: the reader is another process, maybe another host.
        handover = dataclasses.replace(handover, saved_at_ms=int(time.time() * 1000))
        for command in commands:
            if isinstance(command, SendToClient):
                self.downlink.send(command.payload)
        # The caller stays connected (another worker goes on) and gets what was queued.
        self._stop_serving(disconnect=False, drain=True)
        return handover

    @property
    def at_turn_boundary(self) -> bool:
        """Nothing the model says is on its way: a handover now cuts no reply."""
        return self.core.at_turn_boundary and self.downlink.backlog == 0

    def _end(self, command: EndSession) -> None:
        if self._closed:
            return
        log.info(
            "call ended", extra={"connection_id": self.connection_id, "reason": command.reason}
        )
        # A caller still connected gets what is queued (e.g. session_ended), then its
        # WebSocket is closed, which makes API Gateway send $disconnect.
        present = command.caller_present
        self._stop_serving(disconnect=present, drain=present)

    def _stop_serving(self, *, disconnect: bool, drain: bool) -> None:
        """This worker is done with the call: no more timer, forgotten by the bridge, its
        transports closed in the background."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.bridge.forget(self.connection_id)
        self.bridge.track(self._close_transports(disconnect=disconnect, drain=drain))

    async def _close_transports(self, *, disconnect: bool, drain: bool) -> None:
        await self.link.close()
        await self.downlink.close(drain=drain)
        if disconnect:
            await self.bridge.connections.disconnect(self.connection_id)


# Enough to cover a visibility timeout's worth of frames (10 s at 10 frames/s) many times.
_RECENT_REQUESTS = 1024

# Downlink messages waiting for one caller before the call is given up: ~50 s of audio at
# 100 ms per message, far beyond any network hiccup.
_MAX_DOWNLINK_BACKLOG = 500


# A frame older than this (since API Gateway received it) when a taken-over call starts is
# from the outage: a graceful handover's backlog is about a second.
_STALE_AFTER_MS = 3_000

# Connections recently ended here, so their late frames are dropped without a row read.
_RECENTLY_ENDED = 4096


class Bridge:
    """All calls of this worker, keyed by connection id."""

    def __init__(
        self,
        settings: WorkerSettings,
        connections: ConnectionsApi,
        rows: SessionRows | None = None,
    ) -> None:
        self.settings = settings
        self.connections = connections
        # Without rows (tests of one worker) a frame of an unknown call opens a fresh call.
        self.rows = rows
        self.calls: dict[str, LiveCall] = {}
        self.accepting = True
        self._closing: set[asyncio.Task[None]] = set()
        # Calls whose row is being read (a frame of a call this worker does not hold): their
        # envelopes wait here, in order, until the call is resumed or found over.
        self._resolving: dict[str, list[tuple[QueueEnvelope, int]]] = {}
        self._resolvers: dict[str, asyncio.Task[None]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        # Calls handed over from here while their slot is still ours: connection -> slot.
        self._handed_over: dict[str, int] = {}
        self.resumed = 0
        self.resume_gaps_ms: deque[int] = deque(maxlen=100)

    def handle(self, envelope: QueueEnvelope, slot: int = 0) -> bool:
        """Route one queue envelope (from ``slot``'s queue) to its call, opening or
        resuming the call if needed. False: declined, the call was handed over from here
        (the consumer keeps the message in the queue for the next worker)."""
        cid = envelope.connection_id
        if cid in self._handed_over:
            return False
        self._route(envelope, slot)
        return True

    def _route(self, envelope: QueueEnvelope, slot: int) -> None:
        cid = envelope.connection_id
        waiting = self._resolving.get(cid)
        if waiting is not None:
            waiting.append((envelope, slot))
            return
        call = self.calls.get(cid)
        if envelope.kind is EnvelopeKind.CLOSE:
            if call is not None:
                call.end("caller_disconnected")
            self._remember_ended(cid)
            return
        if call is None:
            if not self.accepting:
                return
            if envelope.kind is EnvelopeKind.FRAME and self.rows is not None:
                if cid in self._ended:
                    return  # a late frame of a call that is over
                # A frame of a call this worker does not hold: handed over by another
                # worker, or its open was lost. The row says which (and what to resume).
                self._resolve(envelope, slot, self.rows)
                return
            call = self._open(cid, slot, None, trigger=envelope.kind.value)
        if envelope.kind is EnvelopeKind.FRAME:
            call.client_frame(envelope)

    def _open(
        self,
        cid: str,
        slot: int,
        handover: CallHandover | None,
        *,
        trigger: str,
        catching_up: bool = False,
    ) -> LiveCall:
        call = LiveCall(self, cid, slot=slot, handover=handover, catching_up=catching_up)
        self.calls[cid] = call
        self._ended.pop(cid, None)
        log.info("call opened", extra={"connection_id": cid, "trigger": trigger, "slot": slot})
        return call

    def _resolve(self, envelope: QueueEnvelope, slot: int, rows: SessionRows) -> None:
        cid = envelope.connection_id
        self._resolving[cid] = [(envelope, slot)]

        async def resolve() -> None:
            row: SessionRow | None
            try:
                row = await rows.load(cid)
                found = True
            except Exception as exc:  # noqa: BLE001 - a failed read must not lose the call
                log.warning(
                    "session row not read", extra={"connection_id": cid, "error": repr(exc)}
                )
                row, found = None, False
            waiting = self._resolving.pop(cid, [])
            self._resolvers.pop(cid, None)
            if found and row is None:
                log.info("frames of a finished call dropped", extra={"connection_id": cid})
                self._remember_ended(cid)
                return
            handover = row.handover if row is not None else None
            trigger = "handover" if handover is not None else "frame"
            if not self.accepting:
                return
            # No saved state: the worker holding the call died (or its open was lost).
            self._open(cid, slot, handover, trigger=trigger, catching_up=handover is None)
            if handover is not None:
                self.resumed += 1
                # Saved -> resumed: how long the call was in nobody's hands.
                gap_ms = max(0, int(time.time() * 1000) - handover.saved_at_ms)
                self.resume_gaps_ms.append(gap_ms)
                log.info("call resumed", extra={"connection_id": cid, "gap_ms": gap_ms})
                self.track(rows.clear_handover(cid))
            for queued, queued_slot in waiting:
                self._route(queued, queued_slot)

        self._resolvers[cid] = asyncio.get_running_loop().create_task(resolve())

    async def settle(self) -> None:
        """Wait for row reads in progress (before a handover: their calls are handed too)."""
        while self._resolvers:
            await asyncio.gather(*list(self._resolvers.values()), return_exceptions=True)

    def _remember_ended(self, cid: str) -> None:
        self._ended[cid] = None
        if len(self._ended) > _RECENTLY_ENDED:
            self._ended.popitem(last=False)

    def calls_on(self, slot: int) -> list[LiveCall]:
        return [call for call in self.calls.values() if call.slot == slot]

    def hand_over(self, call: LiveCall) -> CallHandover:
        """Hand ``call`` over: its state, for its session row. Its later envelopes are
        declined until the slot changes hands (``handed_over_slot``)."""
        self._handed_over[call.connection_id] = call.slot
        return call.hand_over()

    def hand_over_slot(self, slot: int) -> list[tuple[str, CallHandover]]:
        """Hand over every call of ``slot``: their states, for the session rows."""
        return [(call.connection_id, self.hand_over(call)) for call in self.calls_on(slot)]

    def handed_over_slot(self, slot: int) -> None:
        """``slot`` is another worker's now: if it comes back here, so may its calls."""
        for cid in [c for c, s in self._handed_over.items() if s == slot]:
            del self._handed_over[cid]

    def forget(self, connection_id: str) -> None:
        self.calls.pop(connection_id, None)

    async def end_silent_calls(self, silent_for_s: float) -> int:
        """End calls whose caller has gone without a ``$disconnect`` (API Gateway delivers
        it on a best-effort basis): a call with no frame for ``silent_for_s`` is checked on
        ``@connections``; a gone caller's call ends. Returns how many ended."""
        cutoff = time.monotonic() - silent_for_s
        silent = [c for c in self.calls.values() if c.last_frame_at < cutoff]
        ended = 0
        for call in silent:
            if await self.connections.is_connected(call.connection_id):
                call.last_frame_at = time.monotonic()  # ask again after another quiet spell
            elif self.calls.get(call.connection_id) is call:
                call.end("caller_gone")
                ended += 1
        return ended

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
        await self.wait_closed()

    async def wait_closed(self, timeout: float = 10) -> None:
        """Wait for closing calls to finish closing their transports."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout)
