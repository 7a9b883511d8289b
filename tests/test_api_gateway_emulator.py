"""The API Gateway WebSocket emulator behaves as API Gateway does, seen from both sides:
the events the handlers get, and what a WebSocket client and a boto3 ``@connections``
client see."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import boto3
import pytest
from botocore.config import Config
from hypothesis import given
from hypothesis import strategies as st

from emulators.api_gateway import (
    MAX_POST_BYTES,
    ApiGatewayEmulator,
    GatewayLimits,
    authorizer_verdict,
    select_route,
)
from wire.client import MAX_FRAME_BYTES

TEST_TIMEOUT_S = 20
# API Gateway ids: 16 characters of URL-safe base64 ending in "=" ("R1kmxc2VNjMCFIA=").
ID = re.compile(r"[A-Za-z0-9_-]{15}=")
REQUEST_TIME = re.compile(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000")
COMMON_CONTEXT_KEYS = {
    "routeKey",
    "eventType",
    "extendedRequestId",
    "requestTime",
    "messageDirection",
    "stage",
    "connectedAt",
    "requestTimeEpoch",
    "identity",
    "requestId",
    "domainName",
    "connectionId",
    "apiId",
}
INTERNAL_ERROR = re.compile(
    r'\{"message": "Internal server error", "connectionId":"(?P<cid>[^"]+)", '
    r'"requestId":"(?P<rid>[^"]+)"\}'
)


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test on a fresh event loop, bounded in time."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S))

    return run


class Recorder:
    """Lambda-style handlers that record every event; a route's answer can be scripted."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.contexts: list[Any] = []
        self._lock = threading.Lock()
        self.answers: dict[str, Callable[[dict[str, Any]], Any]] = {}

    def handler(self, route: str) -> Callable[[dict[str, Any], Any], Any]:
        def handle(event: dict[str, Any], context: Any) -> Any:
            with self._lock:
                self.events.append(event)
                self.contexts.append(context)
            answer = self.answers.get(route)
            return answer(event) if answer else {"statusCode": 200}

        return handle

    def routes(self, *keys: str) -> dict[str, Callable[[dict[str, Any], Any], Any]]:
        return {key: self.handler(key) for key in keys}

    def of(self, route: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["requestContext"]["routeKey"] == route]


STANDARD_ROUTES = ("$connect", "$disconnect", "$default")


@asynccontextmanager
async def running(
    recorder: Recorder, *routes: str, **options: Any
) -> AsyncIterator[ApiGatewayEmulator]:
    emulator = ApiGatewayEmulator(recorder.routes(*(routes or STANDARD_ROUTES)), **options)
    await emulator.start()
    try:
        yield emulator
    finally:
        await emulator.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def management_client(emulator: ApiGatewayEmulator) -> Any:
    """A real boto3 client, as the worker builds it; one attempt so errors show as they are."""
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=emulator.connections_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(retries={"total_max_attempts": 1}),
    )


