"""The ``$connect`` REQUEST authorizer: who may open a call.

Browsers cannot set headers on a WebSocket, so the token travels as the ``token`` query
parameter (wire/token.py). A connect without a valid token is refused at the handshake
(401 for a missing token, 403 for a bad one) and never reaches ``$connect``, so it costs
no session row, no queue message and no model session.

An allowed connection is also placed on a worker slot (wire/slots.py): the live slot with
the fewest calls, returned in the authorizer context so every later route of the
connection finds its worker's queue without a lookup.

Optionally, ``ALLOWED_ORIGINS`` (comma-separated) limits which web pages may connect; a
non-browser caller sends no Origin and is judged by its token alone.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import boto3
from botocore.config import Config

from wire import slots
from wire import token as tokens
from wire.log_record import configure

log = configure("voice-agent.authorizer")

_CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5
)
secrets = boto3.client("secretsmanager", config=_CLIENT_CONFIG)
dynamodb = boto3.client("dynamodb", config=_CLIENT_CONFIG)
SECRET_ARN = os.environ.get("AUTH_SECRET_ARN", "")
AUDIENCE = os.environ.get("TOKEN_AUDIENCE", "")
ALLOWED_ORIGINS = frozenset(
    o.strip().rstrip("/") for o in os.environ.get("ALLOWED_ORIGINS", "").split(",") if o.strip()
)
SESSIONS_TABLE = os.environ.get("SESSIONS_TABLE", "")
AUDIO_QUEUE_URLS = slots.queue_urls_from_env(os.environ)
# The secret is read once per container and again after this long, so a rotation takes
# effect within minutes without a call to Secrets Manager per connect.
SECRET_MAX_AGE_S = 300


class _SecretCache:
    def __init__(self) -> None:
        self.value = b""
        self.fetched_at = 0.0

    def get(self, *, refresh: bool = False) -> bytes:
        if refresh or not self.value or time.monotonic() - self.fetched_at > SECRET_MAX_AGE_S:
            response = secrets.get_secret_value(SecretId=SECRET_ARN)
            self.value = response.get("SecretString", "").encode()
            self.fetched_at = time.monotonic()
        return self.value

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.fetched_at


_secret = _SecretCache()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    ctx = event.get("requestContext") or {}
    fields = {"connection_id": ctx.get("connectionId"), "request_id": ctx.get("requestId")}
    query = event.get("queryStringParameters") or {}
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}

    origin = str(headers.get("origin", "")).rstrip("/")
    if ALLOWED_ORIGINS and origin and origin not in ALLOWED_ORIGINS:
        log.warning(
            "connect refused",
            extra={**fields, "reason": "origin not allowed", "origin": origin[:200]},
        )
        return _policy("Deny", event["methodArn"])

    token = query.get("token")
    if not token:
        log.info("connect refused", extra={**fields, "reason": "no token"})
        raise Exception("Unauthorized")  # API Gateway's convention for a 401
    try:
        claims = tokens.verify(token, _secret.get(), AUDIENCE)
    except tokens.TokenError as first:
        # Maybe the secret was rotated since we read it: read it again, once.
        if _secret.age_s < 30:
            return _refuse(event, fields, first)
        try:
            claims = tokens.verify(token, _secret.get(refresh=True), AUDIENCE)
        except tokens.TokenError as second:
            return _refuse(event, fields, second)
    slot = place(fields)
    log.info("connect allowed", extra={**fields, "expires_at": claims.expires_at, "slot": slot})
    context_out: dict[str, Any] = {
        "tokenExpiresAt": claims.expires_at,
        slots.CONTEXT_SLOT: str(slot),
        slots.CONTEXT_QUEUE_URL: AUDIO_QUEUE_URLS[slot] if AUDIO_QUEUE_URLS else "",
    }
    if claims.subject:
        context_out["subject"] = claims.subject[:128]
    return _policy("Allow", event["methodArn"], context_out)


def place(fields: dict[str, Any]) -> int:
    """The slot for a new call: read every slot's lease item (one batch read), choose
    (wire.slots.choose_slot), and count the call on the chosen slot at once, so the next
    connects before the worker's heartbeat already see it. A failed read places at random:
    the call still works on any slot a worker holds, it is only less evenly spread."""
    count = len(AUDIO_QUEUE_URLS)
    if count <= 1:
        return 0  # one slot: no reads at all
    now_ms = int(time.time() * 1000)
    try:
        states = _read_slots(count)
        slot = slots.choose_slot(states, now_ms)
        dynamodb.update_item(
            TableName=SESSIONS_TABLE,
            Key={"connectionId": {"S": slots.slot_key(slot)}},
            UpdateExpression="ADD #sessions :one",
            ExpressionAttributeNames={"#sessions": slots.ATTR_SESSIONS},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    except Exception as exc:  # noqa: BLE001 - placement must never refuse a valid caller
        slot = random.randrange(count)
        log.warning("slot placement failed", extra={**fields, "error": repr(exc), "slot": slot})
    return slot


def _read_slots(count: int) -> list[slots.SlotState]:
    keys = [{"connectionId": {"S": slots.slot_key(i)}} for i in range(count)]
    items: dict[str, dict[str, Any]] = {}
    pending: dict[str, Any] = {SESSIONS_TABLE: {"Keys": keys}}
    for _ in range(3):  # unprocessed keys are retried twice, then treated as free slots
        response = dynamodb.batch_get_item(RequestItems=pending)
        for item in response.get("Responses", {}).get(SESSIONS_TABLE, []):
            items[item["connectionId"]["S"]] = item
        pending = response.get("UnprocessedKeys") or {}
        if not pending:
            break
    return [slots.SlotState.from_item(i, items.get(slots.slot_key(i))) for i in range(count)]


def _refuse(event: dict[str, Any], fields: dict[str, Any], error: Exception) -> dict[str, Any]:
    log.info("connect refused", extra={**fields, "reason": str(error)})
    return _policy("Deny", event["methodArn"])


def _policy(effect: str, method_arn: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    policy: dict[str, Any] = {
        "principalId": "caller",
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": effect, "Resource": method_arn}
            ],
        },
    }
    if context:
        policy["context"] = context
    return policy
