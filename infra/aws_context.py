"""The AWS provider every resource uses, and the account facts ARNs are built from.

One explicit provider carries the region and the default tags (project, stack), so every
taggable resource is tagged without each component remembering to, and cost reports can
be split per stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import PROJECT, StackConfig


def default_tags(config: StackConfig) -> dict[str, str]:
    return {"project": PROJECT, "stack": config.stack}


@dataclass(frozen=True)
class AwsContext:
    """Provider plus the account, partition and region the ARNs and endpoints are made of."""

    provider: aws.Provider
    region: str
    account_id: pulumi.Output[str]
    partition: pulumi.Output[str]
    dns_suffix: pulumi.Output[str]

    @property
    def opts(self) -> pulumi.ResourceOptions:
        """Options that put a top-level component (and so its children) on this provider."""
        return pulumi.ResourceOptions(providers=[self.provider])

    def service_host(self, service: str) -> pulumi.Output[str]:
        """``{service}.{region}.{dns suffix}``: the value ``kms:ViaService`` conditions compare."""
        return pulumi.Output.concat(service, ".", self.region, ".", self.dns_suffix)

    def arn(self, service: str, resource: str) -> pulumi.Output[str]:
        """``arn:{partition}:{service}:{region}:{account}:{resource}``."""
        return pulumi.Output.all(self.partition, self.account_id).apply(
            lambda pa: f"arn:{pa[0]}:{service}:{self.region}:{pa[1]}:{resource}"
        )


def aws_context(config: StackConfig) -> AwsContext:
    provider = aws.Provider(
        "aws",
        region=config.region,
        default_tags=aws.ProviderDefaultTagsArgs(tags=default_tags(config)),
    )
    invoke = pulumi.InvokeOptions(provider=provider)
    identity = aws.get_caller_identity_output(opts=invoke)
    partition = aws.get_partition_output(opts=invoke)
    return AwsContext(
        provider=provider,
        region=config.region,
        account_id=identity.account_id,
        partition=partition.partition,
        dns_suffix=partition.dns_suffix,
    )