async def close_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; return its close code."""
    while True:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return ws.close_code


class RawClient:
    """A WebSocket client on a bare socket, for what a library client will not do: never
    read what the server sends, or keep sending after its own close frame."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, url: str, receive_buffer: int | None = None) -> RawClient:
        parts = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (parts.hostname, parts.port))
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past it
            if not chunk:
                raise ConnectionError("closed during handshake")
            response += chunk
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(sock)

    async def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = bytes([0x80 | opcode, 0x80 | size])
        elif size < 1 << 16:
            header = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + mask + masked)

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unmasked): its opcode and payload."""
        head = await self._read_exactly(2)
        size = head[1] & 0x7F
        if size == 126:
            size = int.from_bytes(await self._read_exactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self._read_exactly(8), "big")
        return head[0] & 0x0F, await self._read_exactly(size)

    async def _read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, count - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    async def send_text(self, text: str) -> None:
        await self.send(0x1, text.encode())

    async def send_close(self, code: int) -> None:
        await self.send(0x8, code.to_bytes(2, "big"))

    def close(self) -> None:
        self.sock.close()


# --- events ---------------------------------------------------------------------------------


@async_test
async def test_connect_message_and_disconnect_events_have_api_gateways_shape() -> None:
    rec = Recorder()
    async with running(rec, "$connect", "$disconnect", "$default", "say") as gw:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(
                gw.ws_url + "?token=abc&tag=1&tag=2", headers={"User-Agent": "test-agent/1"}
            )
            await ws.send_str('{"action": "say", "text": "hi"}')
            await ws.send_str("not json")
            await wait_until(lambda: len(rec.of("$default")) == 1)
            await ws.close(code=1000, message=b"bye")
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)

    connect, say, default, disconnect = (
        rec.of("$connect")[0],
        rec.of("say")[0],
        rec.of("$default")[0],
        rec.of("$disconnect")[0],
    )
    connection_id = connect["requestContext"]["connectionId"]
    for event, event_type in (
        (connect, "CONNECT"),
        (say, "MESSAGE"),
        (default, "MESSAGE"),
        (disconnect, "DISCONNECT"),
    ):
        ctx = event["requestContext"]
        extra = {
            "CONNECT": set(),
            "MESSAGE": {"messageId"},
            "DISCONNECT": {"disconnectStatusCode", "disconnectReason"},
        }[event_type]
        assert set(ctx) == COMMON_CONTEXT_KEYS | extra
        assert ctx["eventType"] == event_type
        assert ctx["messageDirection"] == "IN"
        assert ctx["stage"] == "local" and ctx["apiId"] == gw.api_id
        assert ctx["connectionId"] == connection_id
        assert ID.fullmatch(ctx["connectionId"]) and ID.fullmatch(ctx["requestId"])
        assert ctx["extendedRequestId"] == ctx["requestId"]
        assert REQUEST_TIME.fullmatch(ctx["requestTime"])
        assert isinstance(ctx["requestTimeEpoch"], int)
        assert ctx["connectedAt"] == connect["requestContext"]["connectedAt"]
        assert ctx["connectedAt"] <= ctx["requestTimeEpoch"]
        assert ctx["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "test-agent/1"}
        assert ctx["domainName"] == f"127.0.0.1:{gw.port}"
        assert event["isBase64Encoded"] is False

    assert connect["requestContext"]["routeKey"] == "$connect"
    assert connect["queryStringParameters"] == {"token": "abc", "tag": "2"}
    assert connect["multiValueQueryStringParameters"] == {"token": ["abc"], "tag": ["1", "2"]}
    assert connect["headers"]["User-Agent"] == "test-agent/1"
    assert connect["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert connect["headers"]["X-Forwarded-Proto"] == "http"
    assert connect["multiValueHeaders"]["Sec-WebSocket-Version"] == ["13"]
    assert "Upgrade" not in connect["headers"]  # API Gateway keeps hop-by-hop headers
    assert "body" not in connect and "authorizer" not in connect["requestContext"]

    assert say["requestContext"]["routeKey"] == "say"
    assert say["body"] == '{"action": "say", "text": "hi"}'
    assert default["body"] == "not json"
    assert ID.fullmatch(say["requestContext"]["messageId"])
    assert say["requestContext"]["messageId"] != default["requestContext"]["messageId"]
    assert "headers" not in say  # messages carry no headers

    assert disconnect["requestContext"]["disconnectStatusCode"] == 1000
    assert type(disconnect["requestContext"]["disconnectStatusCode"]) is int
    assert disconnect["requestContext"]["disconnectReason"] == "bye"
    assert disconnect["headers"]["Host"] == f"127.0.0.1:{gw.port}"
    request_ids = [e["requestContext"]["requestId"] for e in (connect, say, default, disconnect)]
    assert len(set(request_ids)) == 4

    lambda_ids = {c.aws_request_id for c in rec.contexts}
    assert len(lambda_ids) == 4
    assert all(0 < c.get_remaining_time_in_millis() <= 29_000 for c in rec.contexts)


@pytest.mark.parametrize(
    ("body", "route"),
    [
        ('{"action": "say"}', "say"),
        ('{"action": "nope"}', "$default"),
        ("not json", "$default"),
        ("", "$default"),
        ('["say"]', "$default"),
        ('{"action": 7}', "$default"),
        ('{"action": "$connect"}', "$default"),
        ('{"action": "$disconnect"}', "$default"),
        ("[" * 100_000, "$default"),  # nesting deep enough to break json.loads
    ],
)
def test_route_selection_on_request_body_action(body: str, route: str) -> None:
    routes = {"$connect": 1, "$disconnect": 1, "$default": 1, "say": 1}
    assert select_route(body, routes) == route


def test_without_default_route_an_unmatched_message_has_no_route() -> None:
    assert select_route('{"action": "nope"}', {"say": 1}) is None


@given(st.text(max_size=200))
def test_route_selection_never_raises(body: str) -> None:
    assert select_route(body, {"$default": 1, "say": 1}) in ("$default", "say")


@async_test
async def test_unmatched_message_without_default_route_gets_forbidden() -> None:
    rec = Recorder()
    async with running(rec, "$connect", "say") as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str('{"action": "other"}')
        reply = await ws.receive_str()
        assert reply.startswith('{"message": "Forbidden", "connectionId":"')
        await ws.send_str('{"action": "say"}')
        await wait_until(lambda: len(rec.of("say")) == 1)


# --- $connect -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (lambda e: {"statusCode": 403}, 403),
        (lambda e: {"statusCode": 401, "body": "no"}, 401),
        (lambda e: {"statusCode": 500}, 500),
        (lambda e: 1 / 0, 502),  # the handler raised
        (lambda e: None, 502),  # not a proxy response
        (lambda e: {"statusCode": "200"}, 502),
    ],
)
@async_test
async def test_connect_refused_fails_the_handshake_and_sends_no_disconnect(
    answer: Callable[[dict[str, Any]], Any], status: int
) -> None:
    rec = Recorder()
    rec.answers["$connect"] = answer
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gw.ws_url)
        assert refused.value.status == status
        # A POST to the would-be connection: it never existed.
        cid = rec.of("$connect")[0]["requestContext"]["connectionId"]
        with pytest.raises(management_client(gw).exceptions.GoneException):
            await asyncio.to_thread(
                management_client(gw).post_to_connection, ConnectionId=cid, Data=b"x"
            )
    assert rec.of("$disconnect") == []
    assert gw.counters.connects_rejected == 1
    assert gw.counters.connections_opened == gw.counters.connections_closed == 0


@async_test
async def test_any_2xx_from_connect_accepts() -> None:
    rec = Recorder()
    rec.answers["$connect"] = lambda e: {"statusCode": 201}
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        assert gw.open_connections == 1
        await ws.close()
    assert len(rec.of("$disconnect")) == 1


@async_test
async def test_urls_name_a_reachable_host_when_listening_on_every_interface() -> None:
    gw = ApiGatewayEmulator({})
    port = await gw.start(host="0.0.0.0")
    try:
        assert gw.ws_url == f"ws://127.0.0.1:{port}/local"
        assert gw.connections_endpoint_url == f"http://127.0.0.1:{port}/local"
        assert gw.page_url == f"http://127.0.0.1:{port}/"
    finally:
        await gw.stop()


@async_test
async def test_plain_http_request_to_the_stage_is_not_upgraded() -> None:
    async with running(Recorder()) as gw, aiohttp.ClientSession() as http:
        async with http.get(gw.connections_endpoint_url) as response:
            assert response.status == 426


# --- authorizer -----------------------------------------------------------------------------


def allow_policy(event: dict[str, Any], effect: str = "Allow") -> dict[str, Any]:
    return {
        "principalId": "caller-7",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": event["methodArn"]}
            ],
        },
        "context": {"caller": "caller-7", "tier": 2, "trusted": True},
    }


def token_authorizer(calls: list[dict[str, Any]]) -> Callable[[dict[str, Any], Any], Any]:
    def authorize(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(event)
        token = (event.get("queryStringParameters") or {}).get("token")
        if token == "good":
            return allow_policy(event)
        if token == "denied":
            return allow_policy(event, effect="Deny")
        raise Exception("Unauthorized")

    return authorize


@pytest.mark.parametrize(
    ("query", "status", "authorizer_ran"),
    [
        ("", 401, False),  # identity source missing: refused before the authorizer runs
        ("?token=bad", 401, True),  # the authorizer raised "Unauthorized"
        ("?token=denied", 403, True),  # an explicit Deny
    ],
)
@async_test
async def test_authorizer_refusals_never_reach_connect(
    query: str, status: int, authorizer_ran: bool
) -> None:
    rec, calls = Recorder(), list[dict[str, Any]]()
    options = {
        "authorizer": token_authorizer(calls),
        "authorizer_identity_sources": ["route.request.querystring.token"],
    }
    async with running(rec, **options) as gw, aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(gw.ws_url + query)
        assert refused.value.status == status
    assert bool(calls) == authorizer_ran
    assert rec.events == []


@async_test
async def test_authorizer_allow_passes_its_context_to_every_later_event() -> None:
    rec, calls = Recorder(), list[dict[str, Any]]()
    options = {
        "authorizer": token_authorizer(calls),
        "authorizer_identity_sources": ["route.request.querystring.token"],
    }
    async with running(rec, **options) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url + "?token=good")
        await ws.send_str('{"action": "audio"}')
        await wait_until(lambda: len(rec.of("$default")) == 1)
        await ws.close()
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)

    (auth_event,) = calls
    assert auth_event["type"] == "REQUEST"
    assert auth_event["methodArn"] == (
        f"arn:aws:execute-api:us-east-1:000000000000:{gw.api_id}/local/$connect"
    )
    assert auth_event["queryStringParameters"] == {"token": "good"}
    assert auth_event["headers"]["Upgrade"] == "websocket"
    assert auth_event["stageVariables"] == {}
    assert set(auth_event["requestContext"]) == COMMON_CONTEXT_KEYS
    expected = {"principalId": "caller-7", "caller": "caller-7", "tier": 2, "trusted": True}
    for event in rec.events:
        assert event["requestContext"]["authorizer"] == expected
    assert (
        auth_event["requestContext"]["connectionId"]
        == rec.of("$connect")[0]["requestContext"]["connectionId"]
    )


ARN = "arn:aws:execute-api:us-east-1:000000000000:abc/local/$connect"


def policy(*statements: dict[str, Any], context: Any = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "principalId": "p",
        "policyDocument": {"Version": "2012-10-17", "Statement": list(statements)},
    }
    if context is not None:
        result["context"] = context
    return result


def statement(effect: str, resource: Any, action: Any = "execute-api:Invoke") -> dict[str, Any]:
    return {"Effect": effect, "Action": action, "Resource": resource}


@pytest.mark.parametrize(
    ("result", "verdict"),
    [
        (policy(statement("Allow", ARN)), {"principalId": "p"}),
        (policy(statement("Allow", "arn:aws:execute-api:*:*:abc/*")), {"principalId": "p"}),
        (policy(statement("Allow", [ARN]), context={"k": "v"}), {"principalId": "p", "k": "v"}),
        (policy(statement("Allow", ARN, action="execute-api:*")), {"principalId": "p"}),
        (policy(statement("Allow", ARN), statement("Deny", "*")), 403),
        (policy(statement("Allow", ARN.replace("local", "prod"))), 403),
        (policy(statement("Allow", ARN, action="s3:GetObject")), 403),
        (policy(), 403),
        (policy(statement("Allow", ARN), context={"nested": {"a": 1}}), 500),
        (policy(statement("Allow", ARN), context={"big": "x" * 9000}), 500),
        ({"principalId": "p"}, 500),
        (None, 500),
    ],
)
def test_authorizer_verdict(result: Any, verdict: Any) -> None:
    assert authorizer_verdict(result, ARN) == verdict


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=15), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_authorizer_verdict_never_raises(result: Any) -> None:
    verdict = authorizer_verdict(result, ARN)
    assert verdict in (403, 500) or isinstance(verdict, dict)


# --- client frames --------------------------------------------------------------------------


@async_test
async def test_handler_error_sends_api_gateways_message_and_keeps_the_connection() -> None:
    rec = Recorder()

    def fail_once(event: dict[str, Any]) -> dict[str, Any]:
        if event["body"] == "boom":
            raise RuntimeError("handler bug")
        return {"statusCode": 200}

    rec.answers["$default"] = fail_once
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str("boom")
        reply = INTERNAL_ERROR.fullmatch(await ws.receive_str())
        assert reply is not None
        failed = rec.of("$default")[0]["requestContext"]
        assert reply["cid"] == failed["connectionId"]
        assert reply["rid"] == failed["requestId"]
        await ws.send_str("fine")
        await wait_until(lambda: len(rec.of("$default")) == 2)
        assert not ws.closed
    assert gw.counters.handler_errors["$default"] == 1


@async_test
async def test_handler_past_the_integration_timeout_is_reported_to_the_client() -> None:
    rec = Recorder()

    def too_slow(event: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.5)
        return {"statusCode": 200}

    rec.answers["$default"] = too_slow
    limits = GatewayLimits(integration_timeout_s=0.1)
    async with running(rec, limits=limits) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str("slow")
        assert (await ws.receive_str()).startswith(
            '{"message": "Endpoint request timed out", "connectionId":"'
        )
        assert not ws.closed


@async_test
async def test_binary_frame_closes_with_1003() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        cid = gw.connection_ids()[0]
        await ws.send_bytes(b"\x00\x01")
        assert await close_code(ws) == 1003
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
        assert rec.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1003
        assert rec.of("$default") == []
        client = management_client(gw)
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x")
    assert gw.counters.binary_frames_rejected == 1


@async_test
async def test_a_32_kb_frame_passes_and_a_larger_one_closes_with_1009() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str("a" * MAX_FRAME_BYTES)
        await wait_until(lambda: len(rec.of("$default")) == 1)
        assert len(rec.of("$default")[0]["body"]) == MAX_FRAME_BYTES
        await ws.send_str("b" * (MAX_FRAME_BYTES + 1))
        assert await close_code(ws) == 1009
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
    assert len(rec.of("$default")) == 1
    assert rec.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1009
    assert gw.counters.oversized_frames_rejected == 1


@async_test
async def test_odd_text_is_delivered_untouched_and_never_breaks_the_connection() -> None:
    rec = Recorder()
    bodies = ["", " ", "\u0000", "é" * 100, "[" * 10_000, '{"action": null}', "{" * 3 + "}"]
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        for body in bodies:
            await ws.send_str(body)
        await wait_until(lambda: len(rec.of("$default")) == len(bodies))
        assert [e["body"] for e in rec.of("$default")] == bodies
        assert not ws.closed


@async_test
async def test_frames_after_the_clients_close_frame_are_ignored() -> None:
    rec = Recorder()
    async with running(rec) as gw:
        raw = await RawClient.connect(gw.ws_url)
        await raw.send_text("before")
        await raw.send_close(1000)
        await raw.send_text("after")
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
        raw.close()
    assert [e["body"] for e in rec.of("$default")] == ["before"]
    assert rec.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1000


@async_test
async def test_text_that_is_not_utf8_closes_with_1007_and_pings_are_answered() -> None:
    rec = Recorder()
    async with running(rec) as gw:
        raw = await RawClient.connect(gw.ws_url)
        await raw.send(0x9, b"are you there")  # ping: answered, not a message
        assert await raw.read_frame() == (0xA, b"are you there")
        await raw.send(0x1, b"\xff\xfe")
        opcode, payload = await raw.read_frame()
        assert (opcode, int.from_bytes(payload[:2], "big")) == (0x8, 1007)
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
        raw.close()
    assert rec.of("$default") == []
    assert rec.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1007


@async_test
async def test_garbage_on_the_wire_never_disturbs_the_gateway(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Random bytes after the handshake (broken headers, reserved opcodes, bad lengths,
    unmasked frames): each such connection ends, gets its $disconnect, and a well-behaved
    client is served as usual. Seeded, so a failure replays."""
    rng = random.Random(20240611)
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        for _ in range(40):
            raw = await RawClient.connect(gw.ws_url)
            await raw.send_raw(rng.randbytes(rng.randint(1, 300)))
            await asyncio.sleep(0.005)
            raw.close()
        await wait_until(lambda: len(rec.of("$disconnect")) == 40)
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str("still fine")
        await wait_until(lambda: any(e["body"] == "still fine" for e in rec.of("$default")))
        await ws.close()
        await wait_until(lambda: gw.open_connections == 0)
    assert gw.counters.connections_opened == gw.counters.connections_closed == 41
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@async_test
async def test_concurrent_messages_mode_handles_messages_side_by_side() -> None:
    # The first message waits for the second: ordered handling would never finish it.
    rec, second_seen = Recorder(), threading.Event()

    def answer(event: dict[str, Any]) -> dict[str, Any]:
        if event["body"] == "first":
            assert second_seen.wait(2)
        else:
            second_seen.set()
        return {"statusCode": 200}

    rec.answers["$default"] = answer
    async with running(rec, concurrent_messages=True) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        await ws.send_str("first")
        await ws.send_str("second")
        await wait_until(lambda: len(rec.of("$default")) == 2)
        await ws.close()
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
    assert gw.counters.handler_errors["$default"] == 0


