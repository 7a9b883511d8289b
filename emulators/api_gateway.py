"""A local API Gateway WebSocket API: the stage, its ``@connections`` API and the page, on one port.

It calls the production Lambda handlers (plain ``handler(event, context)`` callables) with
events shaped as API Gateway sends them, so the same code runs locally and on AWS. What it
reproduces, and where each fact comes from:

- Events (``$connect`` / ``MESSAGE`` / ``$disconnect``): field names and formats follow
  events captured from real APIs (aws/aws-lambda-go ``events/testdata/apigw-websocket-*``,
  aws-lambda-runtime-interface-emulator issue 25). Ids are 16-character URL-safe base64
  strings ending in ``=`` (``"R1kmxc2VNjMCFIA="``); ``requestTime`` is ``20/Jan/2024:11:55:08
  +0000``; epochs are milliseconds.
- ``$connect`` runs before the upgrade completes; a non-2xx ``statusCode`` fails the
  handshake with that status, a handler exception with 502, and no ``$disconnect`` follows
  (AWS guide "$connect and $disconnect routes"; wscat transcripts of real APIs).
- Route selection on ``$request.body.action``; non-JSON bodies go to ``$default`` (AWS guide
  "WebSocket APIs overview").
- A message handler that raises leaves the connection open and the client receives exactly
  ``{"message": "Internal server error", "connectionId":"…", "requestId":"…"}``; with no
  matching route and no ``$default``, ``{"message": "Forbidden", …}`` (wscat transcripts).
- Binary frames from the client close the connection with 1003 (AWS guide "Binary media
  types for WebSocket APIs"); frames over 32 KB close it with 1009 (AWS quotas table: frame
  32 KB, message payload 128 KB, idle timeout 10 minutes, connection duration 2 hours,
  integration timeout 29 s, Lambda authorizer result 8 KB).
- ``@connections`` (botocore's ``apigatewaymanagementapi`` 2018-11-29 model): POST 200,
  GET 200 with ``connectedAt`` / ``identity`` / ``lastActiveAt`` (ISO 8601), DELETE 204;
  errors carry ``x-amzn-ErrorType`` so boto3 raises the modelled exception: GoneException
  410, PayloadTooLargeException 413 (Data max 131072 bytes), LimitExceededException 429
  ("the WebSocket client side buffer is full"), ForbiddenException 403.
- REQUEST authorizer on ``$connect`` (AWS guide "Lambda REQUEST authorizers" for WebSocket
  APIs): ``methodArn`` ends in ``/$connect``; missing identity sources → 401 without calling
  it; an ``Unauthorized`` error → 401; a Deny (or no Allow) → 403; other failures → 500.
  ``principalId`` and the ``context`` values reach every later event as
  ``requestContext.authorizer``.

Where AWS behaviour is not documented the choice is stated where it is made (close codes of
server-side closes, a slow client, malformed ``$connect`` results).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from wire.client import MAX_FRAME_BYTES

log = logging.getLogger("voice-agent.emulators.api_gateway")

LambdaHandler = Callable[[dict[str, Any], Any], Any]
"""A Lambda-style handler: ``handler(event, context) -> response``, blocking."""

CONNECT = "$connect"
DISCONNECT = "$disconnect"
DEFAULT = "$default"
_RESERVED_ROUTES = frozenset({CONNECT, DISCONNECT})

# PostToConnection ``Data`` is capped at 128 KB (botocore model: ``"max": 131072``).
MAX_POST_BYTES = 128 * 1024
# A Lambda authorizer's result (policy + context) may be at most 8 KB.
MAX_AUTHORIZER_RESULT_BYTES = 8 * 1024

# Close codes (RFC 6455) and the reasons this emulator gives. AWS documents 1003 and 1009;
# for server-side closes it documents none, so: DELETE → 1000, idle/max duration/shutdown
# → 1001 "Going away", a stalled client → dropped without a close frame (1006).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_MESSAGE_TOO_BIG = 1009

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Hop-by-hop headers that API Gateway's authorizer sees but does not pass to $connect.
_HOP_BY_HOP = frozenset({"connection", "upgrade"})


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Timing and buffering limits. Defaults are API Gateway's; tests shrink them."""

    idle_timeout_s: float = 600.0  # no data message in either direction for 10 minutes
    max_connection_s: float = 7200.0  # every connection ends after 2 hours
    integration_timeout_s: float = 29.0  # a handler still running after 29 s has failed
    # Frames waiting for one client. When full, POSTs get 429 LimitExceededException, so a
    # client that stops reading never blocks the poster or other clients.
    send_queue_frames: int = 256
    # One frame that cannot be written for this long means the client is stuck: dropped.
    stalled_send_timeout_s: float = 10.0
    # How long a server-side close waits for the client's close frame.
    close_handshake_timeout_s: float = 2.0
    # Client messages read but not yet handled; when full, reading pauses (TCP backpressure).
    inbound_queue_messages: int = 256


