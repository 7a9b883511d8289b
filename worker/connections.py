"""Transport: posting to callers through API Gateway's ``@connections`` management API.

Posts go out on the event loop with aiohttp, signed with SigV4 by botocore's signer (the
same signature boto3's ``apigatewaymanagementapi`` client makes; a test compares the two).
boto3's client is blocking: every post cost a hop to a thread and ~1.75 ms of CPU in its
request machinery, the largest share of the worker's CPU (docs/performance.md); this costs
well under half that. Credentials come from boto3's chain (the ECS task role, refreshed
before they expire). Each call has its own ``Downlink``: posts to one caller go out
strictly in order, and a slow caller never holds up another.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import aiohttp
import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

log = logging.getLogger("voice-agent.worker.connections")

# Retried statuses (throttling, transient faults) and the pauses before each retry.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_RETRY_PAUSES_S = (0.05, 0.25)
_GONE = 410
_TIMEOUT = aiohttp.ClientTimeout(total=5, sock_connect=2)


class PostFailed(Exception):
    """A request failed after its retries (not because the caller is gone)."""


class ConnectionsApi:
    """The ``@connections`` API of one stage."""

    def __init__(self, endpoint_url: str, pool_size: int, *, region: str | None = None) -> None:
        self._endpoint = endpoint_url.rstrip("/")
        self._pool_size = pool_size
        self._region = region or _region_of(self._endpoint)
        self._credentials = boto3.Session().get_credentials()
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=60),
                timeout=_TIMEOUT,
                skip_auto_headers=("User-Agent",),
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def url(self, connection_id: str) -> str:
        # Percent-encoded as botocore encodes a URI label ('=' in ids becomes %3D).
        return f"{self._endpoint}/@connections/{quote(connection_id, safe='-._~')}"

    def signed_request(self, method: str, connection_id: str, data: bytes = b"") -> AWSRequest:
        request = AWSRequest(method=method, url=self.url(connection_id), data=data)
        if self._credentials is not None:
            SigV4Auth(
                self._credentials.get_frozen_credentials(), "execute-api", self._region
            ).add_auth(request)
        return request

    async def _send(self, method: str, connection_id: str, data: bytes = b"") -> int:
        """The response status; retried statuses are retried, then raise PostFailed."""
        error: BaseException | None = None
        status = 0
        for attempt in range(len(_RETRY_PAUSES_S) + 1):
            request = self.signed_request(method, connection_id, data)  # fresh date each try
            try:
                async with self._session().request(
                    method, request.url, data=data or None, headers=dict(request.headers.items())
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = 0, exc
            else:
                error = None
                if status not in _RETRY_STATUSES:
                    return status
            if attempt < len(_RETRY_PAUSES_S):
                await asyncio.sleep(_RETRY_PAUSES_S[attempt])
        raise PostFailed(f"{method} @connections: {error!r}" if error else f"status {status}")

    async def post(self, connection_id: str, data: bytes) -> bool:
        """Send one frame. False when the caller is gone (the call should end)."""
        status = await self._send("POST", connection_id, data)
        if status == _GONE:
            return False
        if status >= 300:
            raise PostFailed(f"status {status}")
        return True

    async def is_connected(self, connection_id: str) -> bool:
        """Whether the caller's WebSocket is still open (a GET on @connections). Only a
        clear "gone" says no: an error or a throttle counts as connected, to ask again."""
        try:
            return await self._send("GET", connection_id) != _GONE
        except PostFailed:
            return True

    async def disconnect(self, connection_id: str) -> None:
        """Close the caller's WebSocket (API Gateway then sends $disconnect)."""
        try:
            await self._send("DELETE", connection_id)
        except PostFailed:
            pass


def _region_of(endpoint_url: str) -> str:
    """``https://{api}.execute-api.{region}.amazonaws.com/{stage}`` names its region; a
    local endpoint does not, and the environment's region is used."""
    host = urlsplit(endpoint_url).hostname or ""
    parts = host.split(".")
    if "execute-api" in parts:
        index = parts.index("execute-api")
        if index + 1 < len(parts):
            return parts[index + 1]
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


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
            except PostFailed as exc:
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
