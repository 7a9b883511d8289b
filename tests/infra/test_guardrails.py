"""The HIPAA guardrails (infra/guardrails.py): clean on the HIPAA stacks, failing on dev, and
each rule on hand-made properties."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from infra import guardrails
from infra.guardrails import (
    UNKNOWN,
    Resource,
    ResourceRule,
    StackRule,
    check_resource,
    check_stack,
)
from tests.infra.conftest import Graph

DATA_KEY = "arn:aws:kms:us-west-2:123456789012:key/data"
LOGS_KEY = "arn:aws:kms:us-west-2:123456789012:key/logs"
SUBNETS = ["subnet-a", "subnet-b"]


def resources(graph: Graph) -> list[Resource]:
    return [Resource(r.type, r.name, r.inputs) for r in graph.resources]


def by_rule(graph: Graph) -> dict[str, set[str]]:
    """Names of the resources each rule flags."""
    found: dict[str, set[str]] = defaultdict(set)
    for v in check_stack(resources(graph)):
        found[v.rule].add(v.resource.name)
    return dict(found)


def messages(resource: Resource) -> list[str]:
    return [v.message for v in check_resource(resource)]


# --- the stacks -----------------------------------------------------------------------------


def test_hipaa_stacks_violate_no_guardrail(hipaa_stack: Graph) -> None:
    violations = check_stack(resources(hipaa_stack))
    assert not violations, "\n".join(map(str, violations))


def test_every_resource_rule_meets_the_resources_it_guards_in_the_hipaa_stack(
    hipaa_stack: Graph,
) -> None:
    # Rules that never see a resource would pass vacuously; the two the stack doesn't
    # exercise guard against resources it must not have (or doesn't use).
    absent = {guardrails.REST_METHOD_SETTINGS}
    types = {r.type for r in hipaa_stack.resources}
    for rule in guardrails.RESOURCE_RULES:
        present = set(rule.resource_types) - absent
        assert present <= types, (rule.name, present - types)
    assert hipaa_stack.of_type(guardrails.VPC_ENDPOINT), "endpoints checked for execute-api"


def test_the_dev_stack_fails_the_rules_hipaa_mode_exists_for(dev: Graph) -> None:
    found = by_rule(dev)
    names = lambda type_: {r.name for r in dev.of_type(type_)}  # noqa: E731
    encrypted = set().union(*(names(t) for t in (
        guardrails.SQS_QUEUE, guardrails.DYNAMODB_TABLE, guardrails.LOG_GROUP,
        guardrails.SECRET, guardrails.ECR_REPOSITORY)))  # fmt: skip
    # Every slot's queue, and the dead-letter queue too.
    assert len(names(guardrails.SQS_QUEUE)) == dev.outputs["workerSlots"] + 1
    assert found["customer-managed-keys"] == encrypted
    assert found["point-in-time-recovery"] == names(guardrails.DYNAMODB_TABLE)
    assert found["lambda-in-vpc"] == names(guardrails.LAMBDA_FUNCTION)
    assert found["no-public-ip"] == names(guardrails.ECS_SERVICE)
    # What dev already does right: retention, no data tracing, its stage's execution log group.
    assert set(found) == {"customer-managed-keys", "point-in-time-recovery", "lambda-in-vpc",
                          "no-public-ip"}  # fmt: skip


def test_violations_name_the_resource_and_the_fix(dev: Graph) -> None:
    for v in check_stack(resources(dev)):
        assert f"'{v.resource.name}'" in v.message and "Fix: " in v.message, v.message
        assert str(v).startswith(f"[{v.rule}] ")


def test_rule_names_are_unique_and_described() -> None:
    rules: list[ResourceRule | StackRule] = [*guardrails.RESOURCE_RULES, *guardrails.STACK_RULES]
    assert len({r.name for r in rules}) == len(rules) == 9
    assert all(r.description.endswith(".") for r in rules)


# --- each rule on hand-made properties ------------------------------------------------------

PASSING: list[tuple[str, dict[str, Any]]] = [
    (guardrails.SQS_QUEUE, {"kmsMasterKeyId": DATA_KEY}),
    (guardrails.SQS_QUEUE, {"kmsMasterKeyId": "alias/voice-agent-prod-data"}),
    (guardrails.SQS_QUEUE, {"kmsMasterKeyId": UNKNOWN}),  # a key still to be created
    (guardrails.DYNAMODB_TABLE, {"serverSideEncryption": {"enabled": True, "kmsKeyArn": DATA_KEY},
                                 "pointInTimeRecovery": {"enabled": True}}),
    (guardrails.DYNAMODB_TABLE, {"serverSideEncryption": {"enabled": True, "kmsKeyArn": UNKNOWN},
                                 "pointInTimeRecovery": {"enabled": True}}),
    (guardrails.LOG_GROUP, {"kmsKeyId": LOGS_KEY, "retentionInDays": 14}),
    (guardrails.LOG_GROUP, {"kmsKeyId": UNKNOWN, "retentionInDays": UNKNOWN}),
    (guardrails.SECRET, {"kmsKeyId": DATA_KEY}),
    (guardrails.ECR_REPOSITORY, {"encryptionConfigurations": [
        {"encryptionType": "KMS", "kmsKey": DATA_KEY}]}),
    (guardrails.KMS_KEY, {"enableKeyRotation": True}),
    (guardrails.LAMBDA_FUNCTION, {"vpcConfig": {"subnetIds": SUBNETS,
                                                "securityGroupIds": ["sg-1"]}}),
    (guardrails.LAMBDA_FUNCTION, {"vpcConfig": {"subnetIds": UNKNOWN,
                                                "securityGroupIds": [UNKNOWN]}}),
    (guardrails.ECS_SERVICE, {"networkConfiguration": {"subnets": SUBNETS,
                                                       "assignPublicIp": False}}),
    (guardrails.ECS_SERVICE, {"networkConfiguration": {"subnets": SUBNETS}}),  # default: no
    (guardrails.VPC_ENDPOINT, {"serviceName": "com.amazonaws.us-west-2.sqs",
                               "privateDnsEnabled": True}),
    (guardrails.VPC_ENDPOINT, {"serviceName": "com.amazonaws.us-west-2.execute-api",
                               "privateDnsEnabled": False}),
    (guardrails.WEBSOCKET_STAGE, {"defaultRouteSettings": {"dataTraceEnabled": False},
                                  "routeSettings": [{"routeKey": "$default"}]}),
    (guardrails.REST_METHOD_SETTINGS, {"settings": {"dataTraceEnabled": False}}),
    ("aws:s3/bucket:Bucket", {}),  # no rule for it
]  # fmt: skip

FAILING: list[tuple[str, dict[str, Any], str, str]] = [
    # type, props, rule, a phrase of the fix
    (guardrails.SQS_QUEUE, {}, "customer-managed-keys", "set kms_master_key_id"),
    (guardrails.SQS_QUEUE, {"sqsManagedSseEnabled": True}, "customer-managed-keys",
     "leave sqs_managed_sse_enabled unset"),
    (guardrails.SQS_QUEUE, {"kmsMasterKeyId": "alias/aws/sqs"}, "customer-managed-keys",
     "set kms_master_key_id"),
    (guardrails.DYNAMODB_TABLE, {"pointInTimeRecovery": {"enabled": True}},
     "customer-managed-keys", "kms_key_arn="),
    (guardrails.DYNAMODB_TABLE, {"serverSideEncryption": {"enabled": True},
                                 "pointInTimeRecovery": {"enabled": True}},
     "customer-managed-keys", "kms_key_arn="),
    (guardrails.DYNAMODB_TABLE, {"serverSideEncryption": {"enabled": True, "kmsKeyArn": DATA_KEY},
                                 "pointInTimeRecovery": {"enabled": False}},
     "point-in-time-recovery", "enabled=True"),
    (guardrails.DYNAMODB_TABLE, {"serverSideEncryption": {"enabled": True, "kmsKeyArn": DATA_KEY}},
     "point-in-time-recovery", "enabled=True"),
    (guardrails.LOG_GROUP, {"retentionInDays": 14}, "customer-managed-keys", "set kms_key_id"),
    (guardrails.LOG_GROUP, {"kmsKeyId": LOGS_KEY}, "log-retention", "set retention_in_days"),
    (guardrails.LOG_GROUP, {"kmsKeyId": LOGS_KEY, "retentionInDays": 0}, "log-retention",
     "set retention_in_days"),
    (guardrails.SECRET, {}, "customer-managed-keys", "set kms_key_id"),
    (guardrails.SECRET, {"kmsKeyId": "alias/aws/secretsmanager"}, "customer-managed-keys",
     "set kms_key_id"),
    (guardrails.ECR_REPOSITORY, {}, "customer-managed-keys", 'encryption_type="KMS"'),
    (guardrails.ECR_REPOSITORY, {"encryptionConfigurations": [{"encryptionType": "KMS"}]},
     "customer-managed-keys", "kms_key="),
    (guardrails.ECR_REPOSITORY, {"encryptionConfigurations": [{"encryptionType": "AES256"}]},
     "customer-managed-keys", 'encryption_type="KMS"'),
    (guardrails.KMS_KEY, {}, "kms-key-rotation", "enable_key_rotation=True"),
    (guardrails.KMS_KEY, {"enableKeyRotation": False}, "kms-key-rotation",
     "enable_key_rotation=True"),
    (guardrails.LAMBDA_FUNCTION, {}, "lambda-in-vpc", "vpc_config=FunctionVpcConfigArgs"),
    (guardrails.LAMBDA_FUNCTION, {"vpcConfig": {"subnetIds": SUBNETS, "securityGroupIds": []}},
     "lambda-in-vpc", "security_group_ids="),
    (guardrails.ECS_SERVICE, {"networkConfiguration": {"subnets": SUBNETS,
                                                       "assignPublicIp": True}},
     "no-public-ip", "assign_public_ip=False"),
    (guardrails.ECS_SERVICE, {}, "no-public-ip", "assign_public_ip=False"),
    (guardrails.VPC_ENDPOINT, {"serviceName": "com.amazonaws.us-west-2.execute-api",
                               "privateDnsEnabled": True}, "no-execute-api-private-dns",
     "private_dns_enabled=False"),
    (guardrails.WEBSOCKET_STAGE, {"defaultRouteSettings": {"dataTraceEnabled": True}},
     "no-data-tracing", "data_trace_enabled=False"),
    (guardrails.WEBSOCKET_STAGE, {"routeSettings": [{"routeKey": "$default",
                                                     "dataTraceEnabled": True}]},
     "no-data-tracing", "route_settings[$default]"),
    (guardrails.REST_METHOD_SETTINGS, {"settings": {"dataTraceEnabled": True}},
     "no-data-tracing", "data_trace_enabled=False"),
]  # fmt: skip


@pytest.mark.parametrize(("type_", "props"), PASSING)
def test_a_compliant_resource_passes(type_: str, props: dict[str, Any]) -> None:
    assert messages(Resource(type_, "thing", props)) == []


@pytest.mark.parametrize(("type_", "props", "rule", "fix"), FAILING)
def test_a_non_compliant_resource_fails_with_its_name_and_the_fix(
    type_: str, props: dict[str, Any], rule: str, fix: str
) -> None:
    [violation] = check_resource(Resource(type_, "thing", {**props, "name": "physical-name"}))
    assert violation.rule == rule
    assert "'thing' (physical-name)" in violation.message
    assert "Fix: " in violation.message and fix in violation.message, violation.message


def test_every_rule_has_a_failing_case() -> None:
    assert {rule for *_, rule, _ in FAILING} == {r.name for r in guardrails.RESOURCE_RULES}


def test_a_resource_breaking_several_rules_gets_each_message() -> None:
    found = check_resource(Resource(guardrails.LOG_GROUP, "logs", {}))
    assert [v.rule for v in found] == ["customer-managed-keys", "log-retention"]


# --- the stack rule: execution logs go to a declared log group ------------------------------


def stage(logging_level: Any = "ERROR", api_id: Any = "api1") -> Resource:
    settings = {"loggingLevel": logging_level, "dataTraceEnabled": False}
    props = {"apiId": api_id, "name": "live", "defaultRouteSettings": settings}
    return Resource(guardrails.WEBSOCKET_STAGE, "stage", props)


def group(name: Any) -> Resource:
    return Resource(guardrails.LOG_GROUP, "group", {"name": name, "kmsKeyId": LOGS_KEY,
                                                     "retentionInDays": 7})  # fmt: skip


def test_a_logging_stage_needs_its_execution_log_group_declared() -> None:
    [violation] = check_stack([stage(), group("/aws/apigateway/access")])
    assert violation.rule == "execution-log-groups"
    assert "API-Gateway-Execution-Logs_api1/live" in violation.message
    assert "'stage' (live)" in violation.message and "Fix: " in violation.message
    assert check_stack([stage(), group("API-Gateway-Execution-Logs_api1/live")]) == []


@pytest.mark.parametrize(
    "resources",
    [
        [stage(logging_level="OFF")],
        [stage(logging_level=None)],
        [stage(api_id=UNKNOWN)],  # a preview of a new API: checked again during `pulumi up`
        [stage(), group(UNKNOWN)],
    ],
)
def test_the_execution_log_group_rule_passes_what_it_cannot_or_need_not_judge(
    resources: list[Resource],
) -> None:
    assert check_stack(resources) == []


def test_the_execution_log_group_name_is_api_gateways() -> None:
    assert guardrails.execution_log_group_name("a1b2c3", "live") == (
        "API-Gateway-Execution-Logs_a1b2c3/live")  # fmt: skip
