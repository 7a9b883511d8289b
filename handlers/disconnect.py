"""$disconnect: forget the session and tell the worker to close the model session.

API Gateway delivers $disconnect on a best-effort basis; the TTL on the row and the
worker's own idle checks cover a lost one.
"""

from __future__ import annotations

import time
from typing import Any

from handlers.runtime import (
    OK,
    SESSIONS_TABLE,
    dynamodb,
    log,
    log_fields,
    queue_url,
    request_context,
    sqs,
)
from wire.queue import EnvelopeKind, QueueEnvelope


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = request_context(event)
    connection_id = ctx["connectionId"]
    dynamodb.delete_item(TableName=SESSIONS_TABLE, Key={"connectionId": {"S": connection_id}})
    envelope = QueueEnvelope(
        kind=EnvelopeKind.CLOSE,
        connection_id=connection_id,
        request_id=ctx.get("requestId") or f"{connection_id}-close",
        received_at_ms=int(ctx.get("requestTimeEpoch") or time.time() * 1000),
    )
    sqs.send_message(**envelope.to_send_message(queue_url(ctx)))
    log.info(
        "disconnected",
        extra={**log_fields(event, context), "status": ctx.get("disconnectStatusCode")},
    )
    return OK
