"""Slot leases: which worker serves which slot's queue (the scheme is in wire/slots.py).

``plan_leases`` decides, with no I/O, what a worker should claim or give up given what it
read; ``SlotLeases`` is the DynamoDB edge that reads the lease items, renews, claims and
releases them with conditional writes, so two workers can never both hold a slot.

The lease is the only lock: a worker that cannot renew in time (a stalled event loop, a
network partition) finds its lease taken and stops polling that slot at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from wire import slots

log = logging.getLogger("voice-agent.worker.slots")

# Registry attributes are "w:<worker id>" = alive until (epoch ms), one per worker.
_REGISTRY_PREFIX = "w:"


@dataclass(frozen=True, slots=True)
class LeasePlan:
    claim: tuple[int, ...] = ()
    release: tuple[int, ...] = ()  # hand over to balance: another worker has too few


def plan_leases(
    states: Sequence[slots.SlotState],
    alive_until_ms: Mapping[str, int],
    me: str,
    now_ms: int,
    *,
    rng: random.Random | None = None,
) -> LeasePlan:
    """What ``me`` should do next. Each live worker aims at ``ceil(slots / workers)``:
    free slots (never held, released, or lease run out) are claimed up to that share; a
    worker holding two or more slots more than the least loaded live worker gives one
    up (the one with the fewest calls), which that worker then claims. Only the most
    loaded worker gives up a slot, and only one per round, so slots do not bounce."""
    live_workers = {w for w, until in alive_until_ms.items() if until > now_ms} | {me}
    held: dict[str, list[slots.SlotState]] = {w: [] for w in live_workers}
    free: list[int] = []
    for state in states:
        if state.live(now_ms):
            held.setdefault(str(state.owner), []).append(state)
        else:
            free.append(state.slot)
    share = math.ceil(len(states) / len(live_workers))
    mine = held.get(me, [])
    if free:
        (rng or random).shuffle(free)  # two newcomers rarely race for the same slot
        return LeasePlan(claim=tuple(free[: max(0, share - len(mine))]))
    counts = {w: len(held.get(w, [])) for w in live_workers}
    busiest = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    if busiest == me and counts[me] - min(counts.values()) >= 2:
        quietest = min(mine, key=lambda s: (s.sessions, s.slot))
        return LeasePlan(release=(quietest.slot,))
    return LeasePlan()


class LeaseLost(Exception):
    """A conditional write found the slot held by someone else."""


class SlotLeases:
    """This worker's leases in the sessions table (blocking boto3 calls on the executor)."""

    def __init__(
        self,
        dynamodb: Any,
        table: str,
        slot_count: int,
        worker_id: str,
        executor: Executor,
        *,
        lease_ms: int,
    ) -> None:
        self._dynamodb = dynamodb
        self._table = table
        self.slot_count = slot_count
        self.worker_id = worker_id
        self._executor = executor
        self.lease_ms = lease_ms

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- reads ----------------------------------------------------------------------------

    async def read(self) -> tuple[list[slots.SlotState], dict[str, int]]:
        """Every slot's lease and the registry of live workers."""
        return await self._run(self._read)

    def _read(self) -> tuple[list[slots.SlotState], dict[str, int]]:
        keys = [{"connectionId": {"S": slots.slot_key(i)}} for i in range(self.slot_count)]
        keys.append({"connectionId": {"S": slots.WORKER_REGISTRY_KEY}})
        items: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 100):  # BatchGetItem takes 100 keys at most
            pending: dict[str, Any] = {
                self._table: {"Keys": keys[start : start + 100], "ConsistentRead": True}
            }
            while pending:
                response = self._dynamodb.batch_get_item(RequestItems=pending)
                for item in response.get("Responses", {}).get(self._table, []):
                    items[item["connectionId"]["S"]] = item
                pending = response.get("UnprocessedKeys") or {}
        states = [
            slots.SlotState.from_item(i, items.get(slots.slot_key(i)))
            for i in range(self.slot_count)
        ]
        registry = items.get(slots.WORKER_REGISTRY_KEY, {})
        alive = {
            name.removeprefix(_REGISTRY_PREFIX): int(value.get("N", "0"))
            for name, value in registry.items()
            if name.startswith(_REGISTRY_PREFIX) and isinstance(value, dict)
        }
        return states, alive

    # --- writes ---------------------------------------------------------------------------

    async def announce(
        self, now_ms: int, *, present: bool = True, forget: Sequence[str] = ()
    ) -> None:
        """Say this worker is alive (or, with ``present=False``, leaving: its slots are not
        to be counted on), and drop registry entries of workers long dead."""
        await self._run(self._announce, now_ms, present, tuple(forget))

    def _announce(self, now_ms: int, present: bool, forget: tuple[str, ...]) -> None:
        names = {"#me": _REGISTRY_PREFIX + self.worker_id}
        removals = []
        for index, worker in enumerate(forget):
            names[f"#d{index}"] = _REGISTRY_PREFIX + worker
            removals.append(f"#d{index}")
        if present:
            expression = "SET #me = :until"
            values: dict[str, Any] | None = {":until": {"N": str(now_ms + self.lease_ms)}}
            if removals:
                expression += " REMOVE " + ", ".join(removals)
        else:
            expression = "REMOVE " + ", ".join(["#me", *removals])
            values = None
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"connectionId": {"S": slots.WORKER_REGISTRY_KEY}},
            "UpdateExpression": expression,
            "ExpressionAttributeNames": names,
        }
        if values:
            kwargs["ExpressionAttributeValues"] = values
        self._dynamodb.update_item(**kwargs)

    async def claim(self, slot: int, now_ms: int) -> bool:
        """Take a free slot; False if another worker got there first."""
        try:
            await self._run(self._claim, slot, now_ms)
        except LeaseLost:
            return False
        return True

    def _claim(self, slot: int, now_ms: int) -> None:
        self._conditional_update(
            slot,
            "SET #owner = :me, #until = :until, #draining = :false",
            "attribute_not_exists(#owner) OR #until < :now OR #owner = :me",
            {
                ":me": {"S": self.worker_id},
                ":until": {"N": str(now_ms + self.lease_ms)},
                ":now": {"N": str(now_ms)},
                ":false": {"BOOL": False},
            },
        )

    async def renew(self, slot: int, now_ms: int, sessions: int, *, draining: bool) -> None:
        """Extend the lease and publish the slot's call count; raises LeaseLost."""
        await self._run(self._renew, slot, now_ms, sessions, draining)

    def _renew(self, slot: int, now_ms: int, sessions: int, draining: bool) -> None:
        self._conditional_update(
            slot,
            "SET #until = :until, #sessions = :sessions, #draining = :draining",
            "#owner = :me",
            {
                ":me": {"S": self.worker_id},
                ":until": {"N": str(now_ms + self.lease_ms)},
                ":sessions": {"N": str(sessions)},
                ":draining": {"BOOL": draining},
            },
        )

    async def release(self, slot: int) -> None:
        """Give the slot up (after its calls were handed over); anyone may claim it now."""
        try:
            await self._run(self._release, slot)
        except LeaseLost:
            pass  # already someone else's: nothing to give up

    def _release(self, slot: int) -> None:
        self._conditional_update(
            slot,
            "REMOVE #owner SET #until = :zero, #draining = :false",
            "#owner = :me",
            {":me": {"S": self.worker_id}, ":zero": {"N": "0"}, ":false": {"BOOL": False}},
        )

    def _conditional_update(
        self, slot: int, update: str, condition: str, values: dict[str, Any]
    ) -> None:
        names = {
            "#owner": slots.ATTR_OWNER,
            "#until": slots.ATTR_LEASE_UNTIL_MS,
            "#draining": slots.ATTR_DRAINING,
            "#sessions": slots.ATTR_SESSIONS,
        }
        used = update + " " + condition
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"connectionId": {"S": slots.slot_key(slot)}},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={k: v for k, v in names.items() if k in used},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                raise LeaseLost(slot) from None
            raise


LEASE_ERRORS = (ClientError, BotoCoreError)
