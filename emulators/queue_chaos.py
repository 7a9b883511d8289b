"""Fault injection at the queue layer: a stand-in for the SQS client the handlers send with
that repeats and reorders a call's frames, as a standard queue, a retried Lambda or
parallel ``$default`` invocations could.

- A repeated frame is sent again with a new deduplication id (a FIFO queue would drop a
  repeat with the same id, which is the easy case): only the worker's sequence check
  stands between it and the model.
- A reordered frame is held back and sent after the next frame of the same call (or after
  ``hold_ms`` if none comes).

Only ``frame`` envelopes are touched; ``open`` and ``close`` keep their place, as they do in
API Gateway, where ``$connect`` returns before any message and ``$disconnect`` comes last.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from wire.queue import ATTR_CONNECTION_ID, ATTR_KIND, EnvelopeKind


class ChaoticSqs:
    """Wraps a boto3 SQS client; everything but ``send_message`` passes through."""

    def __init__(
        self,
        client: Any,
        *,
        seed: int,
        repeat_probability: float = 0.1,
        reorder_probability: float = 0.1,
        hold_ms: int = 60,
    ) -> None:
        self._client = client
        self._rng = random.Random(seed)
        self._repeat = repeat_probability
        self._reorder = reorder_probability
        self._hold_s = hold_ms / 1000
        self._lock = threading.Lock()
        self._held: dict[str, dict[str, Any]] = {}
        self.repeated = 0
        self.reordered = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def send_message(self, **kwargs: Any) -> Any:
        attributes = kwargs.get("MessageAttributes") or {}
        kind = attributes.get(ATTR_KIND, {}).get("StringValue")
        if kind != EnvelopeKind.FRAME.value:
            return self._client.send_message(**kwargs)
        connection = attributes[ATTR_CONNECTION_ID]["StringValue"]
        with self._lock:
            held = self._held.pop(connection, None)
            hold_this = held is None and self._rng.random() < self._reorder
            repeat = self._rng.random() < self._repeat
            if hold_this:
                self._held[connection] = kwargs
                self.reordered += 1
            if repeat:
                self.repeated += 1
        if hold_this:
            timer = threading.Timer(self._hold_s, self._release, args=(connection, kwargs))
            timer.daemon = True
            timer.start()
            return {"MessageId": "held"}
        response = self._client.send_message(**kwargs)
        if held is not None:
            self._client.send_message(**held)  # the earlier frame, now after this one
        if repeat:
            again = dict(kwargs)
            again["MessageDeduplicationId"] = f"{kwargs['MessageDeduplicationId']}-repeat"
            self._client.send_message(**again)
        return response

    def _release(self, connection: str, kwargs: dict[str, Any]) -> None:
        with self._lock:
            if self._held.get(connection) is not kwargs:
                return  # already sent behind a later frame
            del self._held[connection]
        self._client.send_message(**kwargs)
