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
from worker.queue_consumer import QueueConsumer
from worker.settings import SettingsError, WorkerSettings

log = configure("voice-agent.worker")

_HEARTBEAT_S = 10


async def run(settings: WorkerSettings) -> None:
    executor = ThreadPoolExecutor(max_workers=settings.io_threads, thread_name_prefix="io")
    sqs = boto3.client(
        "sqs",
        config=Config(
            max_pool_connections=settings.io_threads,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )
    connections = ConnectionsApi(settings.connections_endpoint_url, executor, settings.io_threads)
    bridge = Bridge(settings, connections)
    consumer = QueueConsumer(
        sqs,
        settings.audio_queue_url,
        executor,
        pollers=settings.sqs_pollers,
        on_envelope=bridge.handle,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    consuming = asyncio.create_task(consumer.run(), name="queue consumer")
    heartbeat = asyncio.create_task(
        _heartbeat(Path(settings.health_file), bridge), name="heartbeat"
    )
    log.info(
        "worker started", extra={"model": settings.session.model, "pollers": settings.sqs_pollers}
    )
    await stop.wait()
    log.info("worker stopping", extra={"calls": len(bridge.calls)})
    consumer.stop()
    await bridge.shutdown()
    heartbeat.cancel()
    consuming.cancel()
    await asyncio.gather(consuming, heartbeat, return_exceptions=True)
    executor.shutdown(wait=False, cancel_futures=True)
    log.info("worker stopped")


async def _heartbeat(path: Path, bridge: Bridge) -> None:
    """Touch the file the container health check reads: the event loop is alive."""
    while True:
        try:
            path.write_text(str(len(bridge.calls)))
        except OSError:
            log.warning("cannot write heartbeat", extra={"path": str(path)})
        await asyncio.sleep(_HEARTBEAT_S)


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
