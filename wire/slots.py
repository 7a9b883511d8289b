"""Worker slots: how calls are spread over workers, and how every frame of a call reaches
the worker that holds its model session.

A stack has ``WORKER_SLOTS`` slots, each with its own FIFO audio queue (slot order is the
order of ``AUDIO_QUEUE_URLS``). A worker leases slots in the sessions table (one item per
slot, renewed by heartbeats) and polls only the queues of the slots it holds, so a slot's
calls are served by exactly one worker at a time.

The ``$connect`` authorizer places a new connection on the live slot with the fewest
sessions and returns the slot in its context; API Gateway hands that context to every
later route of the connection (``requestContext.authorizer``), so ``$connect``,
``$default`` and ``$disconnect`` pick the slot's queue with no lookup. When a worker stops
(Spot interruption, scale-in, a deploy) it hands its calls over through the sessions table
(wire/handover.py) and releases its slots; another worker leases them and resumes.

Why not one queue and many consumers: frames of one call would reach whichever worker
polled first, each opening its own model session. Why not a lookup per frame: a read per
100 ms frame would cost more than the frame and add its latency to every turn.

Standard library only: the Lambda handlers import this module.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# --- environment ---------------------------------------------------------------------------

ENV_QUEUE_URLS = "AUDIO_QUEUE_URLS"  # comma-separated, one per slot, in slot order
ENV_QUEUE_URL = "AUDIO_QUEUE_URL"  # a single-slot stack may set just this one


def queue_urls_from_env(env: Mapping[str, str]) -> tuple[str, ...]:
    """The slot queues named by the environment; empty when neither variable is set."""
    raw = env.get(ENV_QUEUE_URLS, "").strip()
    if raw:
        urls = tuple(url.strip() for url in raw.split(","))
        if any(not url for url in urls):
            raise ValueError(f"{ENV_QUEUE_URLS} has an empty entry: {raw!r}")
        return urls
    single = env.get(ENV_QUEUE_URL, "").strip()
    return (single,) if single else ()


# --- the authorizer's context ----------------------------------------------------------------

CONTEXT_SLOT = "slot"  # requestContext.authorizer.slot: the slot number, as a string
CONTEXT_QUEUE_URL = "queueUrl"  # the slot's queue URL (the lean SQS integration reads it)


def slot_of(request_context: Mapping[str, Any], slot_count: int) -> int:
    """The slot the authorizer placed this connection on. A connection without one (a stack
    without an authorizer, an old connection from before slots) is on slot 0."""
    authorizer = request_context.get("authorizer")
    raw = authorizer.get(CONTEXT_SLOT) if isinstance(authorizer, Mapping) else None
    try:
        slot = int(raw) if raw is not None else 0
    except (TypeError, ValueError):
        return 0
    return slot if 0 <= slot < slot_count else 0


# --- lease items in the sessions table ----------------------------------------------------------

# Slot leases live in the sessions table beside the session rows (one table to secure, back
# up and pay for); their keys cannot collide with API Gateway connection ids, which are
# base64-like and contain no '#'. They carry no ``ttl``, so "live session" scans skip them.
SLOT_KEY_PREFIX = "slot#"
WORKER_REGISTRY_KEY = "workers#registry"  # one item: a map of worker id -> alive until (ms)

ATTR_OWNER = "owner"  # worker id holding the lease; absent when free
ATTR_LEASE_UNTIL_MS = "leaseUntilMs"  # epoch ms; a lease not renewed by then is free
ATTR_DRAINING = "draining"  # the holder is handing the slot over: place no new calls here
ATTR_SESSIONS = "sessions"  # calls on the slot (the holder's count, plus placements since)
ATTR_WORKERS = "workers"  # on the registry item

# On the session row: the slot the call was placed on.
SESSION_ATTR_SLOT = "slot"


def slot_key(slot: int) -> str:
    return f"{SLOT_KEY_PREFIX}{slot}"


@dataclass(frozen=True, slots=True)
class SlotState:
    """One slot's lease item, as read."""

    slot: int
    owner: str | None = None
    lease_until_ms: int = 0
    draining: bool = False
    sessions: int = 0

    def live(self, now_ms: int) -> bool:
        """Held by a worker whose lease has not run out."""
        return self.owner is not None and self.lease_until_ms > now_ms

    def accepting(self, now_ms: int) -> bool:
        return self.live(now_ms) and not self.draining

    @classmethod
    def from_item(cls, slot: int, item: Mapping[str, Any] | None) -> SlotState:
        """From a DynamoDB item (low-level attribute values); a missing item is a free slot."""
        if not item:
            return cls(slot)
        owner = item.get(ATTR_OWNER, {}).get("S")
        return cls(
            slot=slot,
            owner=owner or None,
            lease_until_ms=_number(item.get(ATTR_LEASE_UNTIL_MS)),
            draining=bool(item.get(ATTR_DRAINING, {}).get("BOOL", False)),
            sessions=max(0, _number(item.get(ATTR_SESSIONS))),
        )


def _number(value: Any) -> int:
    try:
        return int(value["N"]) if isinstance(value, Mapping) else 0
    except (KeyError, ValueError):
        return 0


def choose_slot(states: Sequence[SlotState], now_ms: int, rng: random.Random | None = None) -> int:
    """Where a new call goes: an accepting slot drawn at random, weighted towards the
    least loaded (weight = most sessions of any candidate - its sessions + 1). Pure
    least-loaded would send every connect of a burst to one slot: concurrent authorizers
    read the same counts before any increment lands. With no accepting slot (every
    worker restarting) all slots are candidates: the queue keeps a call's audio until a
    worker leases its slot."""
    if not states:
        raise ValueError("no slots to choose from")
    candidates = [s for s in states if s.accepting(now_ms)] or list(states)
    most = max(s.sessions for s in candidates)
    weights = [most - s.sessions + 1 for s in candidates]
    return (rng or random).choices(candidates, weights=weights)[0].slot


# --- the worker's load metric (CloudWatch embedded metric format, read by autoscaling) ------

METRICS_NAMESPACE = "VoiceAgent"
ACTIVE_CALLS_METRIC = "ActiveCalls"  # calls held by one worker, logged every minute
METRICS_DIMENSION = "Service"  # value: the ECS service name (env METRICS_SERVICE)
ENV_METRICS_SERVICE = "METRICS_SERVICE"
