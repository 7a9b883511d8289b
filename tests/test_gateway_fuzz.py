"""Fuzz of the gateway path: random client traffic through the API Gateway emulator.

Hypothesis draws one to three connections and a sequence of frames over them: text (random
unicode, JSON objects with odd ``action`` values, JSON-ish junk, empty, nesting deep enough to
break a JSON parser, and frames at and just past the 32 KB limit in UTF-8 bytes), binary frames
and pings. They go through ``ApiGatewayEmulator`` in-process, whose route targets are recorders
(no AWS, no production handler). Properties:

- the emulator never raises: no ERROR log line, no unhandled task exception, no handler error;
- each connection stays open, or closes with the documented code of the first frame that broke
  the rules (1003 binary, 1009 over 32 KB); the others end with 1000 (the client closed) or
  1001 (the gateway stopped), and ``$disconnect`` reports the same code, once per connection;
- every text frame up to 32 KB sent before that reaches the route target exactly once, as its
  ``body``, in order per connection (as a multiset when messages are handled concurrently);
- route selection on ``$request.body.action`` never crashes: a message goes to the custom
  route only for ``"action": "echo"``, else to ``$default``, or with no ``$default`` gets
  API Gateway's ``Forbidden`` reply and the connection goes on;
- after any sequence a fresh connection still works.

Derandomized with a bounded number of examples, so CI runs the same cases in a few seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emulators.api_gateway import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_UNSUPPORTED_DATA,
    ApiGatewayEmulator,
    GatewayLimits,
    select_route,
)
from tests.test_api_gateway_emulator import Recorder, async_test, close_code, running, wait_until
from wire.client import MAX_FRAME_BYTES

CUSTOM_ROUTE = "echo"
MESSAGE_ROUTES = ("$default", CUSTOM_ROUTE)
EXAMPLE_TIMEOUT_S = 20
# After a connection broke the rules, a few small frames still go out on it (the gateway must
# ignore them); large ones would only fill socket buffers nobody reads any more.
AFTER_CLOSE_FRAMES = 3
AFTER_CLOSE_MAX_BYTES = 1_024
FRESH_BODY = '{"action": "echo", "fresh": "after the fuzzed traffic"}'
FORBIDDEN = re.compile(
    r'\{"message": "Forbidden", "connectionId":"(?P<cid>[^"]+)", "requestId":"[^"]+"\}'
)


# --- what a client sends --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    body: str

    @property
    def size(self) -> int:
        return len(self.body.encode())

    def __repr__(self) -> str:  # huge bodies would drown a failure report
        shown = self.body if len(self.body) <= 80 else f"{self.body[:40]!r}...({self.size} B)"
        return f"Text({shown!r})"


@dataclass(frozen=True, slots=True)
class Binary:
    data: bytes

    def __repr__(self) -> str:
        return f"Binary({len(self.data)} B)"


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


Frame = Text | Binary | Ping

# UTF-8 encodable text (no lone surrogates: a client cannot send them in a text frame).
_unicode = st.text(st.characters(codec="utf-8"), max_size=300)

# Near misses of the custom route, the reserved route keys, and a lone surrogate (which a
# client can only send JSON-escaped).
_ACTION_LOOKALIKES = (
    CUSTOM_ROUTE, "ECHO", " echo", "echo\u0000", "\u0435cho", "$default", "$connect",
    "$disconnect", "audio", "ping", "", "\ud800",
)  # fmt: skip
_odd_actions = st.one_of(
    st.sampled_from(_ACTION_LOOKALIKES),
    st.sampled_from(_ACTION_LOOKALIKES),  # twice: the near misses matter most
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities too: json.dumps writes them, clients may send them
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.lists(st.sampled_from([CUSTOM_ROUTE, 1, None]), max_size=3),
    st.dictionaries(st.just("action"), st.just(CUSTOM_ROUTE), max_size=1),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def _dumps(obj: dict[str, Any], ascii_only: bool) -> str:
    """JSON as a client writes it; a lone surrogate can only travel escaped."""
    text = json.dumps(obj, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(obj)
    return text


_json_objects = st.builds(
    lambda action, rest, has_action, ascii_only: _dumps(
        {**rest, "action": action} if has_action else rest, ascii_only
    ),
    _odd_actions,
    st.dictionaries(st.sampled_from(["audio", "seq", "text", "x", "Action"]), _json_values),
    st.booleans(),
    st.booleans(),
)
_junk = st.sampled_from(
    ["", " ", "{", "}", "null", '"echo"', '["echo"]', '{"action": "echo"', '{"action": echo}',
     '{"action": "echo", "action": 7}', '{"action": 7, "action": "echo"}', "NaN", "1" * 5_000,
     "[" * 30_000, '{"a":' * 5_000]  # parsers give up on nesting and on 5,000-digit numbers
)  # fmt: skip


@st.composite
def _sized_text(draw: st.DrawFn) -> str:
    """A frame of exactly ``target`` UTF-8 bytes, near or past the 32 KB frame limit, filled
    with one character of 1 to 4 bytes (so the limit falls inside or between characters)."""
    target = draw(
        st.sampled_from([MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1])
        | st.integers(MAX_FRAME_BYTES - 8, MAX_FRAME_BYTES + 8)
        | st.sampled_from([48 * 1024, 128 * 1024, 128 * 1024 + 1])
    )
    head = draw(st.sampled_from(['{"action":"audio","audio":"', '{"action":"echo","t":"', ""]))
    fill = draw(st.sampled_from(["A", "é", "€", "𝄞"]))
    room = target - len(head.encode())
    count = room // len(fill.encode())
    return head + fill * count + "a" * (room - count * len(fill.encode()))


_texts = st.one_of(_unicode, _json_objects, _json_objects, _junk, _sized_text()).map(Text)
_binaries = st.one_of(
    st.binary(max_size=64),
    st.integers(MAX_FRAME_BYTES - 1, MAX_FRAME_BYTES + 2).map(lambda n: b"\x01" * n),
).map(Binary)
_pings = st.binary(max_size=125).map(Ping)  # a control frame carries at most 125 bytes
_frames = st.one_of(_texts, _texts, _texts, _binaries, _pings)  # mostly text, as in real use


@dataclass(frozen=True, slots=True)
class Plan:
    """One example: the gateway's set-up and what each client does."""

    connections: int
    frames: list[tuple[int, Frame]]  # (which connection, frame), in sending order
    stays_open: list[bool]  # per connection: left for the gateway's stop, or closed by it
    has_default_route: bool
    concurrent_messages: bool


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    n = draw(st.integers(1, 3))
    return Plan(
        connections=n,
        frames=draw(st.lists(st.tuples(st.integers(0, n - 1), _frames), min_size=4, max_size=30)),
        stays_open=draw(st.lists(st.booleans(), min_size=n, max_size=n)),
        # Mostly as deployed (with $default); Hypothesis would otherwise favour False.
        has_default_route=draw(st.sampled_from((True, True, False))),
        concurrent_messages=draw(st.booleans()),
    )


