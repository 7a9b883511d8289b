"""Customer-managed KMS keys for HIPAA mode.

Two keys with yearly rotation: ``data`` encrypts the audio queues, the sessions table, the
OpenAI secret and the worker's image repository; ``logs`` encrypts every log group. They
are separate because the logs key must trust the CloudWatch Logs service principal, which
has no business decrypting queued audio.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from infra.aws_context import AwsContext
from infra.config import StackConfig

# AWS's default key policy statement: the account (i.e. IAM policies) governs the key. The
# roles' own policies then grant narrow use (kms:Decrypt via one service, on this key).
KEY_POLICY_ACCOUNT_STATEMENT_SID = "EnableIamPolicies"


def _account_statement(ctx: AwsContext) -> dict[str, Any]:
    root = pulumi.Output.all(ctx.partition, ctx.account_id).apply(
        lambda pa: f"arn:{pa[0]}:iam::{pa[1]}:root"
    )
    return {
        "Sid": KEY_POLICY_ACCOUNT_STATEMENT_SID,
        "Effect": "Allow",
        "Principal": {"AWS": root},
        "Action": "kms:*",
        "Resource": "*",  # in a key policy, "*" means this key
    }


def _logs_service_statement(ctx: AwsContext) -> dict[str, Any]:
    """What CloudWatch Logs needs to encrypt this account's log groups with the key."""
    return {
        "Sid": "AllowCloudWatchLogs",
        "Effect": "Allow",
        "Principal": {"Service": pulumi.Output.concat("logs.", ctx.region, ".", ctx.dns_suffix)},
        "Action": [
            "kms:Decrypt*",
            "kms:Describe*",
            "kms:Encrypt*",
            "kms:GenerateDataKey*",
            "kms:ReEncrypt*",
        ],  # fmt: skip
        "Resource": "*",
        "Condition": {
            # Only on behalf of log groups of this account and region.
            "ArnLike": {"kms:EncryptionContext:aws:logs:arn": ctx.arn("logs", "log-group:*")}
        },
    }


class EncryptionKeys(pulumi.ComponentResource):
    """The stack's customer-managed keys (HIPAA mode only)."""

    data_key_arn: pulumi.Output[str]
    logs_key_arn: pulumi.Output[str]
    key_policies: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        config: StackConfig,
        ctx: AwsContext,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:security:EncryptionKeys", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account = _account_statement(ctx)
        self.key_policies = {
            "data": pulumi.Output.json_dumps({"Version": "2012-10-17", "Statement": [account]}),
            "logs": pulumi.Output.json_dumps(
                {"Version": "2012-10-17", "Statement": [account, _logs_service_statement(ctx)]}
            ),
        }
        keys: dict[str, aws.kms.Key] = {}
        for purpose, description in (
            ("data", "voice-agent queued audio, sessions, OpenAI secret, worker images"),
            ("logs", "voice-agent log groups"),
        ):
            keys[purpose] = aws.kms.Key(
                f"{name}-{purpose}",
                description=f"{description} ({config.stack})",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                policy=self.key_policies[purpose],
                opts=child,
            )
            aws.kms.Alias(
                f"{name}-{purpose}",
                name=f"alias/{config.name_prefix}-{purpose}",
                target_key_id=keys[purpose].key_id,
                opts=child,
            )
        self.data_key_arn = keys["data"].arn
        self.logs_key_arn = keys["logs"].arn
        self.register_outputs(
            {"data_key_arn": self.data_key_arn, "logs_key_arn": self.logs_key_arn}
        )
