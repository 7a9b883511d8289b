"""The sessions table: one row per live WebSocket connection, expired by TTL."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra import specs
from infra.config import StackConfig


class SessionTable(pulumi.ComponentResource):
    """DynamoDB table keyed by ``connectionId``; on demand, so an idle stack pays nothing."""

    name: pulumi.Output[str]
    arn: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        config: StackConfig,
        kms_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:data:SessionTable", name, None, opts)
        table = aws.dynamodb.Table(
            f"{name}-table",
            name=specs.sessions_table_name(config.name_prefix),
            billing_mode=specs.SESSIONS_BILLING_MODE,
            hash_key=specs.SESSIONS_HASH_KEY,
            attributes=[
                aws.dynamodb.TableAttributeArgs(
                    name=specs.SESSIONS_HASH_KEY, type=specs.SESSIONS_HASH_KEY_TYPE
                )
            ],
            ttl=aws.dynamodb.TableTtlArgs(
                attribute_name=specs.SESSIONS_TTL_ATTRIBUTE, enabled=True
            ),
            point_in_time_recovery=aws.dynamodb.TablePointInTimeRecoveryArgs(
                enabled=config.point_in_time_recovery_enabled
            ),
            # Without a key of ours DynamoDB still encrypts, with an AWS-owned key.
            server_side_encryption=(
                aws.dynamodb.TableServerSideEncryptionArgs(enabled=True, kms_key_arn=kms_key_arn)
                if kms_key_arn is not None
                else None
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.name = table.name
        self.arn = table.arn
        self.register_outputs({"name": self.name, "arn": self.arn})