@dataclass(slots=True)
class GatewayCounters:
    """Running totals, for leak checks and for asserting what a test provoked."""

    connections_opened: int = 0
    connections_closed: int = 0  # $disconnect events sent (one per opened connection)
    connects_rejected: int = 0  # handshakes refused by the authorizer or $connect
    invocations: Counter[str] = field(default_factory=Counter)  # by route key
    handler_errors: Counter[str] = field(default_factory=Counter)  # raised or timed out
    binary_frames_rejected: int = 0
    oversized_frames_rejected: int = 0
    posts_delivered: int = 0
    # Delivered, but over the 32 KB frame size: API Gateway would split them into several
    # frames. The voice path promises ≤ 32 KB per post, so tests can assert this stays 0.
    posts_over_frame_limit: int = 0
    posts_gone: int = 0
    posts_too_large: int = 0
    posts_throttled: int = 0
    stalled_clients_dropped: int = 0


class LambdaContext:
    """The parts of the Lambda context object handlers use."""

    def __init__(self, function_name: str, timeout_s: float, region: str, account_id: str) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"
        self.memory_limit_in_mb = 128
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _HandlerFailed(Exception):
    """A handler raised or timed out."""

    def __init__(self, status: int, message: str, error_message: str = "") -> None:
        super().__init__(message)
        self.status = status  # what API Gateway answers a failed $connect with
        self.message = message  # what it tells a client whose message failed
        self.error_message = error_message  # the handler's own error text


@dataclass(eq=False)
class _Connection:
    """One open client connection and the tasks that serve it."""

    connection_id: str
    request: web.Request
    ws: web.WebSocketResponse
    source_ip: str
    user_agent: str
    domain_name: str
    connected_at_ms: int
    authorizer: dict[str, Any] | None
    outbound: asyncio.Queue[str | bytes | _CloseRequest]
    last_active_ms: int = 0
    last_active_mono: float = field(default_factory=time.monotonic)
    connected_mono: float = field(default_factory=time.monotonic)
    # Set once a close is decided: from then on POSTs get 410.
    closing: bool = False
    disconnect_code: int = CLOSE_ABNORMAL
    disconnect_reason: str = ""
    writer: asyncio.Task[None] | None = None
    watchdog: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.last_active_ms = _now_ms()
        self.last_active_mono = time.monotonic()


@dataclass(frozen=True, slots=True)
class _CloseRequest:
    """Queued behind the frames already posted, so they reach the client before it closes."""

    code: int
    reason: str


