"""The queue consumer against moto (server mode): a declined message is held in flight,
which holds back the rest of its FIFO group, and given back in order when the slot moves."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tests.aws_local import moto_server
from wire.queue import RECEIVE_ATTRIBUTES, EnvelopeKind, QueueEnvelope
from worker.queue_consumer import QueueConsumer


def frame(connection: str, n: int) -> QueueEnvelope:
    return QueueEnvelope(EnvelopeKind.FRAME, connection, f"{connection}-{n}", 0, body=str(n))


def test_declined_calls_wait_in_the_queue_in_order_until_given_back() -> None:
    with moto_server() as moto:
        url = moto.resources.queue_url
        for n in range(3):
            for connection in ("kept", "handed"):
                moto.sqs.send_message(**frame(connection, n).to_send_message(url))
        seen: list[tuple[str, str]] = []

        def on_envelope(envelope: QueueEnvelope) -> bool:
            seen.append((envelope.connection_id, envelope.body))
            return envelope.connection_id != "handed"  # that call was handed over

        async def scenario() -> int:
            consumer = QueueConsumer(
                moto.sqs,
                url,
                ThreadPoolExecutor(4),
                pollers=1,
                on_envelope=on_envelope,
                wait_seconds=1,
            )
            task = asyncio.create_task(consumer.run())
            await asyncio.sleep(1.2)
            for n in range(3, 5):  # later frames of both calls
                for connection in ("kept", "handed"):
                    moto.sqs.send_message(**frame(connection, n).to_send_message(url))
            await asyncio.sleep(1.5)
            consumer.stop()
            given_back = await consumer.give_back()
            await asyncio.wait_for(task, 5)
            return given_back

        given_back = asyncio.run(scenario())
        # All of "kept" was handled. "handed" was declined, its first batch held in flight:
        # the frames sent later stayed behind it in the queue, never received here.
        assert [b for c, b in seen if c == "kept"] == ["0", "1", "2", "3", "4"]
        assert [b for c, b in seen if c == "handed"] == ["0", "1", "2"]
        assert given_back == 3
        bodies = []
        for _ in range(4):
            response = moto.sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, **RECEIVE_ATTRIBUTES
            )
            for message in response.get("Messages", []):
                bodies.append(message["Body"])
                moto.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert bodies == ["0", "1", "2", "3", "4"]  # the next worker gets the whole call, in order
