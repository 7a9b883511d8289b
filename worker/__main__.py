"""``python -m worker``: run the bridge worker until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from botocore.config import Config

from wire.log_record import configure
from worker.bridge import Bridge
from worker.connections import ConnectionsApi
from worker.service import WorkerService
from worker.session_rows import SessionRows
from worker.settings import SettingsError, WorkerSettings
from worker.slot_leases import SlotLeases

log = configure("voice-agent.worker")


async def run(settings: WorkerSettings) -> None:
    executor = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="io")
    client_config = Config(
        max_pool_connections=settings.io_threads,
        retries={"mode": "standard", "max_attempts": 3},
    )
    sqs = boto3.client("sqs", config=client_config)
    dynamodb = boto3.client("dynamodb", config=client_config)
    connections = ConnectionsApi(settings.connections_endpoint_url, settings.io_threads)
    rows = SessionRows(dynamodb, settings.sessions_table, executor)
    bridge = Bridge(settings, connections, rows)
    leases = SlotLeases(
        dynamodb,
        settings.sessions_table,
        len(settings.queue_urls),
        settings.worker_id,
        executor,
        lease_ms=settings.lease_ms,
    )
    service = WorkerService(settings, bridge, sqs, leases, rows, executor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    background = [
        asyncio.create_task(service.lease_loop(), name="slot leases"),
        asyncio.create_task(service.health_loop(Path(settings.health_file)), name="health"),
        asyncio.create_task(service.metric_loop(), name="metrics"),
        asyncio.create_task(service.silence_loop(), name="silent calls"),
    ]
    log.info(
        "worker started",
        extra={
            "model": settings.session.model,
            "pollers": settings.sqs_pollers,
            "slots": len(settings.queue_urls),
            "worker": settings.worker_id,
        },
    )
    await stop.wait()
    log.info("worker draining", extra={"calls": len(bridge.calls), "slots": sorted(service.held)})
    await service.drain()
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    await service.wait_consumers(settings.sqs_wait_seconds + 2)
    await connections.close()
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped", extra={"handed_over": service.handed_over})


def main() -> int:
    try:
        settings = WorkerSettings.from_env()
    except SettingsError as exc:
        log.error("bad settings", extra={"error": str(exc)})
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