class ApiGatewayEmulator:
    """An API Gateway WebSocket API (stage + ``@connections``) in front of local handlers.

    ``routes`` maps route keys (``$connect``, ``$disconnect``, ``$default`` and custom keys
    matched against ``$request.body.action``) to Lambda-style handlers. They run on a thread
    pool because they are blocking boto3 code. ``authorizer`` is an optional REQUEST
    authorizer for ``$connect``; ``authorizer_identity_sources`` are its identity sources
    (e.g. ``route.request.querystring.token``), whose absence is refused with 401 before
    it runs. ``static_dir`` is served at ``/`` (``index.html``) on the same port.

    By default one connection's messages are handled one after another, in arrival order.
    API Gateway promises no such order: ``concurrent_messages=True`` handles them
    concurrently, as separate Lambda invocations may, to test code that must not rely on it.
    """

    def __init__(
        self,
        routes: Mapping[str, LambdaHandler],
        *,
        authorizer: LambdaHandler | None = None,
        authorizer_identity_sources: Iterable[str] = (),
        stage: str = "local",
        api_id: str = "local00001",
        region: str = "us-east-1",
        account_id: str = "000000000000",
        static_dir: str | Path | None = None,
        limits: GatewayLimits | None = None,
        handler_threads: int = 32,
        concurrent_messages: bool = False,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", stage):
            raise ValueError(f"stage name {stage!r} must be letters, digits, '-' or '_'")
        self.routes = dict(routes)
        self.authorizer = authorizer
        self.authorizer_identity_sources = tuple(authorizer_identity_sources)
        self.stage = stage
        self.api_id = api_id
        self.region = region
        self.account_id = account_id
        self.static_dir = Path(static_dir).resolve() if static_dir is not None else None
        self.limits = limits or GatewayLimits()
        self.concurrent_messages = concurrent_messages
        self.counters = GatewayCounters()
        self._handler_threads = handler_threads
        self._executor: ThreadPoolExecutor | None = None
        self._connections: dict[str, _Connection] = {}
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None

    # --- public surface ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0 picks a free port); return the bound port."""
        if self._runner is not None:
            raise RuntimeError("already started")
        self._executor = ThreadPoolExecutor(
            max_workers=self._handler_threads, thread_name_prefix="lambda"
        )
        app = web.Application()
        app.router.add_get(f"/{self.stage}", self._websocket)
        app.router.add_route(
            "*", f"/{self.stage}/@connections/{{connection_id}}", self._connections_api
        )
        app.router.add_get("/", self._static_file)
        app.router.add_get("/{path:.+}", self._static_file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = self._runner.addresses
        # Listening on every interface: URLs still name one a client can reach.
        self._host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self._port = int(sockets[0][1])
        log.info("api gateway emulator listening", extra={"ws_url": self.ws_url})
        return self._port

    async def stop(self) -> None:
        """Close every client (each gets its ``$disconnect``), then stop listening."""
        if self._runner is None:
            return
        open_now = list(self._connections.values())
        for conn in open_now:
            self._request_close(conn, CLOSE_GOING_AWAY, "Going away")
        await self._wait_finished(open_now, self.limits.close_handshake_timeout_s)
        for conn in open_now:
            if not conn.finished.is_set():
                self._drop(conn)  # a client that does not answer the close is cut off
        # Each $disconnect handler gets its integration timeout to finish.
        await self._wait_finished(open_now, self.limits.integration_timeout_s)
        await self._runner.cleanup()
        self._runner = None
        if self._executor is not None:
            # A handler stuck past its timeout cannot be interrupted; do not wait for it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    @staticmethod
    async def _wait_finished(connections: list[_Connection], timeout: float) -> None:
        waiters = [asyncio.create_task(c.finished.wait()) for c in connections]
        if not waiters:
            return
        _, pending = await asyncio.wait(waiters, timeout=timeout)
        for waiter in pending:
            waiter.cancel()

    async def __aenter__(self) -> ApiGatewayEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("not started")
        return self._port

    @property
    def ws_url(self) -> str:
        """What clients connect to, e.g. ``ws://127.0.0.1:8080/local``."""
        return f"ws://{self._host}:{self.port}/{self.stage}"

    @property
    def connections_endpoint_url(self) -> str:
        """The ``endpoint_url`` of a boto3 ``apigatewaymanagementapi`` client."""
        return f"http://{self._host}:{self.port}/{self.stage}"

    @property
    def page_url(self) -> str:
        """Where the static page is served."""
        return f"http://{self._host}:{self.port}/"

    @property
    def open_connections(self) -> int:
        """Connections accepted and not yet closing."""
        return len(self._connections)

    def connection_ids(self) -> list[str]:
        """Ids of the open connections, oldest first."""
        return list(self._connections)

    # --- WebSocket stage -----------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            autoping=True,
            # API Gateway does not negotiate permessage-deflate; the 32 KB limit is on the
            # bytes of the frame as sent.
            compress=False,
            # aiohttp refuses a message whose size is >= max_msg_size, with close 1009. It
            # limits whole messages, so a message fragmented into frames of <= 32 KB is
            # refused too, where API Gateway takes up to 128 KB; browsers never fragment.
            max_msg_size=MAX_FRAME_BYTES + 1,
            timeout=self.limits.close_handshake_timeout_s,
        )
        if not ws.can_prepare(request).ok:
            return _json_response(426, {"message": "Expected a WebSocket upgrade request"})

        connection_id = _new_id()
        connected_at_ms = _now_ms()
        identity = _identity(request)

        authorized = await self._authorize(request, connection_id, connected_at_ms, identity)
        if isinstance(authorized, web.Response):
            self.counters.connects_rejected += 1
            return authorized
        authorizer_context = authorized

        connect_event = self._connect_event(
            request, connection_id, connected_at_ms, identity, authorizer_context
        )
        refused = await self._run_connect(connect_event)
        if refused is not None:
            self.counters.connects_rejected += 1
            return refused

        conn = _Connection(
            connection_id=connection_id,
            request=request,
            ws=ws,
            source_ip=identity["sourceIp"],
            user_agent=identity["userAgent"],
            domain_name=request.host,
            connected_at_ms=connected_at_ms,
            authorizer=authorizer_context,
            outbound=asyncio.Queue(maxsize=self.limits.send_queue_frames),
        )
        conn.touch()
        try:
            await ws.prepare(request)
        except (ConnectionError, RuntimeError):
            # $connect accepted it, so API Gateway would send $disconnect for it too.
            self.counters.connections_opened += 1
            conn.closing = True
            await self._send_disconnect(conn)
            return ws
        self._connections[connection_id] = conn
        self.counters.connections_opened += 1
        log.info("client connected", extra={"connection_id": connection_id})
        try:
            await self._serve(conn)
        finally:
            await self._finish(conn)
        return ws

    async def _authorize(
        self,
        request: web.Request,
        connection_id: str,
        connected_at_ms: int,
        identity: dict[str, str],
    ) -> dict[str, Any] | None | web.Response:
        """The ``requestContext.authorizer`` for later events, or the refusal to send."""
        if self.authorizer is None:
            return None
        if not _identity_sources_present(request, self.authorizer_identity_sources):
            return _json_response(401, {"message": "Unauthorized"})
        event = self._authorizer_event(request, connection_id, connected_at_ms, identity)
        try:
            result = await self._invoke(self.authorizer, event, "authorizer")
        except _HandlerFailed as failure:
            if failure.error_message == "Unauthorized":
                return _json_response(401, {"message": "Unauthorized"})
            return _json_response(500, {"message": None})
        verdict = authorizer_verdict(result, event["methodArn"])
        if isinstance(verdict, int):
            body = {"message": "Forbidden"} if verdict == 403 else {"message": None}
            return _json_response(verdict, body)
        return verdict

    async def _run_connect(self, event: dict[str, Any]) -> web.Response | None:
        """None when ``$connect`` accepts the connection, else the HTTP refusal."""
        handler = self.routes.get(CONNECT)
        if handler is None:
            return None  # a $connect integration is optional
        try:
            response = await self._invoke(handler, event, CONNECT)
        except _HandlerFailed as failure:
            return _json_response(failure.status, {"message": failure.message})
        status = _status_code(response)
        if status is None or not 200 <= status <= 599:
            # Not documented; refused as a malformed proxy response so the bug shows locally.
            self.counters.handler_errors[CONNECT] += 1
            return _json_response(502, {"message": "Internal server error"})
        if not 200 <= status < 300:
            return web.Response(status=status)
        return None

    async def _serve(self, conn: _Connection) -> None:
        """Read client frames until the connection ends; hand messages to the dispatcher."""
        inbound: asyncio.Queue[str | None] = asyncio.Queue(
            maxsize=self.limits.inbound_queue_messages
        )
        dispatcher = asyncio.create_task(self._dispatch(conn, inbound))
        conn.writer = asyncio.create_task(self._write(conn))
        conn.watchdog = asyncio.create_task(self._watch_timeouts(conn))
        try:
            await self._read(conn, inbound)
        finally:
            # Messages already read were accepted by the gateway: they are still handled,
            # and $disconnect comes after the last of them.
            await inbound.put(None)
            await dispatcher

    async def _read(self, conn: _Connection, inbound: asyncio.Queue[str | None]) -> None:
        ws = conn.ws
        while True:
            msg = await ws.receive()
            if msg.type is WSMsgType.TEXT:
                if conn.closing:
                    continue  # a close is on its way; the gateway takes no more messages
                conn.touch()
                await inbound.put(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.counters.binary_frames_rejected += 1
                self._request_close(conn, CLOSE_UNSUPPORTED_DATA, "Binary frames are not supported")
            elif msg.type is WSMsgType.CLOSE:
                self._note_client_close(conn, msg.data, msg.extra)
                return
            elif msg.type is WSMsgType.ERROR:
                self._note_protocol_error(conn, getattr(msg.data, "code", None))
                return
            else:  # CLOSING / CLOSED: the socket is done
                self._note_closed(conn)
                return

    def _note_client_close(self, conn: _Connection, code: Any, reason: Any) -> None:
        if not conn.closing:
            conn.closing = True
            conn.disconnect_code = int(code) if isinstance(code, int) and code else CLOSE_NO_STATUS
            conn.disconnect_reason = reason if isinstance(reason, str) else ""
        self._connections.pop(conn.connection_id, None)

    def _note_protocol_error(self, conn: _Connection, code: int | None) -> None:
        # aiohttp has already sent the close frame with this code (1009: frame too big,
        # 1007: text that is not UTF-8, 1002: broken framing).
        code = int(code) if code else CLOSE_ABNORMAL
        if code == CLOSE_MESSAGE_TOO_BIG:
            self.counters.oversized_frames_rejected += 1
        if not conn.closing:
            conn.closing = True
            conn.disconnect_code = code
            conn.disconnect_reason = "Message too big" if code == CLOSE_MESSAGE_TOO_BIG else ""
        self._connections.pop(conn.connection_id, None)

    def _note_closed(self, conn: _Connection) -> None:
        if not conn.closing:
            conn.closing = True
            conn.disconnect_code = int(conn.ws.close_code or CLOSE_ABNORMAL)
        self._connections.pop(conn.connection_id, None)

    def _request_close(self, conn: _Connection, code: int, reason: str) -> None:
        """Close from the server side, after the frames already posted have been sent."""
        if conn.closing:
            return
        conn.closing = True
        conn.disconnect_code = code
        conn.disconnect_reason = reason
        self._connections.pop(conn.connection_id, None)
        if code == CLOSE_UNSUPPORTED_DATA:
            _drop_pending(conn.outbound)  # a protocol violation closes at once
        try:
            conn.outbound.put_nowait(_CloseRequest(code, reason))
        except asyncio.QueueFull:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        """End a connection without a close handshake (the client sees 1006)."""
        conn.disconnect_code = CLOSE_ABNORMAL
        transport = conn.request.transport
        if transport is not None:
            transport.abort()

    def _lose(self, conn: _Connection, reason: str) -> None:
        """The connection cannot be written to any more: stop taking posts and cut it off.

        If its close was already under way (the client's close frame arrived while frames
        were still queued for it), the close code recorded then stands: $disconnect reports
        how the connection really ended, not this last failed write."""
        if conn.closing:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
            return
        conn.closing = True
        self._connections.pop(conn.connection_id, None)
        conn.disconnect_reason = reason
        self._drop(conn)

    async def _write(self, conn: _Connection) -> None:
        """The one task that writes to this client: posted frames in order, then the close."""
        while True:
            item = await conn.outbound.get()
            if isinstance(item, _CloseRequest):
                await self._write_close(conn, item)
                return
            try:
                await asyncio.wait_for(
                    _send_frame(conn.ws, item), self.limits.stalled_send_timeout_s
                )
            except TimeoutError:
                # Not documented for API Gateway: a client that reads nothing for this long
                # is treated as gone, so its buffers cannot grow without bound.
                self.counters.stalled_clients_dropped += 1
                log.warning("client stopped reading; dropped", extra=_ids(conn))
                self._lose(conn, "Client stopped reading")
                return
            except Exception as exc:
                # The socket is going away under us; the reader sees the end and finishes.
                log.debug("send failed", extra={**_ids(conn), "error": type(exc).__name__})
                self._lose(conn, "")
                return
            conn.touch()

    async def _write_close(self, conn: _Connection, close: _CloseRequest) -> None:
        try:
            await asyncio.wait_for(
                conn.ws.close(code=close.code, message=close.reason.encode()),
                self.limits.close_handshake_timeout_s,
            )
        except Exception:
            self._drop(conn)

    async def _watch_timeouts(self, conn: _Connection) -> None:
        """Close idle connections and connections past the maximum duration."""
        limits = self.limits
        while not conn.closing:
            now = time.monotonic()
            idle_at = conn.last_active_mono + limits.idle_timeout_s
            expires_at = conn.connected_mono + limits.max_connection_s
            if now >= min(idle_at, expires_at):
                log.info(
                    "closing connection",
                    extra={**_ids(conn), "why": "idle" if now >= idle_at else "max duration"},
                )
                self._request_close(conn, CLOSE_GOING_AWAY, "Going away")
                return
            await asyncio.sleep(min(idle_at, expires_at) - now)

    async def _finish(self, conn: _Connection) -> None:
        """After the socket ends: stop its tasks, then send ``$disconnect`` exactly once."""
        self._connections.pop(conn.connection_id, None)
        conn.closing = True
        for task in (conn.watchdog, conn.writer):
            if task is not None and not task.done():
                task.cancel()
        for task in (conn.watchdog, conn.writer):
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        await self._send_disconnect(conn)
        log.info(
            "client disconnected",
            extra={**_ids(conn), "close_code": conn.disconnect_code},
        )

    async def _send_disconnect(self, conn: _Connection) -> None:
        try:
            handler = self.routes.get(DISCONNECT)
            if handler is not None:
                try:
                    await self._invoke(handler, self._disconnect_event(conn), DISCONNECT)
                except _HandlerFailed:
                    pass  # nobody to tell: the client has gone
        finally:
            self.counters.connections_closed += 1
            conn.finished.set()

    # --- message routing -----------------------------------------------------------------

    async def _dispatch(self, conn: _Connection, inbound: asyncio.Queue[str | None]) -> None:
        """Hand each client message to its route, in order or concurrently."""
        running: set[asyncio.Task[None]] = set()
        while True:
            body = await inbound.get()
            if body is None:
                break
            if self.concurrent_messages:
                task = asyncio.create_task(self._handle_message_safely(conn, body))
                running.add(task)
                task.add_done_callback(running.discard)
            else:
                await self._handle_message_safely(conn, body)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _handle_message_safely(self, conn: _Connection, body: str) -> None:
        """One bad message must not stop the dispatcher: later messages still get handled."""
        try:
            await self._handle_message(conn, body)
        except Exception:
            log.exception("emulator failed to route a message", extra=_ids(conn))

    async def _handle_message(self, conn: _Connection, body: str) -> None:
        route_key = select_route(body, self.routes)
        event = self._message_event(conn, body, route_key or DEFAULT)
        request_id = event["requestContext"]["requestId"]
        if route_key is None:
            self._tell_client(conn, "Forbidden", request_id)
            return
        try:
            await self._invoke(self.routes[route_key], event, route_key)
        except _HandlerFailed as failure:
            self._tell_client(conn, failure.message, request_id)
        # The handler's response is not sent anywhere: these routes have no route response.

    def _tell_client(self, conn: _Connection, message: str, request_id: str) -> None:
        """API Gateway's own error message, byte for byte as real APIs send it."""
        text = (
            f'{{"message": "{message}", "connectionId":"{conn.connection_id}", '
            f'"requestId":"{request_id}"}}'
        )
        self._enqueue(conn, text)

    def _enqueue(self, conn: _Connection, frame: str | bytes) -> bool:
        if conn.closing:
            return False
        try:
            conn.outbound.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    async def _invoke(self, handler: LambdaHandler, event: dict[str, Any], route: str) -> Any:
        """Run a blocking handler on the pool, bounded by the integration timeout."""
        self.counters.invocations[route] += 1
        context = LambdaContext(
            function_name=f"local-{route.lstrip('$')}",
            timeout_s=self.limits.integration_timeout_s,
            region=self.region,
            account_id=self.account_id,
        )
        loop = asyncio.get_running_loop()
        try:
            if self._executor is None:
                raise RuntimeError("the emulator has stopped")
            future = loop.run_in_executor(self._executor, handler, event, context)
            return await asyncio.wait_for(future, self.limits.integration_timeout_s)
        except TimeoutError:
            self.counters.handler_errors[route] += 1
            log.warning("handler timed out", extra=_event_ids(event, route))
            raise _HandlerFailed(504, "Endpoint request timed out") from None
        except Exception as exc:
            self.counters.handler_errors[route] += 1
            log.warning(
                "handler raised",
                extra={**_event_ids(event, route), "error": type(exc).__name__},
                exc_info=True,
            )
            raise _HandlerFailed(502, "Internal server error", str(exc)) from None

    # --- @connections API ----------------------------------------------------------------

    async def _connections_api(self, request: web.Request) -> web.Response:
        # Any SigV4 signature is accepted; an unsigned request is refused as AWS does.
        if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256"):
            return _aws_error(403, "ForbiddenException", "Missing Authentication Token")
        connection_id = request.match_info["connection_id"]
        if request.method == "POST":
            return await self._post_to_connection(request, connection_id)
        conn = self._connections.get(connection_id)
        if request.method == "GET":
            if conn is None:
                return _gone(connection_id)
            return web.json_response(
                {
                    "connectedAt": _iso8601(conn.connected_at_ms),
                    "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
                    "lastActiveAt": _iso8601(conn.last_active_ms),
                },
                headers=_request_id_header(),
            )
        if request.method == "DELETE":
            if conn is None:
                return _gone(connection_id)
            self._request_close(conn, CLOSE_NORMAL, "")
            return web.Response(status=204, headers=_request_id_header())
        return _aws_error(403, "ForbiddenException", "Missing Authentication Token")

    async def _post_to_connection(self, request: web.Request, connection_id: str) -> web.Response:
        data = await _read_body(request, MAX_POST_BYTES)
        if data is None:
            self.counters.posts_too_large += 1
            return _aws_error(413, "PayloadTooLargeException", "Message too long")
        conn = self._connections.get(connection_id)
        if conn is None or conn.closing:
            self.counters.posts_gone += 1
            return _gone(connection_id)
        if not self._enqueue(conn, _as_frame(data)):
            self.counters.posts_throttled += 1
            return _aws_error(429, "LimitExceededException", "Client side buffer is full")
        self.counters.posts_delivered += 1
        if len(data) > MAX_FRAME_BYTES:
            self.counters.posts_over_frame_limit += 1
        return web.Response(status=200, headers=_request_id_header())

    # --- static page ---------------------------------------------------------------------

    async def _static_file(self, request: web.Request) -> web.StreamResponse:
        if self.static_dir is None:
            raise web.HTTPNotFound()
        relative = request.match_info.get("path") or "index.html"
        path = (self.static_dir / relative).resolve()
        if not path.is_relative_to(self.static_dir):
            raise web.HTTPNotFound()
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    # --- events --------------------------------------------------------------------------

    def _request_context(
        self,
        *,
        route_key: str,
        event_type: str,
        connection_id: str,
        connected_at_ms: int,
        identity: dict[str, str],
        domain_name: str,
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        now_ms = _now_ms()
        request_id = _new_id()
        context: dict[str, Any] = {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": _request_time(now_ms),
            "messageDirection": "IN",
            "stage": self.stage,
            "connectedAt": connected_at_ms,
            "requestTimeEpoch": now_ms,
            "identity": dict(identity),
            "requestId": request_id,
            "domainName": domain_name,
            "connectionId": connection_id,
            "apiId": self.api_id,
        }
        if authorizer is not None:
            context["authorizer"] = dict(authorizer)
        return context

    def _authorizer_event(
        self,
        request: web.Request,
        connection_id: str,
        connected_at_ms: int,
        identity: dict[str, str],
    ) -> dict[str, Any]:
        method_arn = (
            f"arn:aws:execute-api:{self.region}:{self.account_id}:{self.api_id}"
            f"/{self.stage}/{CONNECT}"
        )
        headers, multi_headers = _headers(request, keep_hop_by_hop=True)
        event: dict[str, Any] = {
            "type": "REQUEST",
            "methodArn": method_arn,
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **_query(request),
            "stageVariables": {},
            "requestContext": self._request_context(
                route_key=CONNECT,
                event_type="CONNECT",
                connection_id=connection_id,
                connected_at_ms=connected_at_ms,
                identity=identity,
                domain_name=request.host,
                authorizer=None,
            ),
        }
        return event

    def _connect_event(
        self,
        request: web.Request,
        connection_id: str,
        connected_at_ms: int,
        identity: dict[str, str],
        authorizer: dict[str, Any] | None,
    ) -> dict[str, Any]:
        headers, multi_headers = _headers(request, keep_hop_by_hop=False)
        return {
            "headers": headers,
            "multiValueHeaders": multi_headers,
            **_query(request),
            "requestContext": self._request_context(
                route_key=CONNECT,
                event_type="CONNECT",
                connection_id=connection_id,
                connected_at_ms=connected_at_ms,
                identity=identity,
                domain_name=request.host,
                authorizer=authorizer,
            ),
            "isBase64Encoded": False,
        }

    def _message_event(self, conn: _Connection, body: str, route_key: str) -> dict[str, Any]:
        context = self._request_context(
            route_key=route_key,
            event_type="MESSAGE",
            connection_id=conn.connection_id,
            connected_at_ms=conn.connected_at_ms,
            identity={"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            domain_name=conn.domain_name,
            authorizer=conn.authorizer,
        )
        context["messageId"] = _new_id()
        return {"requestContext": context, "body": body, "isBase64Encoded": False}

    def _disconnect_event(self, conn: _Connection) -> dict[str, Any]:
        context = self._request_context(
            route_key=DISCONNECT,
            event_type="DISCONNECT",
            connection_id=conn.connection_id,
            connected_at_ms=conn.connected_at_ms,
            identity={"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            domain_name=conn.domain_name,
            authorizer=conn.authorizer,
        )
        context["disconnectStatusCode"] = conn.disconnect_code
        context["disconnectReason"] = conn.disconnect_reason
        # What real $disconnect events carry: the host and a few empty placeholders.
        headers = {
            "Host": conn.domain_name,
            "x-api-key": "",
            "X-Forwarded-For": "",
            "x-restapi": "",
        }
        return {
            "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "requestContext": context,
            "isBase64Encoded": False,
        }


# --- pure helpers (module level so tests can drive them directly) ---------------------------


def select_route(body: str, routes: Mapping[str, Any]) -> str | None:
    """The route for a client message under ``$request.body.action``; None if there is none.

    A body that is not a JSON object, has no string ``action``, or names no custom route
    goes to ``$default``. ``$connect`` / ``$disconnect`` are never chosen by a message.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        parsed = None
    action = parsed.get("action") if isinstance(parsed, dict) else None
    if isinstance(action, str) and action in routes and action not in _RESERVED_ROUTES:
        return action
    return DEFAULT if DEFAULT in routes else None


def authorizer_verdict(result: Any, method_arn: str) -> dict[str, Any] | int:
    """What a REQUEST authorizer's result means for ``method_arn``.

    Returns the ``requestContext.authorizer`` mapping (``principalId`` plus the ``context``
    values) when an Allow statement covers the ARN and no Deny does; 403 when not; 500 for
    a result API Gateway cannot use (no policy, non-scalar context values, over 8 KB).
    """
    if not isinstance(result, dict):
        return 500
    try:
        if len(json.dumps(result)) > MAX_AUTHORIZER_RESULT_BYTES:
            return 500
    except (TypeError, ValueError):
        return 500
    policy = result.get("policyDocument")
    context = result.get("context") or {}
    if not isinstance(policy, dict) or not isinstance(context, dict):
        return 500
    if not all(isinstance(v, str | int | float | bool) for v in context.values()):
        return 500
    statements = policy.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        return 500
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict) or not _statement_covers(statement, method_arn):
            continue
        effect = statement.get("Effect")
        if effect == "Deny":
            return 403
        if effect == "Allow":
            allowed = True
    if not allowed:
        return 403
    return {"principalId": result.get("principalId"), **context}


def _statement_covers(statement: dict[str, Any], method_arn: str) -> bool:
    actions = _as_list(statement.get("Action"))
    resources = _as_list(statement.get("Resource"))
    action_ok = any(_glob_match(a, "execute-api:Invoke") for a in actions if isinstance(a, str))
    resource_ok = any(_glob_match(r, method_arn) for r in resources if isinstance(r, str))
    return action_ok and resource_ok


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob_match(pattern: str, value: str) -> bool:
    """IAM wildcards: ``*`` any run of characters, ``?`` one character."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _identity_sources_present(request: web.Request, sources: Iterable[str]) -> bool:
    for source in sources:
        parts = source.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["route", "request"]:
            raise ValueError(f"unsupported identity source {source!r}")
        kind, name = parts[2], parts[3]
        if kind == "header":
            present = bool(request.headers.get(name))
        elif kind == "querystring":
            present = bool(request.query.get(name))
        else:
            raise ValueError(f"unsupported identity source {source!r}")
        if not present:
            return False
    return True


def _identity(request: web.Request) -> dict[str, str]:
    return {
        "sourceIp": request.remote or "",
        "userAgent": request.headers.get("User-Agent", ""),
    }


def _headers(
    request: web.Request, *, keep_hop_by_hop: bool
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``headers`` (last value wins) and ``multiValueHeaders``, plus what the edge adds."""
    multi: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        if not keep_hop_by_hop and name.lower() in _HOP_BY_HOP:
            continue
        multi.setdefault(name, []).append(value)
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    edge = {
        "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()}",
        "X-Forwarded-For": request.remote or "",
        "X-Forwarded-Port": str(sockname[1]) if sockname else "",
        "X-Forwarded-Proto": request.scheme,
    }
    for name, value in edge.items():
        multi[name] = [value]
    return {name: values[-1] for name, values in multi.items()}, multi


def _query(request: web.Request) -> dict[str, Any]:
    """The query string fields, present only when the URL has a query string."""
    if not request.query:
        return {}
    multi: dict[str, list[str]] = {}
    for name, value in request.query.items():
        multi.setdefault(name, []).append(value)
    return {
        "queryStringParameters": {name: values[-1] for name, values in multi.items()},
        "multiValueQueryStringParameters": multi,
    }


def _status_code(response: Any) -> int | None:
    if not isinstance(response, dict):
        return None
    status = response.get("statusCode")
    if isinstance(status, bool) or not isinstance(status, int):
        return None
    return status


async def _send_frame(ws: web.WebSocketResponse, frame: str | bytes) -> None:
    if isinstance(frame, str):
        await ws.send_str(frame)
    else:
        await ws.send_bytes(frame)


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it proves longer than ``limit``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _as_frame(data: bytes) -> str | bytes:
    """Posted data goes out as a text frame; bytes that are not UTF-8 cannot, so binary."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _drop_pending(queue: asyncio.Queue[Any]) -> None:
    while not queue.empty():
        queue.get_nowait()


def _new_id() -> str:
    """An id shaped like API Gateway's: 11 random bytes as URL-safe base64 (16 chars)."""
    return base64.urlsafe_b64encode(os.urandom(11)).decode("ascii")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _request_time(epoch_ms: int) -> str:
    """``20/Jan/2024:11:55:08 +0000``, independent of the process locale."""
    t = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return f"{t.day:02d}/{_MONTHS[t.month - 1]}/{t.year}:{t:%H:%M:%S} +0000"


def _iso8601(epoch_ms: int) -> str:
    t = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def _request_id_header() -> dict[str, str]:
    return {"x-amzn-RequestId": str(uuid.uuid4())}


def _json_response(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status)


def _aws_error(status: int, error_type: str, message: str) -> web.Response:
    """A rest-json error: botocore reads the code from ``x-amzn-ErrorType``."""
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-ErrorType": error_type, **_request_id_header()},
    )


def _gone(connection_id: str) -> web.Response:
    return _aws_error(410, "GoneException", f"Connection {connection_id} is gone")


def _ids(conn: _Connection) -> dict[str, Any]:
    return {"connection_id": conn.connection_id}


def _event_ids(event: dict[str, Any], route: str) -> dict[str, Any]:
    context = event.get("requestContext", {})
    return {
        "connection_id": context.get("connectionId"),
        "request_id": context.get("requestId"),
        "route": route,
    }
