"""The queue envelope: how a WebSocket event travels from API Gateway to the worker on SQS.

The message body is the client's frame exactly as received (for ``frame``) or a small JSON
object (for ``open`` and ``close``); who and what travel as message attributes. Keeping the
body raw means ``$default`` does no parsing at all, and an API Gateway AWS-service
integration (no Lambda) can build the very same message with a mapping template.

The queue is FIFO: the connection id is the message group, so one call's events arrive in
order, and API Gateway's per-message ``requestId`` is the deduplication id, so a retried
send is delivered once.

This module is imported by the Lambda handlers, so it uses the standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EnvelopeKind(StrEnum):
    OPEN = "open"  # $connect: open the model session now, before the first audio
    FRAME = "frame"  # $default: one client frame, body untouched
    CLOSE = "close"  # $disconnect: close the model session


# Message attribute names. The API Gateway mapping template of the lean path uses them too.
ATTR_CONNECTION_ID = "connection_id"
ATTR_KIND = "kind"
ATTR_RECEIVED_AT_MS = "received_at_ms"


@dataclass(frozen=True, slots=True)
class QueueEnvelope:
    """One event of one connection, as carried on the audio queue."""

    kind: EnvelopeKind
    connection_id: str
    request_id: str
    received_at_ms: int
    body: str = "{}"
    # Filled on receipt only: the SQS receipt handle and FIFO sequence number.
    receipt_handle: str | None = field(default=None, compare=False)
    sequence_number: int | None = field(default=None, compare=False)

    def to_send_message(self, queue_url: str) -> dict[str, Any]:
        """Keyword arguments for ``sqs.send_message``."""
        return {
            "QueueUrl": queue_url,
            "MessageBody": self.body,
            "MessageGroupId": self.connection_id,
            "MessageDeduplicationId": self.request_id,
            "MessageAttributes": {
                ATTR_CONNECTION_ID: {"DataType": "String", "StringValue": self.connection_id},
                ATTR_KIND: {"DataType": "String", "StringValue": self.kind.value},
                ATTR_RECEIVED_AT_MS: {
                    "DataType": "Number",
                    "StringValue": str(self.received_at_ms),
                },
            },
        }

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> QueueEnvelope:
        """Parse one message of ``sqs.receive_message`` (asked with all attributes).

        Raises ``ValueError`` for a message that is not ours; the caller deletes it and
        logs, so a stray message can never wedge a message group.
        """
        attrs = message.get("MessageAttributes") or {}
        try:
            connection_id = attrs[ATTR_CONNECTION_ID]["StringValue"]
            kind = EnvelopeKind(attrs[ATTR_KIND]["StringValue"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"not a voice-agent envelope: {exc!r}") from None
        received = attrs.get(ATTR_RECEIVED_AT_MS, {}).get("StringValue", "0")
        system = message.get("Attributes") or {}
        seq = system.get("SequenceNumber")
        return cls(
            kind=kind,
            connection_id=connection_id,
            request_id=system.get("MessageDeduplicationId", message.get("MessageId", "")),
            received_at_ms=int(float(received)),
            body=message.get("Body", ""),
            receipt_handle=message.get("ReceiptHandle"),
            sequence_number=int(seq) if seq is not None else None,
        )


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What ``$connect`` learns about a caller; the body of an ``open`` envelope."""

    source_ip: str = ""
    user_agent: str = ""

    def to_body(self) -> str:
        return json.dumps({"source_ip": self.source_ip, "user_agent": self.user_agent})

    @classmethod
    def from_body(cls, body: str) -> ConnectionInfo:
        try:
            obj = json.loads(body)
        except ValueError:
            return cls()
        if not isinstance(obj, dict):
            return cls()
        return cls(
            source_ip=str(obj.get("source_ip", "")), user_agent=str(obj.get("user_agent", ""))
        )


# ``receive_message`` arguments every consumer uses, so no attribute is ever left behind.
RECEIVE_ATTRIBUTES: dict[str, Any] = {
    "MessageAttributeNames": ["All"],
    "MessageSystemAttributeNames": ["SequenceNumber", "MessageDeduplicationId", "MessageGroupId"],
}