# --- @connections ---------------------------------------------------------------------------


@async_test
async def test_boto3_post_get_delete_and_gone() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url, headers={"User-Agent": "caller/2"})
        (cid,) = gw.connection_ids()
        client = management_client(gw)

        await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b'{"type":"x"}')
        msg = await ws.receive()
        assert msg.type is aiohttp.WSMsgType.TEXT and msg.data == '{"type":"x"}'

        info = await asyncio.to_thread(client.get_connection, ConnectionId=cid)
        assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "caller/2"}
        assert info["ConnectedAt"] <= info["LastActiveAt"]
        connected_ms = rec.of("$connect")[0]["requestContext"]["connectedAt"]
        assert int(info["ConnectedAt"].timestamp() * 1000) == connected_ms

        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId="nope", Data=b"x")
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.get_connection, ConnectionId="nope")
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.delete_connection, ConnectionId="nope")

        await asyncio.to_thread(client.delete_connection, ConnectionId=cid)
        assert await close_code(ws) == 1000
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x")
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.delete_connection, ConnectionId=cid)
    assert len(rec.of("$disconnect")) == 1
    assert gw.counters.posts_delivered == 1 and gw.counters.posts_gone == 2


@async_test
async def test_posts_up_to_128_kb_are_delivered_and_larger_ones_refused() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url, max_msg_size=1 << 20)
        (cid,) = gw.connection_ids()
        client = management_client(gw)
        with pytest.raises(client.exceptions.PayloadTooLargeException):
            await asyncio.to_thread(
                client.post_to_connection, ConnectionId=cid, Data=b"x" * (MAX_POST_BYTES + 1)
            )
        await asyncio.to_thread(
            client.post_to_connection, ConnectionId=cid, Data=b"y" * MAX_POST_BYTES
        )
        assert await ws.receive_str() == "y" * MAX_POST_BYTES
        assert not ws.closed
    assert gw.counters.posts_too_large == 1
    assert gw.counters.posts_over_frame_limit == 1  # flagged: the voice path must stay ≤ 32 KB


