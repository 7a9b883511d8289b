"""Every policy the program writes: linted, least privilege, and matched to the code using it."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from parliament import analyze_policy_string

from infra import iam
from infra.connect_authorizer import HANDLER as AUTHORIZER_HANDLER
from infra.connect_authorizer import TABLE_ACTIONS as AUTHORIZER_TABLE_ACTIONS
from infra.functions import HANDLERS, SESSION_COUNT_ACTION
from infra.keys import KEY_POLICY_ACCOUNT_STATEMENT_SID
from infra.websocket_api import API_GATEWAY_LOGS_MANAGED_POLICY
from tests.infra.conftest import Graph
from tests.infra.mock_stack import ACCOUNT, ROOT

ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"


def identity_policies(graph: Graph) -> dict[str, dict]:
    return {p.name: json.loads(p.inputs["policy"]) for p in graph.of_type(ROLE_POLICY)}


def statements(policy: dict) -> list[dict]:
    return policy["Statement"]


def actions_of(policy: dict, prefix: str) -> set[str]:
    return {a for s in statements(policy) for a in s["Action"] if a.startswith(prefix)}


# --- lint and least privilege ---------------------------------------------------------------


def test_identity_policies_pass_parliament_without_findings(every_stack: Graph) -> None:
    policies = identity_policies(every_stack)
    # One per function (route handlers, authorizer), the worker's task and execution roles,
    # and on the lean route API Gateway's role for sending to the queue.
    functions = len(every_stack.of_type("aws:lambda/function:Function"))
    lean = every_stack.outputs["defaultRouteIntegration"] == "sqs"
    assert len(policies) == functions + 2 + lean
    for name, policy in policies.items():
        findings = analyze_policy_string(json.dumps(policy)).findings
        assert not findings, f"{name}: {[(f.issue, f.detail) for f in findings]}"


# The only "*" a resource ARN may hold, each where AWS names things the program can't know:
# the streams of one log group, the network interfaces Lambda creates in the VPC, and the
# connections of one stage.
ARN_WILDCARD_SUFFIXES = (
    re.compile(r":log-group:[^*:]+:\*$"),
    re.compile(r":network-interface/\*$"),
    re.compile(r":[a-z0-9]+/[a-z]+/(POST|GET|DELETE)/@connections/\*$"),
)


def wildcard_problems(policy: dict, region: str) -> list[str]:
    """Every grant broader than least privilege: ``*`` actions, ``*`` resources beyond
    ``iam.WILDCARD_RESOURCE_ACTIONS``, wildcards in ARNs beyond ``ARN_WILDCARD_SUFFIXES``,
    and ARNs outside this stack's account and region."""
    problems = []
    for stmt in statements(policy):
        if stmt["Effect"] != "Allow":
            problems.append(f"unexpected effect {stmt['Effect']}")
        problems += [f"wildcard action {a}" for a in stmt["Action"] if "*" in a]
        if "*" in stmt["Resource"]:
            if stmt["Resource"] != ["*"]:
                problems.append(f"'*' beside other resources: {stmt['Resource']}")
            broad = set(stmt["Action"]) - set(iam.WILDCARD_RESOURCE_ACTIONS)
            problems += [f"{a} on Resource '*'" for a in sorted(broad)]
            continue
        for arn in stmt["Resource"]:
            # Everything is this stack's own resource, in its account and region.
            if not re.match(rf"arn:aws:[a-z0-9-]+:{region}:{ACCOUNT}:[^*]+", arn):
                problems.append(f"{arn} is not in this account and region")
            elif "*" in arn and not any(p.search(arn) for p in ARN_WILDCARD_SUFFIXES):
                problems.append(f"wildcard resource {arn}")
    return problems


def test_no_wildcard_action_and_no_wildcard_resource_beyond_the_named_exceptions(
    every_stack: Graph,
) -> None:
    region = every_stack.one("pulumi:providers:aws").inputs["region"]
    for name, policy in identity_policies(every_stack).items():
        assert wildcard_problems(policy, region) == [], name


