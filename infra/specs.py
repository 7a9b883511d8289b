"""The sessions table and the audio queues, specified once for the cloud and the local stack.

The Pulumi components (``infra.sessions``, ``infra.audio_queue``) and the local stack
(``create_local_resources``, against moto) build the very same table and queues from these
constants, so the code under test locally meets the configuration it meets in AWS.

Standard library only, and no Pulumi: the local stack imports this module without the
deploy extra installed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# --- sessions table (DynamoDB) ------------------------------------------------------------

SESSIONS_HASH_KEY = "connectionId"  # API Gateway's connection id; one row per call
SESSIONS_HASH_KEY_TYPE = "S"
SESSIONS_TTL_ATTRIBUTE = "ttl"  # epoch seconds, written by $connect
# On demand: a voice agent idles most of the day, and provisioned capacity would cost
# money while it does.
SESSIONS_BILLING_MODE = "PAY_PER_REQUEST"


def sessions_table_name(prefix: str) -> str:
    return f"{prefix}-sessions"


# --- audio queue (SQS FIFO) and its dead-letter queue --------------------------------------

# FIFO: the connection id is the message group, so one call's frames arrive in order while
# different calls are processed in parallel (wire/queue.py).
AUDIO_QUEUE_FIFO = True
# Senders pass MessageDeduplicationId = API Gateway's per-message requestId, so a retried
# send is delivered once; content-based deduplication would drop two identical audio frames.
AUDIO_QUEUE_CONTENT_BASED_DEDUPLICATION = False
# High-throughput FIFO: deduplication and the throughput quota are per message group (per
# call) instead of per queue, so many concurrent calls don't share one 300 msg/s budget.
AUDIO_QUEUE_DEDUPLICATION_SCOPE = "messageGroup"
AUDIO_QUEUE_FIFO_THROUGHPUT_LIMIT = "perMessageGroupId"
# Only a default for receivers that pass no WaitTimeSeconds (e.g. an operator's
# `aws sqs receive-message`); the worker long-polls with its own wait time.
AUDIO_QUEUE_RECEIVE_WAIT_SECONDS = 1
# A received, undeleted message locks its whole group (its call). The worker deletes right
# after dispatch, so a short timeout bounds how long a crashed worker can stall a call.
AUDIO_QUEUE_VISIBILITY_TIMEOUT_SECONDS = 10
# Audio older than a few minutes is of no use to a live call; don't keep it around.
AUDIO_QUEUE_RETENTION_SECONDS = 300
# Poison messages are kept a day for diagnosis, no longer: they carry callers' audio.
AUDIO_DLQ_RETENTION_SECONDS = 86_400
# A frame the worker failed to take this many times goes to the dead-letter queue instead
# of blocking its call's message group.
AUDIO_QUEUE_MAX_RECEIVE_COUNT = 5


def audio_queue_name(prefix: str, slot: int) -> str:
    """The audio queue of one worker slot (wire/slots.py): slot order is queue order."""
    return f"{prefix}-audio-{slot}.fifo"  # FIFO queue names must end in .fifo


def audio_dlq_name(prefix: str) -> str:
    return f"{prefix}-audio-dlq.fifo"  # a FIFO queue's dead-letter queue must be FIFO too


def audio_queue_attributes() -> dict[str, str]:
    """SQS ``CreateQueue`` attributes of the audio queue, redrive excepted."""
    return {
        "FifoQueue": "true",
        "ContentBasedDeduplication": str(AUDIO_QUEUE_CONTENT_BASED_DEDUPLICATION).lower(),
        "DeduplicationScope": AUDIO_QUEUE_DEDUPLICATION_SCOPE,
        "FifoThroughputLimit": AUDIO_QUEUE_FIFO_THROUGHPUT_LIMIT,
        "ReceiveMessageWaitTimeSeconds": str(AUDIO_QUEUE_RECEIVE_WAIT_SECONDS),
        "VisibilityTimeout": str(AUDIO_QUEUE_VISIBILITY_TIMEOUT_SECONDS),
        "MessageRetentionPeriod": str(AUDIO_QUEUE_RETENTION_SECONDS),
    }


def audio_dlq_attributes() -> dict[str, str]:
    """SQS ``CreateQueue`` attributes of the dead-letter queue."""
    return {
        "FifoQueue": "true",
        "ContentBasedDeduplication": "false",
        "MessageRetentionPeriod": str(AUDIO_DLQ_RETENTION_SECONDS),
    }


def redrive_policy(dlq_arn: str) -> str:
    """The audio queue's ``RedrivePolicy``: where poison messages go."""
    return json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": AUDIO_QUEUE_MAX_RECEIVE_COUNT}
    )