@async_test
async def test_many_posts_arrive_in_order() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        (cid,) = gw.connection_ids()
        client = management_client(gw)
        count = 200

        def post_all() -> None:
            for i in range(count):
                client.post_to_connection(ConnectionId=cid, Data=f'{{"seq":{i}}}'.encode())

        poster = asyncio.create_task(asyncio.to_thread(post_all))
        received = [await ws.receive_str() for _ in range(count)]
        await poster
    assert received == [f'{{"seq":{i}}}' for i in range(count)]


@async_test
async def test_unsigned_connections_request_is_forbidden() -> None:
    async with running(Recorder()) as gw, aiohttp.ClientSession() as http:
        async with http.post(f"{gw.connections_endpoint_url}/@connections/abc", data=b"x") as r:
            assert r.status == 403
            assert r.headers["x-amzn-ErrorType"] == "ForbiddenException"


@pytest.mark.parametrize(("pieces", "status"), [(40, 200), (140, 413)])
@async_test
async def test_a_chunked_post_body_is_read_whole_and_bounded(pieces: int, status: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(pieces):  # 1 KB at a time, with pauses, without a Content-Length
            yield b"k" * 1024
            await asyncio.sleep(0)

    async with running(Recorder()) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url, max_msg_size=1 << 20)
        url = f"{gw.connections_endpoint_url}/@connections/{gw.connection_ids()[0]}"
        signed = {"Authorization": "AWS4-HMAC-SHA256 Credential=local/any"}
        async with http.post(url, data=body(), headers=signed) as response:
            assert response.status == status
        if status == 200:
            assert await ws.receive_str() == "k" * 1024 * pieces


