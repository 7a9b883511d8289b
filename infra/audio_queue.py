"""The audio queue: every WebSocket event on its way from the handlers to the worker."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra import specs
from infra.config import StackConfig


class AudioQueue(pulumi.ComponentResource):
    """SQS FIFO queue (one message group per call) with a FIFO dead-letter queue."""

    url: pulumi.Output[str]
    arn: pulumi.Output[str]
    name: pulumi.Output[str]
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
        # Both queues are encrypted: with our key in HIPAA mode, else with SQS-managed keys.
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
        queue = aws.sqs.Queue(
            f"{name}-queue",
            name=specs.audio_queue_name(config.name_prefix),
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
        aws.sqs.RedriveAllowPolicy(
            f"{name}-dlq-sources",
            queue_url=dlq.url,
            redrive_allow_policy=queue.arn.apply(specs.redrive_allow_policy),
            opts=child,
        )
        self.url = queue.url
        self.arn = queue.arn
        self.name = queue.name  # the lean $default integration addresses the queue by name
        self.dlq_url = dlq.url
        self.dlq_arn = dlq.arn
        self.register_outputs({"url": self.url, "arn": self.arn, "dlq_url": self.dlq_url})
