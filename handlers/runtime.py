"""What every handler shares: AWS clients created once per container, the JSON logger, and
the pieces of the API Gateway event they read."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from wire import slots
from wire.log_record import configure

log = configure("voice-agent.handlers")

# Created at import so a warm container reuses the TCP/TLS connections. Endpoints come from
# the standard AWS_ENDPOINT_URL_* variables (set only by the local stack and tests).
_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5
)
sqs = boto3.client("sqs", config=_CLIENT_CONFIG)
dynamodb = boto3.client("dynamodb", config=_CLIENT_CONFIG)

SESSIONS_TABLE = os.environ.get("SESSIONS_TABLE", "")
# One FIFO queue per worker slot (wire/slots.py); a call's slot picks its queue.
AUDIO_QUEUE_URLS = slots.queue_urls_from_env(os.environ)
SESSION_TTL_SECONDS = int(os.environ.get("SESSION_TTL_SECONDS", "7200"))
MAX_SESSIONS = int(os.environ.get("MAX_SESSIONS", "0"))  # 0: no limit

OK: dict[str, Any] = {"statusCode": 200}


def request_context(event: dict[str, Any]) -> dict[str, Any]:
    ctx = event.get("requestContext")
    return ctx if isinstance(ctx, dict) else {}


def queue_url(ctx: dict[str, Any]) -> str:
    """The audio queue of the slot the authorizer placed this connection on."""
    return AUDIO_QUEUE_URLS[slots.slot_of(ctx, len(AUDIO_QUEUE_URLS))]


def log_fields(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Ids for every log line: never the body, which carries the caller's audio."""
    ctx = request_context(event)
    return {
        "connection_id": ctx.get("connectionId"),
        "request_id": ctx.get("requestId"),
        "route": ctx.get("routeKey"),
        "lambda_request_id": getattr(context, "aws_request_id", None),
    }