# --- the oracle -----------------------------------------------------------------------------


def expected_route(body: str, has_default_route: bool) -> str | None:
    """API Gateway's choice under ``$request.body.action``, written independently of
    ``select_route``: the custom route for exactly ``"action": "echo"``, else ``$default``."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and parsed.get("action") == CUSTOM_ROUTE:
        return CUSTOM_ROUTE
    return "$default" if has_default_route else None


@dataclass(slots=True)
class Client:
    """One client connection and what the gateway should make of its traffic."""

    tag: str
    ws: aiohttp.ClientWebSocketResponse
    routed: list[tuple[str, str]] = field(default_factory=list)  # (route, body) expected
    forbidden: int = 0  # messages with no route: each gets a Forbidden reply
    close_codes: frozenset[int] = frozenset()  # set once a frame broke the rules
    sent_after_close: int = 0

    @property
    def broke_rules(self) -> bool:
        return bool(self.close_codes)


class ErrorLog(logging.Handler):
    """Collects every ERROR record any logger emits (aiohttp's "Error handling request",
    the emulator's "failed to route a message", asyncio's unretrieved task exceptions)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- the run --------------------------------------------------------------------------------


async def _send(client: Client, frame: Frame) -> None:
    if isinstance(frame, Text):
        await client.ws.send_str(frame.body)
    elif isinstance(frame, Binary):
        await client.ws.send_bytes(frame.data)
    else:
        await client.ws.ping(frame.payload)