@pytest.mark.parametrize(
    ("sid", "field", "injected"),
    [
        ("ConsumeAudioQueue", "Action", "sqs:*"),
        ("ConsumeAudioQueue", "Action", "*"),
        ("ConsumeAudioQueue", "Action", "sqs:Receive*"),
        ("SessionTable", "Resource", "*"),
        ("SessionTable", "Resource", "arn:aws:dynamodb:us-west-2:123456789012:table/*"),
        ("ConsumeAudioQueue", "Resource", "arn:aws:sqs:us-west-2:123456789012:*"),
        ("ConsumeAudioQueue", "Resource", "arn:aws:sqs:*:123456789012:voice-agent-prod-audio"),
        ("PostToCallers", "Resource",
         "arn:aws:execute-api:us-west-2:123456789012:*/live/POST/@connections/*"),
    ],
)  # fmt: skip
def test_the_check_catches_a_wildcard_that_creeps_in(
    prod: Graph, sid: str, field: str, injected: str
) -> None:
    policy = identity_policies(prod)["worker-task-policy"]
    assert wildcard_problems(policy, "us-west-2") == []
    [stmt] = [s for s in statements(policy) if s.get("Sid") == sid]
    stmt[field] = [*stmt[field], injected]
    assert wildcard_problems(policy, "us-west-2"), f"{injected} in {sid} went unnoticed"


def test_the_wildcard_exceptions_are_few_and_justified() -> None:
    assert set(iam.WILDCARD_RESOURCE_ACTIONS) == {
        "ecr:GetAuthorizationToken",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSubnets",
    }
    assert all(reason for reason in iam.WILDCARD_RESOURCE_ACTIONS.values())  # fmt: skip


@pytest.mark.parametrize(
    "stmt",
    [
        {"Action": ["sqs:*"], "Resource": ["arn:aws:sqs:us-east-1:1:q"]},
        {"Action": ["s3:GetObject"], "Resource": ["*"]},
        {"Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage"], "Resource": ["*"]},
    ],
)
def test_the_policy_builder_refuses_broad_grants(stmt: dict) -> None:
    with pytest.raises(ValueError):
        iam.check_least_privilege([{"Effect": "Allow", **stmt}])


def test_roles_carry_only_their_own_inline_policy(every_stack: Graph) -> None:
    attachments = every_stack.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
    # The single managed policy: API Gateway's account-wide logging role, which serves every
    # API in the region and so cannot be scoped to this stack.
    assert [a.inputs["policyArn"] for a in attachments] == [
        f"arn:aws:iam::aws:policy/{API_GATEWAY_LOGS_MANAGED_POLICY}"
    ]