@async_test
async def test_a_client_that_stops_reading_does_not_hold_up_posts_to_others() -> None:
    """Frames for a stuck client queue up to ``send_queue_frames``; then its POSTs get 429
    LimitExceededException at once, and after ``stalled_send_timeout_s`` it is dropped
    (``$disconnect`` with 1006, then 410). Posts to other clients flow all along."""
    rec = Recorder()
    limits = GatewayLimits(send_queue_frames=4, stalled_send_timeout_s=1.0)
    async with running(rec, limits=limits) as gw, aiohttp.ClientSession() as http:
        stuck = await RawClient.connect(gw.ws_url, receive_buffer=4096)
        healthy = await http.ws_connect(gw.ws_url)
        stuck_id, healthy_id = gw.connection_ids()
        client = management_client(gw)
        frame = b"z" * 16_000

        slowest_post = 0.0

        def post_until_throttled() -> list[str]:
            nonlocal slowest_post
            outcomes = []
            for _ in range(2000):
                started = time.monotonic()
                try:
                    client.post_to_connection(ConnectionId=stuck_id, Data=frame)
                    outcomes.append("ok")
                except client.exceptions.LimitExceededException:
                    outcomes.append("throttled")
                    return outcomes
                finally:
                    slowest_post = max(slowest_post, time.monotonic() - started)
            return outcomes

        outcomes = await asyncio.to_thread(post_until_throttled)
        assert outcomes[-1] == "throttled", outcomes
        assert slowest_post < 0.5  # answered at once, never waiting on the stuck client

        await asyncio.to_thread(client.post_to_connection, ConnectionId=healthy_id, Data=b"hi")
        assert await healthy.receive_str() == "hi"

        await wait_until(lambda: len(rec.of("$disconnect")) == 1, timeout=5)
        gone = rec.of("$disconnect")[0]["requestContext"]
        assert gone["connectionId"] == stuck_id and gone["disconnectStatusCode"] == 1006
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId=stuck_id, Data=b"x")
        assert gw.connection_ids() == [healthy_id]
        stuck.close()
    assert gw.counters.stalled_clients_dropped == 1
    assert gw.counters.posts_throttled == 1


