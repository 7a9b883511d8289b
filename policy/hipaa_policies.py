"""The pack's policies: ``infra.guardrails`` rules adapted to ``pulumi_policy``, nothing more.

Each resource rule becomes a mandatory ``ResourceValidationPolicy`` (checked before a resource
is created or changed, so a violation stops ``pulumi up``), each stack rule a mandatory
``StackValidationPolicy``. Building the policies starts nothing; only ``PolicyPack`` (in
``__main__.py``) starts the analyzer's gRPC server, so tests import this module alone.

The pack applies to a stack when its config says ``voice-agent:hipaa: true``: a policy pack
reads the stack's config like a program does (``pulumi.Config``). If the pack sees no config
at all (not even ``aws:region``, which every stack of this project sets), it cannot tell and
enforces the rules: a guardrail that fails open would be no guardrail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pulumi
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

from infra import guardrails
from infra.config import PROJECT
from infra.guardrails import UNKNOWN, Resource, ResourceRule, StackRule

PACK_NAME = "voice-agent-hipaa"
NOT_HIPAA = f"the stack is not in HIPAA mode ({PROJECT}:hipaa is not true)"
# Every policy: a violation stops the preview or update.
POLICY_SETTINGS: Mapping[str, Any] = {
    "enforcement_level": EnforcementLevel.MANDATORY,
    "severity": Severity.HIGH,
    "tags": ["hipaa"],
}


def hipaa_applies(config: Mapping[str, Any]) -> bool:
    """Whether the rules apply, from the stack's ``voice-agent:hipaa`` and ``aws:region``."""
    hipaa = config.get(f"{PROJECT}:hipaa")
    if hipaa is not None:
        return str(hipaa).strip().lower() == "true"
    # Unset means the project's default (false) -- if the pack can see the config at all.
    return config.get("aws:region") is None


def stack_is_hipaa() -> bool:
    """``hipaa_applies`` over the config of the stack being previewed or updated."""
    return hipaa_applies(
        {
            f"{PROJECT}:hipaa": pulumi.Config(PROJECT).get("hipaa"),
            "aws:region": pulumi.Config("aws").get("region"),
        }
    )


def plain(value: Any) -> Any:
    """Engine properties as plain dicts and lists, values unknown in a preview as UNKNOWN.

    The SDK hands policies a proxy that raises ``UnknownValueError`` when an unknown value is
    read; the rules want data.
    """
    if isinstance(value, Mapping):
        return {key: _read(value, key) for key in value}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_read(value, i) for i in range(len(value))]
    return value


def _read(container: Any, key: Any) -> Any:
    try:
        return plain(container[key])
    except UnknownValueError:
        return UNKNOWN


def resource_policy(
    rule: ResourceRule, applies: Callable[[], bool] = stack_is_hipaa
) -> ResourceValidationPolicy:
    """One resource rule as a mandatory resource validation policy."""

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in rule.resource_types:
            return
        if not applies():
            args.not_applicable(NOT_HIPAA)
        resource = Resource(args.resource_type, args.name, plain(args.props), ref=args.urn)
        for violation in rule(resource):
            report_violation(violation.message, None)  # None: the resource under validation

    return ResourceValidationPolicy(rule.name, rule.description, validate, **POLICY_SETTINGS)


def stack_policy(
    rule: StackRule, applies: Callable[[], bool] = stack_is_hipaa
) -> StackValidationPolicy:
    """One stack rule as a mandatory stack validation policy (run on the resources' outputs)."""

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        if not applies():
            args.not_applicable(NOT_HIPAA)
        resources = [
            Resource(r.resource_type, r.name, plain(r.props), ref=r.urn) for r in args.resources
        ]
        for violation in rule(resources):
            report_violation(violation.message, violation.resource.ref)

    return StackValidationPolicy(rule.name, rule.description, validate, **POLICY_SETTINGS)


def hipaa_policies(applies: Callable[[], bool] = stack_is_hipaa) -> list[Policy]:
    """Every guardrail, in ``infra.guardrails`` order."""
    return [
        *(resource_policy(rule, applies) for rule in guardrails.RESOURCE_RULES),
        *(stack_policy(rule, applies) for rule in guardrails.STACK_RULES),
    ]