def test_trust_policies_admit_one_service_and_ecs_only_from_this_account(
    every_stack: Graph,
) -> None:
    for role in every_stack.of_type("aws:iam/role:Role"):
        [stmt] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
        assert stmt["Action"] == "sts:AssumeRole" and stmt["Effect"] == "Allow"
        service = stmt["Principal"]["Service"]
        assert service in {"lambda.amazonaws.com", "ecs-tasks.amazonaws.com",
                           "apigateway.amazonaws.com"}  # fmt: skip
        if service == "ecs-tasks.amazonaws.com":
            assert stmt["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}


def test_key_policies_delegate_to_iam_and_trust_only_the_logs_service(hipaa_stack: Graph) -> None:
    for key in hipaa_stack.of_type("aws:kms/key:Key"):
        policy = json.loads(key.inputs["policy"])
        for stmt in policy["Statement"]:
            principal = stmt["Principal"]
            assert principal != "*" and principal.get("AWS") != "*"
            if stmt.get("Sid") == KEY_POLICY_ACCOUNT_STATEMENT_SID:
                # AWS's default statement, so that IAM policies (checked above) govern use.
                assert principal == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
            else:
                assert key.name == "keys-logs" and "Condition" in stmt
                assert not any(a == "kms:*" for a in stmt["Action"])


# --- the policies match the code that uses them ---------------------------------------------

BOTO3_ACTIONS = {
    "put_item": "dynamodb:PutItem",
    "get_item": "dynamodb:GetItem",
    "batch_get_item": "dynamodb:BatchGetItem",
    "update_item": "dynamodb:UpdateItem",
    "delete_item": "dynamodb:DeleteItem",
    "query": "dynamodb:Query",
    "send_message": "sqs:SendMessage",
    "send_message_batch": "sqs:SendMessage",
    "receive_message": "sqs:ReceiveMessage",
    "delete_message": "sqs:DeleteMessage",
    "delete_message_batch": "sqs:DeleteMessage",
    "change_message_visibility": "sqs:ChangeMessageVisibility",
    "change_message_visibility_batch": "sqs:ChangeMessageVisibility",
    "get_queue_attributes": "sqs:GetQueueAttributes",
    "scan": "dynamodb:Scan",
    "get_secret_value": "secretsmanager:GetSecretValue",
}
CONNECTIONS_CALLS = {"post_to_connection": "POST", "get_connection": "GET",
                     "delete_connection": "DELETE"}  # fmt: skip


def boto3_calls(paths: list[Path], clients: set[str] | None = None) -> set[str]:
    """Names of boto3 methods called in ``paths`` (on the named client variables, if given)."""
    calls = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func.value
            owner = target.id if isinstance(target, ast.Name) else None
            if clients is None or owner in clients:
                calls.add(node.func.attr)
    return calls & (set(BOTO3_ACTIONS) | set(CONNECTIONS_CALLS))


def module_path(handler: str) -> Path:
    return ROOT / (handler.rpartition(".")[0].replace(".", "/") + ".py")


@pytest.mark.parametrize("spec", HANDLERS, ids=lambda s: s.short_name)
def test_each_handler_role_grants_exactly_the_calls_its_handler_makes(spec, prod: Graph) -> None:
    # prod counts sessions (maxSessions keeps its default, 100), so $connect scans.
    module = module_path(spec.handler)
    needed = {BOTO3_ACTIONS[c] for c in boto3_calls([module], {"dynamodb", "sqs"})}
    assert needed, f"no AWS calls found in {module}"
    policy = identity_policies(prod)[f"handlers-{spec.short_name}-policy"]
    granted = actions_of(policy, "dynamodb:") | actions_of(policy, "sqs:")
    assert granted == needed


def test_connect_may_scan_the_table_only_when_it_limits_sessions(prod: Graph, dev_lean: Graph):
    limited = identity_policies(prod)["handlers-connect-policy"]
    unlimited = identity_policies(dev_lean)["handlers-connect-policy"]  # maxSessions = 0
    assert SESSION_COUNT_ACTION in actions_of(limited, "dynamodb:")
    assert actions_of(unlimited, "dynamodb:") == {"dynamodb:PutItem"}


def queue_arns(graph: Graph) -> list[str]:
    """The slots' audio queue ARNs, in slot order."""
    return [graph.by_output("url", url).outputs["arn"] for url in graph.outputs["audioQueueUrls"]]


def test_the_authorizer_may_read_its_signing_key_and_place_calls_on_slots(
    every_stack: Graph,
) -> None:
    assert boto3_calls([module_path(AUTHORIZER_HANDLER)], {"secrets"}) == {"get_secret_value"}
    placing = {BOTO3_ACTIONS[c] for c in boto3_calls([module_path(AUTHORIZER_HANDLER)],
                                                     {"dynamodb"})}  # fmt: skip
    assert placing == set(AUTHORIZER_TABLE_ACTIONS) == {
        "dynamodb:BatchGetItem", "dynamodb:UpdateItem"}  # fmt: skip
    policy = identity_policies(every_stack)["connect-auth-function-policy"]
    secret = every_stack.named("connect-auth-secret").outputs["arn"]
    [read] = [s for s in statements(policy) if s["Action"] == [BOTO3_ACTIONS["get_secret_value"]]]
    assert read["Resource"] == [secret]
    # The slots' lease items are in the sessions table: read them all, count the call.
    table = every_stack.one("aws:dynamodb/table:Table").outputs["arn"]
    [place] = [s for s in statements(policy) if s.get("Sid") == "PlaceOnSlot"]
    assert (place["Action"], place["Resource"]) == (sorted(AUTHORIZER_TABLE_ACTIONS), [table])
    granted = {a for s in statements(policy) for a in s["Action"]}
    # It returns the slot's queue URL; it sends nothing itself.
    assert not {a for a in granted if a.split(":")[0] in ("sqs", "execute-api")}
    assert actions_of(policy, "dynamodb:") == set(AUTHORIZER_TABLE_ACTIONS)
    kms = [s for s in statements(policy) if any(a.startswith("kms:") for a in s["Action"])]
    if every_stack.of_type("aws:kms/key:Key"):
        [stmt] = kms
        assert stmt["Action"] == ["kms:Decrypt"]
        via = stmt["Condition"]["StringEquals"]["kms:ViaService"]
        assert [v.split(".")[0] for v in via] == ["secretsmanager", "dynamodb"]
    else:
        assert not kms


def test_the_lean_route_role_may_only_send_to_the_audio_queues(lean_stack: Graph) -> None:
    policy = identity_policies(lean_stack)["websocket-default-queue-policy"]
    [send] = [s for s in statements(policy) if s["Action"] == ["sqs:SendMessage"]]
    # Every slot's queue (the template picks the connection's), nothing else.
    assert send["Resource"] == queue_arns(lean_stack)
    assert len(send["Resource"]) == lean_stack.outputs["workerSlots"]
    others = [s for s in statements(policy) if s is not send]
    if lean_stack.of_type("aws:kms/key:Key"):
        # A producer of a queue under our key: GenerateDataKey and Decrypt, through SQS only.
        [data_key] = [k.outputs["arn"] for k in lean_stack.of_type("aws:kms/key:Key")
                      if k.name == "keys-data"]  # fmt: skip
        [kms] = others
        assert kms["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
        assert kms["Resource"] == [data_key]
        assert kms["Condition"]["StringEquals"]["kms:ViaService"].startswith("sqs.")
    else:
        assert others == []
    role = lean_stack.named("websocket-default-queue-role")
    [trust] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trust["Principal"] == {"Service": "apigateway.amazonaws.com"}


def connections_methods(path: Path) -> set[str]:
    """HTTP methods the worker's own @connections transport sends (``_send("POST", ...)``)."""
    methods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_send"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            methods.add(node.args[0].value)
    return methods


def test_the_worker_task_role_covers_every_call_the_worker_makes(prod: Graph) -> None:
    calls = boto3_calls(sorted((ROOT / "worker").glob("*.py")))
    assert {"receive_message", "update_item"} <= calls
    methods = connections_methods(ROOT / "worker" / "connections.py")
    methods |= {CONNECTIONS_CALLS[c] for c in calls if c in CONNECTIONS_CALLS}
    assert methods == {"POST", "GET", "DELETE"}
    policy = identity_policies(prod)["worker-task-policy"]
    granted = {a for s in statements(policy) for a in s["Action"]}
    for call in calls - set(CONNECTIONS_CALLS):
        assert BOTO3_ACTIONS[call] in granted, call
    [stmt] = [s for s in statements(policy) if s["Action"] == ["execute-api:ManageConnections"]]
    for method in methods:
        assert any(f"/live/{method}/@connections/*" in r for r in stmt["Resource"]), method


def test_every_sender_and_the_worker_reach_every_slot_queue(every_stack: Graph) -> None:
    arns = queue_arns(every_stack)
    assert len(arns) == every_stack.outputs["workerSlots"] >= 1
    dlq = every_stack.by_output("url", every_stack.outputs["audioDeadLetterQueueUrl"])
    for name, policy in identity_policies(every_stack).items():
        for stmt in statements(policy):
            if any(a.startswith("sqs:") for a in stmt["Action"]):
                # A call may be on any slot, and a worker may come to hold any slot; no one
                # reads or writes the dead-letter queue.
                assert stmt["Resource"] == arns, name
                assert dlq.outputs["arn"] not in stmt["Resource"], name
    task = identity_policies(every_stack)["worker-task-policy"]
    [consume] = [s for s in statements(task) if s.get("Sid") == "ConsumeAudioQueue"]
    assert consume["Action"] == ["sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                                 "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]  # fmt: skip
    # Session rows, handover state and the slot leases.
    assert actions_of(task, "dynamodb:") == {
        "dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem",
        "dynamodb:Query", "dynamodb:Scan", "dynamodb:UpdateItem"}  # fmt: skip


def test_the_worker_may_post_only_to_this_apis_stage(any_stack: Graph) -> None:
    api = any_stack.one("aws:apigatewayv2/api:Api")
    policy = identity_policies(any_stack)["worker-task-policy"]
    [stmt] = [s for s in statements(policy) if s["Action"] == ["execute-api:ManageConnections"]]
    prefix = api.outputs["executionArn"] + "/live/"
    assert sorted(stmt["Resource"]) == sorted(
        f"{prefix}{m}/@connections/*" for m in ("POST", "GET", "DELETE"))  # fmt: skip


def test_hipaa_roles_use_the_data_key_only_through_the_services_that_need_it(
    hipaa_stack: Graph, dev: Graph
) -> None:
    assert not any(actions_of(p, "kms:") for p in identity_policies(dev).values())
    for name, policy in identity_policies(hipaa_stack).items():
        kms = [s for s in statements(policy) if any(a.startswith("kms:") for a in s["Action"])]
        assert len(kms) == 1, name
        assert "kms:ViaService" in kms[0]["Condition"]["StringEquals"], name
