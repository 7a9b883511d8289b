"""Transport: the audio queue (SQS FIFO), long-polled by a few concurrent loops.

A FIFO message group (one per call) stays locked while any of its received messages is
undeleted, so each loop deletes what it received as soon as the envelopes are handed to
the sessions; the next frames of that call can then be received at once.

One consumer serves one slot's queue. When the worker gives the slot up, messages a long
poll still returns are not handled here: they are made visible again at once, for the
worker that takes the slot over, in their order.

While the worker hands calls over one by one, ``on_envelope`` may decline a message (it
returns False: its call has been handed over already). The message is then kept in flight,
undeleted, which holds back the rest of its call's FIFO group in the queue; ``give_back``
releases them all when the slot changes hands, so the next worker gets them in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from wire.queue import RECEIVE_ATTRIBUTES, QueueEnvelope

log = logging.getLogger("voice-agent.worker.queue")

_WAIT_SECONDS = 20  # long polling: an idle worker makes three requests a minute per loop
_BATCH = 10  # SQS maximum per receive
_RETRY_PAUSE_S = 1.0
_SHORT_POLL_PAUSE_S = 0.1


class QueueConsumer:
    """Receives envelopes and hands each to ``on_envelope`` in queue order."""

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        executor: Executor,
        *,
        pollers: int,
        on_envelope: Callable[[QueueEnvelope], bool | None],
        wait_seconds: int = _WAIT_SECONDS,
    ) -> None:
        self._sqs = sqs_client
        self._queue_url = queue_url
        self._executor = executor
        self._pollers = pollers
        self._on_envelope = on_envelope
        self._wait_seconds = wait_seconds
        self._stopping = asyncio.Event()
        self.received = 0
        # Declined messages by message id (a message coming back after its visibility
        # timeout replaces its entry: only the newest receipt handle is valid).
        self._declined: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._poll(i) for i in range(self._pollers)))

    def stop(self) -> None:
        """Handle no more messages. Loops end when their current long poll returns; what it
        returns goes back to the queue (visible at once) instead of being handled."""
        self._stopping.set()

    async def _poll(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                response = await loop.run_in_executor(self._executor, self._receive)
            except (ClientError, BotoCoreError) as exc:
                log.warning("receive failed", extra={"poller": index, "error": repr(exc)})
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            messages = response.get("Messages") or []
            if not messages:
                if self._declined:
                    await asyncio.sleep(_SHORT_POLL_PAUSE_S)
                continue
            if self._stopping.is_set():
                await self._give_back(messages, index)
                return
            handled = self._dispatch(messages)
            if not handled:
                continue
            try:
                await loop.run_in_executor(self._executor, self._delete, handled)
            except (ClientError, BotoCoreError) as exc:
                # Undeleted messages come back after the visibility timeout; the session
                # core drops what it has already seen.
                log.warning("delete failed", extra={"poller": index, "error": repr(exc)})

    async def give_back(self) -> int:
        """Make every declined message visible again now; returns how many."""
        declined = list(self._declined.values())
        self._declined.clear()
        await self._give_back(declined, -1)
        return len(declined)

    async def _give_back(self, messages: list[dict[str, Any]], index: int) -> None:
        for start in range(0, len(messages), _BATCH):  # at most 10 entries per request
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages[start : start + _BATCH])
            ]
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    functools.partial(
                        self._sqs.change_message_visibility_batch,
                        QueueUrl=self._queue_url,
                        Entries=entries,
                    ),
                )
            except (ClientError, BotoCoreError) as exc:
                # They come back after the visibility timeout instead: later, still in order.
                log.warning(
                    "could not give messages back", extra={"poller": index, "error": repr(exc)}
                )

    def _receive(self) -> dict[str, Any]:
        # While messages are held back (a handover is under way, seconds at most), poll
        # short: moto's long poll spins while a group is in flight, and the slot is about to
        # change hands anyway.
        return self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=_BATCH,
            WaitTimeSeconds=0 if self._declined else self._wait_seconds,
            **RECEIVE_ATTRIBUTES,
        )

    def _dispatch(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hand each envelope on; the messages to delete (all but the declined ones)."""
        handled = []
        for message in messages:
            self.received += 1
            try:
                envelope = QueueEnvelope.from_message(message)
            except ValueError as exc:
                log.warning(
                    "dropping a message that is not an envelope",
                    extra={"message_id": message.get("MessageId"), "error": str(exc)},
                )
                handled.append(message)
                continue
            try:
                taken = self._on_envelope(envelope)
            except Exception:  # noqa: BLE001 - one bad frame must not stop the worker
                log.exception(
                    "envelope handling failed", extra={"connection_id": envelope.connection_id}
                )
                taken = True
            if taken is False:
                self._declined[str(message.get("MessageId"))] = message
            else:
                handled.append(message)
        return handled

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        self._sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
