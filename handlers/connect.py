"""$connect: record the session and have the worker open the model session right away,
so the model handshake overlaps the caller's first words instead of delaying the answer."""

from __future__ import annotations

import time
from typing import Any

from handlers.runtime import (
    AUDIO_QUEUE_URLS,
    MAX_SESSIONS,
    OK,
    SESSION_TTL_SECONDS,
    SESSIONS_TABLE,
    dynamodb,
    log,
    log_fields,
    queue_url,
    request_context,
    sqs,
)
from wire.queue import ConnectionInfo, EnvelopeKind, QueueEnvelope
from wire.slots import SESSION_ATTR_SLOT, slot_of


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = request_context(event)
    connection_id = ctx["connectionId"]
    identity = ctx.get("identity") or {}
    info = ConnectionInfo(
        source_ip=str(identity.get("sourceIp", "")),
        user_agent=str(identity.get("userAgent", ""))[:512],
    )
    now = int(time.time())
    if MAX_SESSIONS and live_sessions(now) >= MAX_SESSIONS:
        log.warning(
            "connect refused",
            extra={**log_fields(event, context), "reason": "session limit", "limit": MAX_SESSIONS},
        )
        # The handshake fails with 429; the body says why to callers that can read it.
        return {"statusCode": 429, "body": f"too many concurrent calls (limit {MAX_SESSIONS})"}
    dynamodb.put_item(
        TableName=SESSIONS_TABLE,
        Item={
            "connectionId": {"S": connection_id},
            "ttl": {"N": str(now + SESSION_TTL_SECONDS)},
            "createdAt": {"N": str(now)},
            "sourceIp": {"S": info.source_ip},
            "userAgent": {"S": info.user_agent},
            SESSION_ATTR_SLOT: {"N": str(slot_of(ctx, len(AUDIO_QUEUE_URLS)))},
        },
    )
    envelope = QueueEnvelope(
        kind=EnvelopeKind.OPEN,
        connection_id=connection_id,
        request_id=ctx.get("requestId") or f"{connection_id}-open",
        received_at_ms=int(ctx.get("requestTimeEpoch") or now * 1000),
        body=info.to_body(),
    )
    sqs.send_message(**envelope.to_send_message(queue_url(ctx)))
    log.info("connected", extra=log_fields(event, context))
    return OK


def live_sessions(now: int) -> int:
    """Rows whose TTL has not passed. DynamoDB deletes expired rows late, so the filter
    checks ``ttl`` itself. A scan costs a read per 4 KB of rows: fine up to a few
    thousand calls, the scale a per-stack limit is for."""
    count = 0
    kwargs: dict[str, Any] = {
        "TableName": SESSIONS_TABLE,
        "Select": "COUNT",
        "FilterExpression": "#ttl > :now",
        "ExpressionAttributeNames": {"#ttl": "ttl"},
        "ExpressionAttributeValues": {":now": {"N": str(now)}},
    }
    while True:
        page = dynamodb.scan(**kwargs)
        count += int(page.get("Count", 0))
        if "LastEvaluatedKey" not in page:
            return count
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
