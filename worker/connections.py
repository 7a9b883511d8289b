"""Transport: posting to callers through API Gateway's ``@connections`` management API.

boto3's ``apigatewaymanagementapi`` is blocking, so posts run on the worker's I/O thread
pool, whose size is also the HTTP connection pool size: one pooled connection per thread,
none waiting on another. Each call has its own ``Downlink``: posts to one caller go out
strictly in order, and a slow caller never holds up another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

log = logging.getLogger("voice-agent.worker.connections")


class ConnectionsApi:
    """The ``@connections`` API of one stage."""

    def __init__(self, endpoint_url: str, executor: Executor, pool_size: int) -> None:
        self._executor = executor
        self._client = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint_url,
            config=Config(
                max_pool_connections=pool_size,
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=2,
                read_timeout=5,
                tcp_keepalive=True,
            ),
        )
        self._gone = self._client.exceptions.GoneException

    async def post(self, connection_id: str, data: bytes) -> bool:
        """Send one frame. False when the caller is gone (the call should end)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._post, connection_id, data)
        except self._gone:
            return False
        return True

    def _post(self, connection_id: str, data: bytes) -> None:
        self._client.post_to_connection(ConnectionId=connection_id, Data=data)

    async def is_connected(self, connection_id: str) -> bool:
        """Whether the caller's WebSocket is still open (a GET on @connections). Only a
        clear "gone" says no: an error or a throttle counts as connected, to ask again."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, lambda: self._client.get_connection(ConnectionId=connection_id)
            )
        except self._gone:
            return False
        except (ClientError, BotoCoreError):
            return True
        return True

    async def disconnect(self, connection_id: str) -> None:
        """Close the caller's WebSocket (API Gateway then sends $disconnect)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, lambda: self._client.delete_connection(ConnectionId=connection_id)
            )
        except (self._gone, ClientError, BotoCoreError):
            pass


class Downlink:
    """The ordered outbox of one caller."""

    def __init__(
        self, api: ConnectionsApi, connection_id: str, on_gone: Callable[[], None]
    ) -> None:
        self._api = api
        self._connection_id = connection_id
        self._on_gone = on_gone
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"downlink {connection_id}")
        self.posted = 0

    def send(self, payload: bytes) -> None:
        self._queue.put_nowait(payload)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def close(self, *, drain: bool) -> None:
        """Stop; with ``drain`` send what is queued first (e.g. a final session_ended)."""
        if drain:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self._task.cancel()
        try:
            await self._task
        except (asyncio.CancelledError, Exception):
            pass

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            if payload is None:
                return
            try:
                delivered = await self._api.post(self._connection_id, payload)
            except (ClientError, BotoCoreError) as exc:
                # Throttled or a transient fault after retries: this frame is lost, the
                # call goes on. Logged with ids and sizes only.
                log.warning(
                    "post to caller failed",
                    extra={
                        "connection_id": self._connection_id,
                        "error": type(exc).__name__,
                        "bytes": len(payload),
                    },
                )
                continue
            if not delivered:
                self._on_gone()
                return
            self.posted += 1