# --- lifetime -------------------------------------------------------------------------------


@async_test
async def test_idle_connection_is_closed_after_the_idle_timeout() -> None:
    rec = Recorder()
    limits = GatewayLimits(idle_timeout_s=0.2)
    async with running(rec, limits=limits) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        for _ in range(4):  # activity keeps it open past the timeout
            await asyncio.sleep(0.08)
            await ws.send_str("tick")
        assert not ws.closed
        started = time.monotonic()
        assert await close_code(ws) == 1001
        assert 0.1 < time.monotonic() - started < 1.0
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)
    ctx = rec.of("$disconnect")[0]["requestContext"]
    assert (ctx["disconnectStatusCode"], ctx["disconnectReason"]) == (1001, "Going away")


@async_test
async def test_connection_is_closed_at_the_maximum_duration_even_when_active() -> None:
    rec = Recorder()
    limits = GatewayLimits(max_connection_s=0.4)
    async with running(rec, limits=limits) as gw, aiohttp.ClientSession() as http:
        ws = await http.ws_connect(gw.ws_url)
        started = time.monotonic()

        async def chatter() -> None:
            while not ws.closed:
                await ws.send_str("tick")
                await asyncio.sleep(0.05)

        talking = asyncio.create_task(chatter())
        assert await close_code(ws) == 1001
        talking.cancel()
        assert 0.3 < time.monotonic() - started < 1.5
        await wait_until(lambda: len(rec.of("$disconnect")) == 1)


