"""$default: put the client's frame on the audio queue, untouched.

No parsing here: validation happens once, in the worker's session core, which answers bad
input with an ``error`` event. That keeps this function a few milliseconds long and lets
the lean path (an API Gateway SQS integration, no Lambda) produce the same message.
"""

from __future__ import annotations

import time
from typing import Any

from handlers.runtime import OK, log, log_fields, queue_url, request_context, sqs
from wire.queue import EnvelopeKind, QueueEnvelope


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = request_context(event)
    body = event.get("body")
    if not isinstance(body, str):
        body = ""  # the worker answers an empty frame with invalid_json; nothing is lost
    envelope = QueueEnvelope(
        kind=EnvelopeKind.FRAME,
        connection_id=ctx["connectionId"],
        request_id=ctx["requestId"],
        received_at_ms=int(ctx.get("requestTimeEpoch") or time.time() * 1000),
        body=body,
    )
    sqs.send_message(**envelope.to_send_message(queue_url(ctx)))
    log.debug("frame queued", extra={**log_fields(event, context), "bytes": len(body)})
    return OK