def _expect(client: Client, frame: Frame, plan: Plan) -> None:
    """Update what the gateway should do after ``frame`` on an open, rule-abiding client."""
    if isinstance(frame, Binary):
        # Over 32 KB and binary: AWS documents both codes and not which wins.
        over = len(frame.data) > MAX_FRAME_BYTES
        client.close_codes = frozenset(
            {CLOSE_UNSUPPORTED_DATA, CLOSE_MESSAGE_TOO_BIG} if over else {CLOSE_UNSUPPORTED_DATA}
        )
    elif isinstance(frame, Text):
        if frame.size > MAX_FRAME_BYTES:
            client.close_codes = frozenset({CLOSE_MESSAGE_TOO_BIG})
            return
        route = expected_route(frame.body, plan.has_default_route)
        if route is None:
            client.forbidden += 1
        else:
            client.routed.append((route, frame.body))


async def _read_replies(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    replies: list[str] = []
    for _ in range(count):
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=5)
        except TimeoutError:
            raise AssertionError(f"{len(replies)} of {count} Forbidden replies came") from None
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        replies.append(msg.data)
    return replies


async def _read_until_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[str], int | None]:
    texts: list[str] = []
    while True:
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            texts.append(msg.data)
        elif msg.type is aiohttp.WSMsgType.CLOSE:
            return texts, int(msg.data)
        elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            return texts, ws.close_code


async def _send_everything(clients: list[Client], plan: Plan) -> None:
    for index, frame in plan.frames:
        client = clients[index]
        if not client.broke_rules:
            await _send(client, frame)
            _expect(client, frame, plan)
            continue
        small = isinstance(frame, Ping) or (
            len(frame.data if isinstance(frame, Binary) else frame.body.encode())
            <= AFTER_CLOSE_MAX_BYTES
        )
        if small and client.sent_after_close < AFTER_CLOSE_FRAMES:
            client.sent_after_close += 1
            try:
                await _send(client, frame)  # must be ignored
            except (ConnectionError, aiohttp.ClientError):
                pass  # the gateway already hung up: also fine


async def _fresh_connection_works(http: aiohttp.ClientSession, gw: ApiGatewayEmulator,
                                  rec: Recorder) -> None:  # fmt: skip
    fresh = await http.ws_connect(f"{gw.ws_url}?n=fresh")
    await fresh.send_str(FRESH_BODY)
    await wait_until(lambda: any(e.get("body") == FRESH_BODY for e in rec.events))
    await fresh.close()


async def _end_every_connection(
    clients: list[Client], plan: Plan, gw: ApiGatewayEmulator
) -> dict[str, int | None]:
    """Read each client to its end (the gateway's close, the client's own, or the gateway
    stopping); return the close code each client saw."""
    ended: dict[str, int | None] = {}
    stay_readers = {}
    for client, stays in zip(clients, plan.stays_open, strict=True):
        if client.broke_rules:
            texts, code = await asyncio.wait_for(_read_until_close(client.ws), 10)
            ended[client.tag] = code
            # Replies queued before the close may or may not have gone out first.
            assert len(texts) <= client.forbidden
            assert all(FORBIDDEN.fullmatch(t) for t in texts), texts
            continue
        assert not client.ws.closed, f"{client.tag} was closed: {client.ws.close_code}"
        replies = await _read_replies(client.ws, client.forbidden)
        assert all(FORBIDDEN.fullmatch(r) for r in replies), replies
        if stays:
            stay_readers[client.tag] = asyncio.create_task(close_code(client.ws))
        else:
            await client.ws.close(code=CLOSE_NORMAL)
            ended[client.tag] = CLOSE_NORMAL
    await gw.stop()  # closes the connections left open with 1001
    for tag, reader in stay_readers.items():
        ended[tag] = await asyncio.wait_for(reader, 10)
    return ended