def redrive_allow_policy(source_queue_arns: Sequence[str]) -> str:
    """The dead-letter queue's ``RedriveAllowPolicy``: only the slots' audio queues may use it
    (SQS accepts at most 10 of them "byQueue"; infra.config caps the slots at that)."""
    return json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": list(source_queue_arns)})


# --- the local stack ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalResources:
    """What ``create_local_resources`` made: the values of SESSIONS_TABLE and
    AUDIO_QUEUE_URLS (one queue per worker slot, in slot order)."""

    table_name: str
    queue_urls: tuple[str, ...]
    dlq_url: str

    @property
    def queue_url(self) -> str:
        """Slot 0's queue: where a single-slot stack (and a connection without a slot) sends."""
        return self.queue_urls[0]


def create_local_resources(
    dynamodb_client: Any,
    sqs_client: Any,
    *,
    prefix: str = "voice-agent-local",
    slots: int = 1,
) -> LocalResources:
    """Create the sessions table, one audio queue per worker slot and their dead-letter queue
    with boto3 clients (e.g. on moto).

    Idempotent: existing resources are reused, so the local stack can call it on every start.
    """
    if slots < 1:
        raise ValueError(f"a stack has at least one worker slot, got {slots}")
    table_name = sessions_table_name(prefix)
    _create_sessions_table(dynamodb_client, table_name)

    dlq_url = sqs_client.create_queue(
        QueueName=audio_dlq_name(prefix), Attributes=audio_dlq_attributes()
    )["QueueUrl"]
    dlq_arn = _queue_arn(sqs_client, dlq_url)
    attributes = {**audio_queue_attributes(), "RedrivePolicy": redrive_policy(dlq_arn)}
    queue_urls = tuple(
        sqs_client.create_queue(QueueName=audio_queue_name(prefix, slot), Attributes=attributes)[
            "QueueUrl"
        ]
        for slot in range(slots)
    )
    sqs_client.set_queue_attributes(
        QueueUrl=dlq_url,
        Attributes={
            "RedriveAllowPolicy": redrive_allow_policy(
                [_queue_arn(sqs_client, url) for url in queue_urls]
            )
        },
    )
    return LocalResources(table_name=table_name, queue_urls=queue_urls, dlq_url=dlq_url)


def _create_sessions_table(client: Any, table_name: str) -> None:
    try:
        client.create_table(
            TableName=table_name,
            AttributeDefinitions=[
                {"AttributeName": SESSIONS_HASH_KEY, "AttributeType": SESSIONS_HASH_KEY_TYPE}
            ],
            KeySchema=[{"AttributeName": SESSIONS_HASH_KEY, "KeyType": "HASH"}],
            BillingMode=SESSIONS_BILLING_MODE,
        )
    except Exception as exc:  # botocore's ClientError, without importing botocore here
        if _error_code(exc) != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(
        TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    ttl = client.describe_time_to_live(TableName=table_name)["TimeToLiveDescription"]
    # Enabling TTL twice is an error in DynamoDB, so only ask when it is off.
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
        client.update_time_to_live(
            TableName=table_name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": SESSIONS_TTL_ATTRIBUTE},
        )


def _queue_arn(client: Any, queue_url: str) -> str:
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""
