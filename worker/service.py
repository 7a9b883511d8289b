"""The worker process's life: lease slots, poll their queues, drain on SIGTERM.

Every ``lease_tick_ms`` the worker reads the slot leases, renews its own (publishing how
many calls each slot has, which the ``$connect`` authorizer places by), claims free slots
up to its share and, when another worker has too few, gives one up. A slot it holds gets
a queue consumer; a slot it gives up is handed over: its consumer stops, each call's state
is saved on its session row, then the lease is released for the next worker.

On SIGTERM (a Spot interruption's two-minute warning, a scale-in, a deploy) the worker
leaves the registry and marks its slots draining, so no new calls are placed on them and
the other workers start looking fast; it keeps serving until every call is at a turn
boundary (or ``drain_wait_ms`` passes), then hands all its slots over and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import orjson

from wire import slots
from worker.bridge import Bridge
from worker.queue_consumer import QueueConsumer
from worker.session_rows import SessionRows
from worker.settings import WorkerSettings
from worker.slot_leases import LEASE_ERRORS, LeaseLost, SlotLeases, plan_leases

log = logging.getLogger("voice-agent.worker")

# Registry entries of workers silent this long are removed by whoever sees them.
_FORGET_DEAD_AFTER_MS = 60_000
_METRIC_INTERVAL_S = 60
# A call with no frame from its caller for this long is checked on @connections.
_SILENT_CALL_S = 30
_SILENCE_CHECK_S = 10
_HEALTH_INTERVAL_S = 5
# Once draining, wait at least this many ticks of the others before handing over, so
# they are already looking fast when the slots come free.
_DRAIN_NOTICE_TICKS = 1.5


def epoch_ms() -> int:
    return int(time.time() * 1000)


class WorkerService:
    def __init__(
        self,
        settings: WorkerSettings,
        bridge: Bridge,
        sqs: Any,
        leases: SlotLeases,
        rows: SessionRows,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.bridge = bridge
        self._sqs = sqs
        self.leases = leases
        self.rows = rows
        self._executor = executor
        self.held: dict[int, QueueConsumer] = {}
        self._consumer_tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        # Slots being given up to balance the workers (in the background: the lease round
        # must go on renewing the others meanwhile).
        self._releasing: dict[int, asyncio.Task[None]] = {}
        self._others_draining = False
        self.handed_over = 0

    # --- the lease round --------------------------------------------------------------------

    async def lease_loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.lease_round()
            except LEASE_ERRORS as exc:
                log.warning("lease round failed", extra={"error": repr(exc)})
            took_ms = (time.monotonic() - started) * 1000
            if took_ms > self.settings.lease_tick_ms / 2:
                log.warning("slow lease round", extra={"ms": round(took_ms)})
            interval = (
                self.settings.lease_fast_tick_ms
                if self._others_draining and not self.draining
                else self.settings.lease_tick_ms
            )
            await asyncio.sleep(interval / 1000)

    async def lease_round(self) -> None:
        me = self.leases.worker_id
        states, alive = await self.leases.read()
        now = epoch_ms()
        self._others_draining = any(s.draining and s.live(now) and s.owner != me for s in states)
        dead = [w for w, until in alive.items() if until < now - _FORGET_DEAD_AFTER_MS]
        await self.leases.announce(now, present=not self.draining, forget=dead)
        if self.draining:
            alive.pop(me, None)
        for slot in list(self.held):
            try:
                await self.leases.renew(
                    slot,
                    now,
                    len(self.bridge.calls_on(slot)),
                    draining=self.draining or slot in self._releasing,
                )
            except LeaseLost:
                log.warning("slot lease lost", extra={"slot": slot})
                self._abandon(slot)
        if self.draining or self._releasing:
            return
        plan = plan_leases(states, alive, me, now)
        for slot in plan.claim:
            if slot not in self.held and await self.leases.claim(slot, now):
                self._serve(slot)
        for slot in plan.release:
            log.info("giving a slot up to balance the workers", extra={"slot": slot})
            await self._mark_draining(slot)
            task = asyncio.get_running_loop().create_task(
                self.hand_over([slot], self.settings.drain_wait_ms // 4)
            )
            self._releasing[slot] = task
            task.add_done_callback(functools.partial(self._released, slot))

    def _released(self, slot: int, task: asyncio.Task[None]) -> None:
        self._releasing.pop(slot, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "giving up a slot failed", extra={"slot": slot, "error": repr(task.exception())}
            )

    def _serve(self, slot: int) -> None:
        consumer = QueueConsumer(
            self._sqs,
            self.settings.queue_urls[slot],
            self._executor,
            pollers=self.settings.sqs_pollers,
            on_envelope=lambda envelope: self.bridge.handle(envelope, slot),
            wait_seconds=self.settings.sqs_wait_seconds,
        )
        self.held[slot] = consumer
        task = asyncio.get_running_loop().create_task(consumer.run(), name=f"slot {slot}")
        self._consumer_tasks.add(task)
        task.add_done_callback(self._consumer_tasks.discard)
        log.info("slot taken", extra={"slot": slot, "worker": self.leases.worker_id})

    def _abandon(self, slot: int) -> None:
        """The lease is someone else's now: stop at once; that worker resumes the calls
        from their rows (without saved state: they restart their model session)."""
        consumer = self.held.pop(slot, None)
        if consumer is not None:
            consumer.stop()
        self.bridge.hand_over_slot(slot)
        self.bridge.handed_over_slot(slot)

    async def _mark_draining(self, slot: int) -> None:
        with contextlib.suppress(LeaseLost):
            await self.leases.renew(
                slot, epoch_ms(), len(self.bridge.calls_on(slot)), draining=True
            )

    async def hand_over(self, slot_list: list[int], wait_ms: int) -> None:
        """Give these slots up. Each call is handed over as soon as it reaches a turn
        boundary (nothing of the model's reply left unsent), or at ``wait_ms`` regardless;
        its state goes on its session row, and its later messages stay in the queue (held
        back, in order) for the worker that takes the slot. Then each slot's queue is let
        go and its lease released."""
        started = time.monotonic()
        deadline = started + wait_ms / 1000
        saves: list[asyncio.Task[bool]] = []
        loop = asyncio.get_running_loop()
        late = False
        while True:
            late = late or time.monotonic() >= deadline
            calls = [c for s in slot_list for c in self.bridge.calls_on(s)]
            for call in calls:
                if late or call.at_turn_boundary:
                    state = self.bridge.hand_over(call)
                    cid = call.connection_id
                    saves.append(loop.create_task(self.rows.save_handover(cid, state)))
            if not calls:
                await self.bridge.settle()  # a call being resumed right now is one more
                if not any(self.bridge.calls_on(s) for s in slot_list):
                    break
            await asyncio.sleep(0.02)
        if late:
            log.info("drain wait over; calls handed over mid-turn")
        saved = await asyncio.gather(*saves)
        for slot in slot_list:
            consumer = self.held.pop(slot, None)
            if consumer is None:
                continue
            consumer.stop()
            held_back = await consumer.give_back()
            await self.leases.release(slot)
            self.bridge.handed_over_slot(slot)
            log.info("slot handed over", extra={"slot": slot, "messages_held_back": held_back})
        self.handed_over += len(saves)
        log.info(
            "calls handed over",
            extra={
                "calls": len(saves),
                "saved": sum(saved),
                "ms": round((time.monotonic() - started) * 1000, 1),
            },
        )

    # --- SIGTERM ----------------------------------------------------------------------------

    async def drain(self) -> None:
        self.draining = True
        drain_started = time.monotonic()
        with contextlib.suppress(*LEASE_ERRORS):
            await self.lease_round()  # leave the registry and mark the slots draining now
        notice_s = _DRAIN_NOTICE_TICKS * self.settings.lease_tick_ms / 1000
        await asyncio.sleep(max(0.0, notice_s - (time.monotonic() - drain_started)))
        remaining_ms = self.settings.drain_wait_ms - int((time.monotonic() - drain_started) * 1000)
        try:
            await self.hand_over(list(self.held), max(0, remaining_ms))
        except LEASE_ERRORS as exc:
            # The leases run out on their own; the calls resume without saved state.
            log.warning("handover failed", extra={"error": repr(exc)})
        await self.bridge.wait_closed()

    async def wait_consumers(self, timeout_s: float) -> None:
        """Let stopped consumers give back what their last long poll returned."""
        if self._consumer_tasks:
            await asyncio.wait(set(self._consumer_tasks), timeout=timeout_s)

    # --- what the worker reports ------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "worker": self.leases.worker_id,
            "calls": len(self.bridge.calls),
            "slots": sorted(self.held),
            "resumed": self.bridge.resumed,
            "resume_gaps_ms": list(self.bridge.resume_gaps_ms),
            "handed_over": self.handed_over,
            "tasks": len(asyncio.all_tasks()),
            "open_files": _open_files(),
            "draining": self.draining,
        }

    async def health_loop(self, path: Path) -> None:
        """Touch the file the container health check reads (the event loop is alive),
        with the worker's counters in it for operators and tests."""
        while True:
            try:
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(orjson.dumps(self.stats()))
                partial.replace(path)  # readers never see half a file
            except OSError:
                log.warning("cannot write heartbeat", extra={"path": str(path)})
            await asyncio.sleep(_HEALTH_INTERVAL_S)

    async def silence_loop(self) -> None:
        """Calls whose caller left without a $disconnect end within about
        ``_SILENT_CALL_S`` + ``_SILENCE_CHECK_S`` (the page streams audio all call long, so
        silence that long means the caller is gone or stuck)."""
        while True:
            await asyncio.sleep(_SILENCE_CHECK_S)
            ended = await self.bridge.end_silent_calls(_SILENT_CALL_S)
            if ended:
                log.info("calls of vanished callers ended", extra={"calls": ended})

    async def metric_loop(self) -> None:
        """ActiveCalls in CloudWatch's embedded metric format: a log line the logs agent
        turns into a metric with no API call; the service's autoscaling tracks it."""
        service = self.settings.metrics_service
        if not service:
            return
        while True:
            line = {
                "_aws": {
                    "Timestamp": epoch_ms(),
                    "CloudWatchMetrics": [
                        {
                            "Namespace": slots.METRICS_NAMESPACE,
                            "Dimensions": [[slots.METRICS_DIMENSION]],
                            "Metrics": [{"Name": slots.ACTIVE_CALLS_METRIC, "Unit": "Count"}],
                        }
                    ],
                },
                slots.METRICS_DIMENSION: service,
                slots.ACTIVE_CALLS_METRIC: len(self.bridge.calls),
            }
            sys.stdout.write(orjson.dumps(line).decode() + "\n")
            sys.stdout.flush()
            await asyncio.sleep(_METRIC_INTERVAL_S)


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1
