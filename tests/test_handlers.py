"""The Lambda handlers against moto in server mode, with events shaped as API Gateway's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from tests.aws_local import MotoStack, handler_env, load_handlers, moto_server
from wire.queue import RECEIVE_ATTRIBUTES, ConnectionInfo, EnvelopeKind, QueueEnvelope

CONTEXT = SimpleNamespace(aws_request_id="lambda-req-1", function_name="test")


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[MotoStack, dict]]:
    with moto_server() as moto, handler_env(moto, SESSION_TTL_SECONDS="600"):
        yield moto, load_handlers()


def event(route: str, connection_id: str, request_id: str, body: str | None = None) -> dict:
    ctx = {
        "routeKey": route,
        "eventType": {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}.get(route, "MESSAGE"),
        "connectionId": connection_id,
        "requestId": request_id,
        "requestTimeEpoch": 1_700_000_000_123,
        "stage": "local",
        "identity": {"sourceIp": "203.0.113.9", "userAgent": "pytest/1"},
    }
    out = {"requestContext": ctx, "isBase64Encoded": False}
    if body is not None:
        out["body"] = body
    return out


def drain(moto: MotoStack) -> list[QueueEnvelope]:
    got: list[QueueEnvelope] = []
    while True:
        response = moto.sqs.receive_message(
            QueueUrl=moto.resources.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            **RECEIVE_ATTRIBUTES,
        )
        messages = response.get("Messages", [])
        if not messages:
            return got
        for message in messages:
            got.append(QueueEnvelope.from_message(message))
            moto.sqs.delete_message(
                QueueUrl=moto.resources.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )


def test_connect_writes_the_session_row_and_queues_an_open(stack) -> None:
    moto, handlers = stack
    before = int(time.time())
    assert handlers["connect"].handler(event("$connect", "c1=", "r1"), CONTEXT) == {
        "statusCode": 200
    }
    row = moto.dynamodb.get_item(
        TableName=moto.resources.table_name, Key={"connectionId": {"S": "c1="}}
    )["Item"]
    assert before + 600 <= int(row["ttl"]["N"]) <= int(time.time()) + 600
    assert row["sourceIp"]["S"] == "203.0.113.9" and row["userAgent"]["S"] == "pytest/1"
    assert int(row["createdAt"]["N"]) >= before
    (opened,) = drain(moto)
    assert opened.kind is EnvelopeKind.OPEN and opened.connection_id == "c1="
    assert ConnectionInfo.from_body(opened.body).source_ip == "203.0.113.9"


def test_default_queues_the_frame_untouched_in_order(stack) -> None:
    moto, handlers = stack
    bodies = ['{"action":"audio","audio":"AAAA"}', "not even json", '{"action":"ping"}']
    for i, body in enumerate(bodies):
        handlers["default"].handler(event("$default", "c2=", f"m{i}", body), CONTEXT)
    frames = drain(moto)
    assert [f.body for f in frames] == bodies
    assert {f.kind for f in frames} == {EnvelopeKind.FRAME}
    assert [f.request_id for f in frames] == ["m0", "m1", "m2"]
    assert all(f.received_at_ms == 1_700_000_000_123 for f in frames)


def test_a_retried_send_is_delivered_once(stack) -> None:
    moto, handlers = stack
    frame = event("$default", "c3=", "same-request", '{"action":"ping"}')
    handlers["default"].handler(frame, CONTEXT)
    handlers["default"].handler(frame, CONTEXT)  # Lambda retry: same API Gateway requestId
    assert len(drain(moto)) == 1


def test_default_without_a_body_still_queues_a_frame_for_the_worker_to_refuse(stack) -> None:
    moto, handlers = stack
    handlers["default"].handler(event("$default", "c4=", "nobody"), CONTEXT)
    (frame,) = drain(moto)
    assert frame.body == ""


def test_disconnect_deletes_the_row_and_queues_a_close(stack) -> None:
    moto, handlers = stack
    handlers["connect"].handler(event("$connect", "c5=", "r5"), CONTEXT)
    handlers["disconnect"].handler(event("$disconnect", "c5=", "r6"), CONTEXT)
    item = moto.dynamodb.get_item(
        TableName=moto.resources.table_name, Key={"connectionId": {"S": "c5="}}
    )
    assert "Item" not in item
    kinds = [e.kind for e in drain(moto)]
    assert kinds == [EnvelopeKind.OPEN, EnvelopeKind.CLOSE]


def test_connect_beyond_the_session_limit_is_refused_with_a_reason(stack) -> None:
    moto, handlers = stack
    # moto's state is per process: count the rows other tests left, and allow two more.
    baseline = handlers["connect"].live_sessions(int(time.time()))
    limit = baseline + 2
    with handler_env(moto, MAX_SESSIONS=str(limit)):
        connect = load_handlers()["connect"]
    try:
        statuses = [
            connect.handler(event("$connect", f"L{i}=", f"lr{i}"), CONTEXT)["statusCode"]
            for i in range(3)
        ]
        assert statuses == [200, 200, 429]
        refused = connect.handler(event("$connect", "L9=", "lr9"), CONTEXT)
        assert f"limit {limit}" in refused["body"]
        # An expired row (DynamoDB deletes late) does not count against the limit.
        moto.dynamodb.update_item(
            TableName=moto.resources.table_name,
            Key={"connectionId": {"S": "L0="}},
            UpdateExpression="SET #t = :past",
            ExpressionAttributeNames={"#t": "ttl"},
            ExpressionAttributeValues={":past": {"N": "1"}},
        )
        assert connect.handler(event("$connect", "L3=", "lr3"), CONTEXT)["statusCode"] == 200
    finally:
        drain(moto)
        with handler_env(moto, SESSION_TTL_SECONDS="600"):
            handlers.update(load_handlers())
