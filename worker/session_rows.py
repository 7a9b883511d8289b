"""Transport: the worker's reads and writes of session rows (DynamoDB, on the I/O pool).

The worker touches a row only when a call changes hands: the worker handing over saves the
call's state on the row (wire/handover.py), and the worker taking over reads it when the
first frame of a call it does not hold arrives. Ordinary frames never cost a read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from wire.handover import ATTR_HANDOVER, CallHandover, HandoverError

log = logging.getLogger("voice-agent.worker.rows")

_KEY = "connectionId"
_TTL = "ttl"


@dataclass(frozen=True, slots=True)
class SessionRow:
    connection_id: str
    handover: CallHandover | None


class SessionRows:
    def __init__(self, dynamodb: Any, table: str, executor: Executor) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self._executor = executor

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self, connection_id: str) -> SessionRow | None:
        """The live row of a call, or None if the call is over (no row, or its ``ttl`` has
        passed: DynamoDB deletes expired rows late, so the reader checks)."""
        return await self._run(self._load, connection_id)

    def _load(self, connection_id: str) -> SessionRow | None:
        item = self._dynamodb.get_item(
            TableName=self._table, Key={_KEY: {"S": connection_id}}, ConsistentRead=True
        ).get("Item")
        if not item:
            return None
        try:
            expires = int(item.get(_TTL, {}).get("N", "0"))
        except ValueError:
            expires = 0
        if expires and expires < time.time():
            return None
        try:
            handover = CallHandover.from_attributes(item)
        except HandoverError as exc:
            log.warning(
                "unreadable handover state ignored",
                extra={"connection_id": connection_id, "error": str(exc)},
            )
            handover = None
        return SessionRow(connection_id, handover)

    async def save_handover(self, connection_id: str, handover: CallHandover) -> bool:
        """Put the call's state on its row; False if the row is gone (the caller left)."""
        try:
            await self._run(self._save, connection_id, handover)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            log.warning(
                "handover not saved", extra={"connection_id": connection_id, "error": repr(exc)}
            )
            return False
        except BotoCoreError as exc:
            log.warning(
                "handover not saved", extra={"connection_id": connection_id, "error": repr(exc)}
            )
            return False
        return True

    def _save(self, connection_id: str, handover: CallHandover) -> None:
        attributes = handover.to_attributes()
        names = {f"#a{i}": name for i, name in enumerate(attributes)}
        values = {f":a{i}": value for i, value in enumerate(attributes.values())}
        self._dynamodb.update_item(
            TableName=self._table,
            Key={_KEY: {"S": connection_id}},
            UpdateExpression="SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(names))),
            ConditionExpression="attribute_exists(#key)",
            ExpressionAttributeNames={**names, "#key": _KEY},
            ExpressionAttributeValues=values,
        )

    async def clear_handover(self, connection_id: str) -> None:
        """Remove saved state once resumed, so a later takeover cannot replay it again."""
        try:
            await self._run(self._clear, connection_id)
        except (ClientError, BotoCoreError) as exc:
            log.info(
                "handover state not cleared",
                extra={"connection_id": connection_id, "error": repr(exc)},
            )

    def _clear(self, connection_id: str) -> None:
        self._dynamodb.update_item(
            TableName=self._table,
            Key={_KEY: {"S": connection_id}},
            UpdateExpression="REMOVE #h",
            ConditionExpression="attribute_exists(#key)",
            ExpressionAttributeNames={"#h": ATTR_HANDOVER, "#key": _KEY},
        )
