"""The policy pack (policy/) adapts infra.guardrails faithfully and applies to HIPAA stacks only.

``PolicyPack`` itself is never built here: it starts the analyzer's gRPC server and blocks.
The policies are, through ``policy.hipaa_policies``, and are called as the analyzer calls them:
with the engine's properties behind the SDK's unknown-checking proxy.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from infra import guardrails
from infra.guardrails import UNKNOWN, Resource, ResourceRule, StackRule
from policy import hipaa_policies as pack
from tests.infra.conftest import Graph
from tests.infra.mock_stack import ROOT

OPTS = PolicyResourceOptions(False, [], False, [], None, [], None)  # type: ignore[arg-type]


def always() -> bool:
    return True


def never() -> bool:
    return False


def resource_args(type_: str, name: str, props: dict[str, Any]) -> ResourceValidationArgs:
    urn = f"urn:pulumi:prod::voice-agent::{type_}::{name}"
    return ResourceValidationArgs(type_, unknown_checking_proxy(props), urn, name, OPTS, None)


def policy_resource(type_: str, name: str, props: dict[str, Any]) -> PolicyResource:
    urn = f"urn:pulumi:prod::voice-agent::{type_}::{name}"
    return PolicyResource(type_, unknown_checking_proxy(props), urn, name, OPTS, None, None, [], {})


class Reports:
    """A ``report_violation`` that keeps what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, message: str, urn: str | None = None) -> None:
        self.seen.append((message, urn))

    @property
    def messages(self) -> list[str]:
        return [m for m, _ in self.seen]


def resource_policies(applies: Callable[[], bool] = always) -> list[ResourceValidationPolicy]:
    return [p for p in pack.hipaa_policies(applies) if isinstance(p, ResourceValidationPolicy)]


def stack_policies(applies: Callable[[], bool] = always) -> list[StackValidationPolicy]:
    return [p for p in pack.hipaa_policies(applies) if isinstance(p, StackValidationPolicy)]


def run_pack(graph: Graph) -> list[str]:
    """Every policy over every resource of a rendered stack, as the analyzer would."""
    reports = Reports()
    for policy in resource_policies():
        for r in graph.resources:
            policy.validate(resource_args(r.type, r.name, r.inputs), reports)
    stack = [policy_resource(r.type, r.name, r.inputs) for r in graph.resources]
    for stack_policy in stack_policies():
        stack_policy.validate(StackValidationArgs(stack, None), reports)
    return reports.messages


# --- the pack is the rules, mandatory ---------------------------------------------------------


def test_one_mandatory_policy_per_rule_with_the_rules_name_and_description() -> None:
    policies = pack.hipaa_policies()
    rules: list[ResourceRule | StackRule] = [*guardrails.RESOURCE_RULES, *guardrails.STACK_RULES]
    assert [(p.name, p.description) for p in policies] == [
        (r.name, r.description) for r in rules]  # fmt: skip
    assert all(p.enforcement_level is EnforcementLevel.MANDATORY for p in policies)
    assert [type(p) for p in policies] == (
        [ResourceValidationPolicy] * len(guardrails.RESOURCE_RULES)
        + [StackValidationPolicy] * len(guardrails.STACK_RULES))  # fmt: skip


def test_the_pack_reports_exactly_what_the_rules_find(dev: Graph, hipaa_stack: Graph) -> None:
    expected = [v.message for v in guardrails.check_stack(
        Resource(r.type, r.name, r.inputs) for r in dev.resources)]  # fmt: skip
    assert expected, "dev breaks HIPAA rules"
    assert sorted(run_pack(dev)) == sorted(expected)
    assert run_pack(hipaa_stack) == []


def test_a_violation_is_reported_on_the_resource_under_validation() -> None:
    [policy] = [p for p in resource_policies() if p.name == "kms-key-rotation"]
    reports = Reports()
    policy.validate(resource_args(guardrails.KMS_KEY, "keys-data", {}), reports)
    [(message, urn)] = reports.seen
    assert urn is None  # the analyzer attaches it to the resource being validated
    assert message == guardrails.check_resource(Resource(guardrails.KMS_KEY, "keys-data", {}))[
        0].message  # fmt: skip


def test_a_stack_violation_is_reported_on_the_offending_resource() -> None:
    props = {"apiId": "abc123", "name": "live", "defaultRouteSettings": {"loggingLevel": "ERROR"}}
    stage = policy_resource(guardrails.WEBSOCKET_STAGE, "websocket-stage", props)
    [policy] = stack_policies()
    reports = Reports()
    policy.validate(StackValidationArgs([stage], None), reports)
    [(message, urn)] = reports.seen
    assert urn == stage.urn and "API-Gateway-Execution-Logs_abc123/live" in message


