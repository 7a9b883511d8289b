"""The audio queues: every WebSocket event on its way from the handlers to the worker."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra import specs
from infra.config import StackConfig
from wire.slots import ENV_QUEUE_URLS

ENV_WORKER_SLOTS = "WORKER_SLOTS"  # the number of slots (and queues)


def slot_environment(
    config: StackConfig, queue_urls: pulumi.Input[str]
) -> dict[str, pulumi.Input[str]]:
    """What every user of the audio queues reads (wire/slots.py): the slots' queue URLs,
    comma-separated in slot order (``AudioQueue.urls_env``), and their number."""
    return {ENV_QUEUE_URLS: queue_urls, ENV_WORKER_SLOTS: str(config.worker_slots)}


class AudioQueue(pulumi.ComponentResource):
    """One SQS FIFO queue per worker slot (one message group per call), all redriving to one
    FIFO dead-letter queue.

    A slot's queue is polled only by the worker holding the slot (wire/slots.py), so every
    frame of a call reaches the one worker that holds its model session. Lists are in slot
    order: ``urls[k]`` is slot k's queue.
    """

    urls: list[pulumi.Output[str]]
    arns: list[pulumi.Output[str]]
    dlq_url: pulumi.Output[str]
    dlq_arn: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        config: StackConfig,
        kms_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:data:AudioQueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # Every queue is encrypted: with our key in HIPAA mode, else with SQS-managed keys.
        sqs_managed_sse = None if kms_key_arn is not None else True
        dlq = aws.sqs.Queue(
            f"{name}-dlq",
            name=specs.audio_dlq_name(config.name_prefix),
            fifo_queue=True,
            content_based_deduplication=False,
            message_retention_seconds=specs.AUDIO_DLQ_RETENTION_SECONDS,
            kms_master_key_id=kms_key_arn,
            sqs_managed_sse_enabled=sqs_managed_sse,
            opts=child,
        )
        queues = [
            aws.sqs.Queue(
                f"{name}-queue-{slot}",
                name=specs.audio_queue_name(config.name_prefix, slot),
                fifo_queue=specs.AUDIO_QUEUE_FIFO,
                content_based_deduplication=specs.AUDIO_QUEUE_CONTENT_BASED_DEDUPLICATION,
                deduplication_scope=specs.AUDIO_QUEUE_DEDUPLICATION_SCOPE,
                fifo_throughput_limit=specs.AUDIO_QUEUE_FIFO_THROUGHPUT_LIMIT,
                receive_wait_time_seconds=specs.AUDIO_QUEUE_RECEIVE_WAIT_SECONDS,
                visibility_timeout_seconds=specs.AUDIO_QUEUE_VISIBILITY_TIMEOUT_SECONDS,
                message_retention_seconds=specs.AUDIO_QUEUE_RETENTION_SECONDS,
                redrive_policy=dlq.arn.apply(specs.redrive_policy),
                kms_master_key_id=kms_key_arn,
                sqs_managed_sse_enabled=sqs_managed_sse,
                opts=child,
            )
            for slot in range(config.worker_slots)
        ]
        self.urls = [q.url for q in queues]
        self.arns = [q.arn for q in queues]
        aws.sqs.RedriveAllowPolicy(
            f"{name}-dlq-sources",
            queue_url=dlq.url,
            redrive_allow_policy=pulumi.Output.all(*self.arns).apply(specs.redrive_allow_policy),
            opts=child,
        )
        self.dlq_url = dlq.url
        self.dlq_arn = dlq.arn
        self.register_outputs({"urls": self.urls, "arns": self.arns, "dlq_url": self.dlq_url})

    @property
    def urls_env(self) -> pulumi.Output[str]:
        """The value of ``AUDIO_QUEUE_URLS`` (wire/slots.py): the URLs, comma-separated, in
        slot order."""
        return pulumi.Output.all(*self.urls).apply(lambda urls: ",".join(urls))