@async_test
async def test_stop_closes_every_client_and_sends_each_disconnect() -> None:
    rec = Recorder()
    gw = ApiGatewayEmulator(rec.routes(*STANDARD_ROUTES))
    await gw.start()
    async with aiohttp.ClientSession() as http:
        clients = [await http.ws_connect(gw.ws_url) for _ in range(3)]
        assert gw.open_connections == 3
        await gw.stop()
        assert [await close_code(ws) for ws in clients] == [1001] * 3
    assert len(rec.of("$disconnect")) == 3
    assert {e["requestContext"]["disconnectStatusCode"] for e in rec.of("$disconnect")} == {1001}
    assert gw.open_connections == 0
    assert gw.counters.connections_opened == gw.counters.connections_closed == 3
    assert gw.counters.invocations == {"$connect": 3, "$disconnect": 3}


@async_test
async def test_stop_cuts_off_a_client_that_never_answers_the_close() -> None:
    rec = Recorder()
    limits = GatewayLimits(close_handshake_timeout_s=0.2)
    gw = ApiGatewayEmulator(rec.routes(*STANDARD_ROUTES), limits=limits)
    await gw.start()
    silent = await RawClient.connect(gw.ws_url)
    started = time.monotonic()
    await gw.stop()
    assert time.monotonic() - started < 1.0
    silent.close()
    assert len(rec.of("$disconnect")) == 1