def _check(
    clients: list[Client], plan: Plan, ended: dict[str, int | None], rec: Recorder,
    gw: ApiGatewayEmulator,
) -> None:  # fmt: skip
    by_tag = {
        e["queryStringParameters"]["n"]: e["requestContext"]["connectionId"]
        for e in rec.of("$connect")
    }
    assert set(by_tag) == {c.tag for c in clients} | {"fresh"}
    disconnects = Counter(e["requestContext"]["connectionId"] for e in rec.of("$disconnect"))
    assert set(disconnects.values()) == {1} and set(disconnects) == set(by_tag.values())
    disconnect_code = {
        e["requestContext"]["connectionId"]: e["requestContext"]["disconnectStatusCode"]
        for e in rec.of("$disconnect")
    }

    def messages(cid: str) -> list[tuple[str, str]]:
        return [
            (e["requestContext"]["routeKey"], e["body"])
            for e in rec.events
            if e["requestContext"]["connectionId"] == cid
            and e["requestContext"]["eventType"] == "MESSAGE"
        ]

    for client, stays in zip(clients, plan.stays_open, strict=True):
        cid = by_tag[client.tag]
        if client.broke_rules:
            wanted = client.close_codes
        else:
            wanted = frozenset({CLOSE_GOING_AWAY if stays else CLOSE_NORMAL})
        assert ended[client.tag] in wanted, (client.tag, ended[client.tag], wanted)
        assert disconnect_code[cid] in wanted, (client.tag, disconnect_code[cid], wanted)
        delivered = messages(cid)
        if plan.concurrent_messages:
            assert Counter(delivered) == Counter(client.routed), client.tag
        else:
            assert delivered == client.routed, client.tag
        event(f"connection ended with {ended[client.tag]}")
        for route in sorted({route for route, _ in delivered}):
            event(f"messages routed to {route}")
        if client.forbidden:
            event("Forbidden replies")

    assert messages(by_tag["fresh"]) == [(CUSTOM_ROUTE, FRESH_BODY)]
    assert disconnect_code[by_tag["fresh"]] == CLOSE_NORMAL
    assert gw.open_connections == 0
    assert gw.counters.connections_opened == gw.counters.connections_closed == len(by_tag)
    assert gw.counters.connects_rejected == 0
    assert not gw.counters.handler_errors


async def run_plan(plan: Plan) -> None:
    event(f"$default route: {plan.has_default_route}")
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
    rec = Recorder()
    routes = ["$connect", "$disconnect", CUSTOM_ROUTE]
    if plan.has_default_route:
        routes.append("$default")
    gw = ApiGatewayEmulator(
        rec.routes(*routes),
        # Generous: a slow CI machine must not turn a clean close into a dropped one (1006).
        limits=GatewayLimits(close_handshake_timeout_s=5.0),
        concurrent_messages=plan.concurrent_messages,
    )
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            clients = [
                Client(f"c{i}", await http.ws_connect(f"{gw.ws_url}?n=c{i}"))
                for i in range(plan.connections)
            ]
            await _send_everything(clients, plan)
            await _fresh_connection_works(http, gw, rec)
            ended = await _end_every_connection(clients, plan, gw)
    finally:
        await gw.stop()  # a no-op once stopped
    _check(clients, plan, ended, rec, gw)
    assert not loop_errors, loop_errors


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures replay locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(plan=plans())
def test_random_client_traffic_through_the_gateway(plan: Plan) -> None:
    errors = ErrorLog()
    root = logging.getLogger()
    root.addHandler(errors)
    try:
        asyncio.run(asyncio.wait_for(run_plan(plan), EXAMPLE_TIMEOUT_S))
    finally:
        root.removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(body=st.one_of(_json_objects, _junk, _unicode), has_default=st.booleans())
def test_route_selection_on_odd_actions_never_raises(body: str, has_default: bool) -> None:
    routes = dict.fromkeys(("$connect", "$disconnect", CUSTOM_ROUTE), 1)
    if has_default:
        routes["$default"] = 1
    assert select_route(body, routes) == expected_route(body, has_default)


@async_test
async def test_disconnect_reports_the_clients_close_code_with_replies_still_queued() -> None:
    """A reply still queued when the client's close arrives fails to send; the close code the
    client sent must stand (it used to be overwritten with 1006). Found while writing the
    fuzz test above, which reads every reply before closing and so cannot provoke it."""
    rec = Recorder()
    async with running(rec, "$connect", "$disconnect", CUSTOM_ROUTE) as gw:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(gw.ws_url)
            for _ in range(50):
                await ws.send_str("no route")  # each earns a Forbidden reply, queued for it
            await ws.close(code=CLOSE_NORMAL)
            assert ws.close_code == CLOSE_NORMAL  # the client's side of the close is clean
            await wait_until(lambda: len(rec.of("$disconnect")) == 1)
    assert rec.of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == CLOSE_NORMAL
