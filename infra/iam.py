"""IAM policy documents, built in one place so they can be linted and audited in one place.

Every identity policy the program writes goes through ``identity_policy``, which refuses a
``*`` action anywhere and a ``*`` resource except for the actions in
``WILDCARD_RESOURCE_ACTIONS``: the few that AWS only authorizes on all resources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pulumi

VERSION = "2012-10-17"

# The only actions granted on Resource "*", each because AWS accepts nothing narrower.
WILDCARD_RESOURCE_ACTIONS: Mapping[str, str] = {
    # Returns a registry-wide login token; it has no resource to scope to.
    "ecr:GetAuthorizationToken": "ECR authorization tokens are account-wide",
    # Lambda in a VPC (HIPAA mode) lists ENIs before it creates or reuses one; Describe*
    # calls in EC2 support no resource-level permissions.
    "ec2:DescribeNetworkInterfaces": "EC2 Describe* calls take no resource ARNs",
    "ec2:DescribeSubnets": "EC2 Describe* calls take no resource ARNs",
}


def statement(
    actions: Sequence[str],
    resources: Sequence[pulumi.Input[str]],
    *,
    sid: str | None = None,
    condition: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``Allow`` statement. Actions are sorted so rendered policies are stable."""
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": list(resources),
    }
    if sid:
        stmt["Sid"] = sid
    if condition:
        stmt["Condition"] = dict(condition)
    return stmt


def check_least_privilege(statements: Sequence[Mapping[str, Any]]) -> None:
    """Raise if a statement grants ``*`` actions, or ``*`` resources beyond the exceptions."""
    for stmt in statements:
        actions = stmt["Action"]
        resources = stmt["Resource"]
        for action in actions:
            if "*" in action:
                raise ValueError(f"wildcard action {action!r} in {stmt.get('Sid', stmt)}")
        if "*" in resources:
            broad = [a for a in actions if a not in WILDCARD_RESOURCE_ACTIONS]
            if broad:
                raise ValueError(f"{broad} granted on Resource '*'; scope them to ARNs")


def identity_policy(statements: Sequence[Mapping[str, Any]]) -> pulumi.Output[str]:
    """The JSON of an identity (role) policy, after the least-privilege check."""
    check_least_privilege(statements)
    return pulumi.Output.json_dumps({"Version": VERSION, "Statement": list(statements)})


def service_trust_policy(
    service: str, *, condition: Mapping[str, Any] | None = None
) -> pulumi.Output[str]:
    """A role trust policy that lets one AWS service assume the role."""
    stmt: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": {"Service": service},
        "Action": "sts:AssumeRole",
    }
    if condition:
        stmt["Condition"] = dict(condition)
    return pulumi.Output.json_dumps({"Version": VERSION, "Statement": [stmt]})


def log_writer(log_group_arn: pulumi.Input[str]) -> dict[str, Any]:
    """Write one log group's streams (the group itself is created by the program).

    ``{group arn}:*`` is the form AWS's own examples use: it covers CreateLogStream on the
    group and PutLogEvents on its streams.
    """
    streams = pulumi.Output.concat(log_group_arn, ":*")
    return statement(
        ["logs:CreateLogStream", "logs:PutLogEvents"], [streams], sid="WriteOwnLogGroup"
    )