def test_values_unknown_in_a_preview_reach_the_rules_as_unknown() -> None:
    props = {"kmsMasterKeyId": UNKNOWN_STRING_VALUE, "tags": [UNKNOWN_STRING_VALUE, "x"],
             "nested": {"a": UNKNOWN_STRING_VALUE}}  # fmt: skip
    assert pack.plain(unknown_checking_proxy(props)) == {
        "kmsMasterKeyId": UNKNOWN, "tags": [UNKNOWN, "x"], "nested": {"a": UNKNOWN}}  # fmt: skip
    reports = Reports()
    for policy in resource_policies():
        # Would raise UnknownValueError (an advisory "can't run during preview") if the
        # adapter let the proxy through.
        policy.validate(resource_args(guardrails.SQS_QUEUE, "audio-queue", props), reports)
    assert reports.seen == []


def test_resources_of_other_types_are_left_alone() -> None:
    reports = Reports()
    for policy in resource_policies(never):
        # Not even "not applicable": the type check comes first.
        policy.validate(resource_args("aws:s3/bucket:Bucket", "b", {}), reports)
    assert reports.seen == []


# --- applied to HIPAA stacks only -------------------------------------------------------------


def test_on_a_stack_without_hipaa_the_policies_are_not_applicable(dev: Graph) -> None:
    queue = dev.of_type(guardrails.SQS_QUEUE)[0]
    [policy] = [p for p in resource_policies(never) if p.name == "customer-managed-keys"]
    with pytest.raises(Exception) as raised:
        policy.validate(resource_args(queue.type, queue.name, queue.inputs), Reports())
    # The SDK's private signal; the analyzer turns it into "not applicable: <reason>".
    assert type(raised.value).__name__ == "_NotApplicableError"
    assert raised.value.reason == pack.NOT_HIPAA  # type: ignore[attr-defined]
    [stack_policy] = stack_policies(never)
    with pytest.raises(Exception) as raised:
        stack_policy.validate(StackValidationArgs([], None), Reports())
    assert type(raised.value).__name__ == "_NotApplicableError"


@pytest.mark.parametrize(
    ("config", "applies"),
    [
        ({"voice-agent:hipaa": "true", "aws:region": "us-west-2"}, True),
        ({"voice-agent:hipaa": "True", "aws:region": "us-west-2"}, True),
        ({"voice-agent:hipaa": "false", "aws:region": "us-east-1"}, False),
        ({"aws:region": "us-east-1"}, False),  # the project's default
        ({}, True),  # the pack can't see the stack's config: enforce rather than pass
    ],
)
def test_hipaa_mode_is_read_from_the_stack_config(config: dict[str, str], applies: bool) -> None:
    assert pack.hipaa_applies(config) is applies


def test_the_pack_reads_the_config_the_cli_hands_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CLI passes the stack's config to the analyzer as PULUMI_CONFIG, as to a program.
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(
        {"voice-agent:hipaa": "true", "aws:region": "us-west-2"}))  # fmt: skip
    assert pack.stack_is_hipaa() is True
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(
        {"voice-agent:hipaa": "false", "aws:region": "us-east-1"}))  # fmt: skip
    assert pack.stack_is_hipaa() is False


# --- packaging --------------------------------------------------------------------------------


def test_the_pack_runs_in_the_projects_virtualenv() -> None:
    policy_file = yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())
    project_file = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert policy_file["runtime"]["name"] == "python"
    venv = (ROOT / "policy" / policy_file["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == (ROOT / project_file["runtime"]["options"]["virtualenv"]).resolve()
    assert policy_file["version"] and policy_file["description"]


def test_the_entry_point_only_builds_the_pack_from_the_adapted_policies() -> None:
    tree = ast.parse((ROOT / "policy" / "__main__.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)]  # fmt: skip
    [pack_call] = [c for c in calls if c.func.id == "PolicyPack"]  # type: ignore[attr-defined]
    kwargs = {k.arg: ast.unparse(k.value) for k in pack_call.keywords}
    assert kwargs == {"name": "PACK_NAME", "policies": "hipaa_policies()",
                      "enforcement_level": "EnforcementLevel.MANDATORY"}  # fmt: skip


def test_the_rules_import_neither_pulumi_nor_the_policy_sdk() -> None:
    code = (
        "import sys, infra.guardrails\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_policy')))"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