@async_test
async def test_disconnect_is_sent_once_per_connection_under_churn() -> None:
    rec = Recorder()
    async with running(rec) as gw, aiohttp.ClientSession() as http:

        async def one_call(i: int) -> None:
            ws = await http.ws_connect(gw.ws_url)
            await ws.send_str(f"m{i}")
            if i % 3 == 0:
                await ws.send_bytes(b"bad")  # the gateway closes this one
                await close_code(ws)
            else:
                await ws.close()

        await asyncio.gather(*(one_call(i) for i in range(30)))
        await wait_until(lambda: len(rec.of("$disconnect")) == 30)
        assert gw.open_connections == 0
    ids = [e["requestContext"]["connectionId"] for e in rec.of("$disconnect")]
    assert len(set(ids)) == 30
    assert gw.counters.connections_opened == gw.counters.connections_closed == 30


# --- static page ----------------------------------------------------------------------------


@contextmanager
def static_site(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "index.html").write_text("<!doctype html><title>voice</title>")
    (tmp_path / "worklet.js").write_text("// worklet")
    (tmp_path.parent / "secret.txt").write_text("do not serve")
    yield tmp_path


@async_test
async def test_static_page_is_served_on_the_same_port(tmp_path: Path) -> None:
    with static_site(tmp_path) as site:
        async with running(Recorder(), static_dir=site) as gw, aiohttp.ClientSession() as http:
            async with http.get(gw.page_url) as page:
                assert page.status == 200
                assert "voice" in await page.text()
            async with http.get(gw.page_url + "worklet.js") as script:
                assert script.status == 200
                assert "javascript" in script.headers["Content-Type"]
            for path in ("missing.js", "..%2Fsecret.txt", "%2E%2E/secret.txt"):
                async with http.get(gw.page_url + path) as response:
                    assert response.status == 404, path
