"""CloudWatch log groups: created by the program, so each has a retention and (HIPAA) a key.

Left to the services, Lambda and API Gateway would create their groups on first use with
no retention (logs kept, and billed, forever) and no customer-managed key.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.config import StackConfig


def log_group(
    name: str,
    *,
    log_group_name: pulumi.Input[str],
    config: StackConfig,
    kms_key_arn: pulumi.Input[str] | None,
    opts: pulumi.ResourceOptions,
) -> aws.cloudwatch.LogGroup:
    return aws.cloudwatch.LogGroup(
        name,
        name=log_group_name,
        retention_in_days=config.log_retention_days,
        kms_key_id=kms_key_arn,
        opts=opts,
    )
