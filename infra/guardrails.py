"""HIPAA guardrails: what a HIPAA stack must look like, written once as pure validators.

Each rule reads resources the way Pulumi's engine sees them: a type token
(``aws:sqs/queue:Queue``), a logical name, and the input properties keyed in camelCase
(``kmsMasterKeyId``). A rule returns violations whose message names the resource, what is
wrong and the fix. The same functions run in two places:

- the tests, over the stacks rendered under Pulumi mocks (``tests/infra/test_guardrails.py``);
- the policy pack (``policy/``), over the resources of a real ``pulumi preview`` / ``up``.

No Pulumi import here, nor ``pulumi_policy``: the rules are plain functions over dicts, so
they are unit-tested with hand-made properties and the pack stays a thin adapter.

Values Pulumi cannot know yet during a preview (a key ARN of a key still to be created) reach
the rules as ``UNKNOWN`` and never count as a violation: the engine runs the rules again with
the real values during ``pulumi up``, before it creates the resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

SQS_QUEUE = "aws:sqs/queue:Queue"
DYNAMODB_TABLE = "aws:dynamodb/table:Table"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
SECRET = "aws:secretsmanager/secret:Secret"
ECR_REPOSITORY = "aws:ecr/repository:Repository"
KMS_KEY = "aws:kms/key:Key"
LAMBDA_FUNCTION = "aws:lambda/function:Function"
ECS_SERVICE = "aws:ecs/service:Service"
VPC_ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint"
WEBSOCKET_STAGE = "aws:apigatewayv2/stage:Stage"
REST_METHOD_SETTINGS = "aws:apigateway/methodSettings:MethodSettings"

_LABELS: Mapping[str, str] = {
    SQS_QUEUE: "SQS queue",
    DYNAMODB_TABLE: "DynamoDB table",
    LOG_GROUP: "log group",
    SECRET: "Secrets Manager secret",
    ECR_REPOSITORY: "ECR repository",
    KMS_KEY: "KMS key",
    LAMBDA_FUNCTION: "Lambda function",
    ECS_SERVICE: "ECS service",
    VPC_ENDPOINT: "VPC endpoint",
    WEBSOCKET_STAGE: "API Gateway stage",
    REST_METHOD_SETTINGS: "API Gateway method settings",
}

# API Gateway writes a stage's execution logs to this group, and creates it on first use
# (no retention, no key of ours) unless the program already has.
EXECUTION_LOG_GROUP_PREFIX = "API-Gateway-Execution-Logs_"


def execution_log_group_name(api_id: str, stage: str) -> str:
    """The log group API Gateway writes a stage's execution logs to (its naming, not ours)."""
    return f"{EXECUTION_LOG_GROUP_PREFIX}{api_id}/{stage}"


class _Unknown:
    """A property value Pulumi cannot know during a preview (compared by identity)."""

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource as a rule sees it. ``ref`` is the caller's handle (e.g. the URN)."""

    type: str
    name: str
    props: Mapping[str, Any]
    ref: Any = None

    def describe(self) -> str:
        """``SQS queue 'audio-dlq' (voice-agent-prod-audio-dlq.fifo)``."""
        label = _LABELS.get(self.type, self.type)
        physical = self.props.get("name")
        suffix = f" ({physical})" if isinstance(physical, str) and physical != self.name else ""
        return f"{label} '{self.name}'{suffix}"


@dataclass(frozen=True, slots=True)
class Violation:
    rule: str
    resource: Resource
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"


ResourceCheck = Callable[[Resource], list[str]]
StackCheck = Callable[[Sequence[Resource]], list[tuple[Resource, str]]]


@dataclass(frozen=True, slots=True)
class ResourceRule:
    """A rule over one resource at a time (a resource validation policy in the pack)."""

    name: str
    description: str
    resource_types: tuple[str, ...]
    check: ResourceCheck

    def __call__(self, resource: Resource) -> list[Violation]:
        if resource.type not in self.resource_types:
            return []
        return [Violation(self.name, resource, m) for m in self.check(resource)]


@dataclass(frozen=True, slots=True)
class StackRule:
    """A rule over the whole stack (a stack validation policy in the pack)."""

    name: str
    description: str
    check: StackCheck

    def __call__(self, resources: Sequence[Resource]) -> list[Violation]:
        return [Violation(self.name, r, m) for r, m in self.check(resources)]


# --- reading properties ---------------------------------------------------------------------


def _get(props: Any, *path: str | int) -> Any:
    """``props[a][b]...``; None where a step is missing, UNKNOWN where a step is unknown."""
    value = props
    for step in path:
        if value is UNKNOWN:
            return UNKNOWN
        if isinstance(step, int):
            if not isinstance(value, Sequence) or isinstance(value, str) or step >= len(value):
                return None
            value = value[step]
        else:
            if not isinstance(value, Mapping):
                return None
            value = value.get(step)
    return value


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _customer_key(value: Any) -> bool:
    """A key reference that is (or, in a preview, will be) a key of the customer's.

    AWS managed keys are named by their ``alias/aws/<service>`` alias; a bare key id or ARN
    can't be told apart from a string, so it counts as the customer's.
    """
    if value is UNKNOWN:
        return True
    return isinstance(value, str) and value.strip() != "" and "alias/aws/" not in value


def _non_empty(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0


# --- the rules ------------------------------------------------------------------------------

_KEY_FIX = "the stack's data key (infra/keys.py)"


def _customer_managed_keys(r: Resource) -> list[str]:
    p = r.props
    what = r.describe()
    if r.type == SQS_QUEUE:
        key = _get(p, "kmsMasterKeyId")
        if not _customer_key(key):
            uses = (
                "an AWS managed key" if isinstance(key, str) and key
                else "SQS-managed keys" if _is_true(_get(p, "sqsManagedSseEnabled"))
                else "no encryption at rest"
            )  # fmt: skip
            return [
                f"{what} is not encrypted with a customer-managed KMS key (it uses {uses}). "
                f"Fix: set kms_master_key_id to {_KEY_FIX} and leave sqs_managed_sse_enabled "
                "unset."
            ]
    elif r.type == DYNAMODB_TABLE:
        enabled = _get(p, "serverSideEncryption", "enabled")
        key = _get(p, "serverSideEncryption", "kmsKeyArn")
        if enabled is UNKNOWN:
            return []
        if not _is_true(enabled) or not _customer_key(key):
            uses = "an AWS managed key" if _is_true(enabled) else "an AWS owned key"
            return [
                f"{what} is not encrypted with a customer-managed KMS key (it uses {uses}). "
                "Fix: set server_side_encryption=TableServerSideEncryptionArgs(enabled=True, "
                f"kms_key_arn=<{_KEY_FIX}>)."
            ]
    elif r.type == LOG_GROUP:
        if not _customer_key(_get(p, "kmsKeyId")):
            return [
                f"{what} is not encrypted with a customer-managed KMS key. Fix: set kms_key_id "
                "to the stack's logs key (infra/keys.py), whose policy lets CloudWatch Logs "
                "use it."
            ]
    elif r.type == SECRET:
        if not _customer_key(_get(p, "kmsKeyId")):
            return [
                f"{what} is encrypted with the AWS managed key aws/secretsmanager. Fix: set "
                f"kms_key_id to {_KEY_FIX}."
            ]
    elif r.type == ECR_REPOSITORY:
        config = _get(p, "encryptionConfigurations", 0)
        if config is UNKNOWN:
            return []
        kind = _get(config, "encryptionType")
        if kind is UNKNOWN:
            return []
        if kind != "KMS" or not _customer_key(_get(config, "kmsKey")):
            uses = "the AWS managed key aws/ecr" if kind == "KMS" else "AES-256 (S3-managed keys)"
            return [
                f"{what} is not encrypted with a customer-managed KMS key (it uses {uses}). "
                "Fix: set encryption_configurations=[RepositoryEncryptionConfigurationArgs("
                f'encryption_type="KMS", kms_key=<{_KEY_FIX}>)] (this replaces the repository).'
            ]
    return []


def _key_rotation(r: Resource) -> list[str]:
    enabled = _get(r.props, "enableKeyRotation")
    if enabled is UNKNOWN or _is_true(enabled):
        return []
    return [f"{r.describe()} does not rotate its key material. Fix: set enable_key_rotation=True."]


def _point_in_time_recovery(r: Resource) -> list[str]:
    enabled = _get(r.props, "pointInTimeRecovery", "enabled")
    if enabled is UNKNOWN or _is_true(enabled):
        return []
    return [
        f"{r.describe()} has no point-in-time recovery. Fix: set point_in_time_recovery="
        "TablePointInTimeRecoveryArgs(enabled=True) (hipaa: true turns it on in infra/sessions.py)."
    ]


def _log_retention(r: Resource) -> list[str]:
    days = _get(r.props, "retentionInDays")
    if days is UNKNOWN or (type(days) in (int, float) and days > 0):
        return []
    return [
        f"{r.describe()} keeps its logs forever (no retention). Fix: set retention_in_days "
        "(the stack's logRetentionDays)."
    ]


def _lambda_in_vpc(r: Resource) -> list[str]:
    vpc = _get(r.props, "vpcConfig")
    if vpc is UNKNOWN:
        return []
    wanted = {"subnet_ids": "subnetIds", "security_group_ids": "securityGroupIds"}
    missing = [arg for arg, key in wanted.items() if not _non_empty(_get(vpc, key))]
    if not missing:
        return []
    return [
        f"{r.describe()} runs outside the VPC (vpc_config has no {' and no '.join(missing)}). "
        "Fix: set vpc_config=FunctionVpcConfigArgs(subnet_ids=<the private subnets>, "
        "security_group_ids=[<the functions' security group>])."
    ]


def _no_public_ip(r: Resource) -> list[str]:
    network = _get(r.props, "networkConfiguration")
    if network is UNKNOWN:
        return []
    if network is None:
        return [
            f"{r.describe()} has no network configuration. Fix: set network_configuration with "
            "the private subnets and assign_public_ip=False."
        ]
    if _is_true(_get(network, "assignPublicIp")):
        return [
            f"{r.describe()} gives its tasks public IP addresses. Fix: set "
            "network_configuration.assign_public_ip=False and use the private subnets (the NAT "
            "gateways carry the traffic out)."
        ]
    return []


def _no_execute_api_private_dns(r: Resource) -> list[str]:
    service = _get(r.props, "serviceName")
    if not isinstance(service, str) or not service.endswith(".execute-api"):
        return []
    if not _is_true(_get(r.props, "privateDnsEnabled")):
        return []
    return [
        f"{r.describe()} is an execute-api endpoint with private DNS: inside the VPC it answers "
        "for every *.execute-api host, so the worker's posts to the public API's @connections "
        "fail with 403. Fix: remove the endpoint (the worker reaches @connections through the "
        "NAT gateways) or set private_dns_enabled=False."
    ]


def _no_data_tracing(r: Resource) -> list[str]:
    traced: list[str] = []
    if r.type == WEBSOCKET_STAGE:
        if _is_true(_get(r.props, "defaultRouteSettings", "dataTraceEnabled")):
            traced.append("default_route_settings")
        routes = _get(r.props, "routeSettings")
        if isinstance(routes, Sequence) and not isinstance(routes, str):
            for route in routes:
                if _is_true(_get(route, "dataTraceEnabled")):
                    traced.append(f"route_settings[{_get(route, 'routeKey')}]")
    elif r.type == REST_METHOD_SETTINGS:
        if _is_true(_get(r.props, "settings", "dataTraceEnabled")):
            traced.append("settings")
    if not traced:
        return []
    return [
        f"{r.describe()} logs full request and response data (callers' audio and transcripts) "
        f"to CloudWatch in {', '.join(traced)}. Fix: set data_trace_enabled=False there."
    ]


def _execution_logging_on(stage: Resource) -> bool:
    settings = [_get(stage.props, "defaultRouteSettings")]
    routes = _get(stage.props, "routeSettings")
    if isinstance(routes, Sequence) and not isinstance(routes, str):
        settings.extend(routes)
    for s in settings:
        level = _get(s, "loggingLevel")
        if level is UNKNOWN or (isinstance(level, str) and level.upper() in ("ERROR", "INFO")):
            return True
    return False


def _execution_log_groups(resources: Sequence[Resource]) -> list[tuple[Resource, str]]:
    """Every stage that writes execution logs writes them to a log group the stack declares.

    Otherwise API Gateway creates the group itself, beyond the other rules' reach: no key of
    ours and no retention.
    """
    groups = {_get(g.props, "name") for g in resources if g.type == LOG_GROUP}
    found = []
    for stage in resources:
        if stage.type != WEBSOCKET_STAGE or not _execution_logging_on(stage):
            continue
        api_id, name = _get(stage.props, "apiId"), _get(stage.props, "name")
        if not isinstance(api_id, str) or not isinstance(name, str) or UNKNOWN in groups:
            continue  # not known until the API exists; checked again by `pulumi up`
        expected = execution_log_group_name(api_id, name)
        if expected not in groups:
            found.append((stage, (
                f"{stage.describe()} writes execution logs, but the stack declares no log group "
                f"{expected}, so API Gateway creates it without a customer-managed key or "
                "retention. Fix: declare that log group (with the logs key and retention) and "
                "make the stage depend on it."
            )))  # fmt: skip
    return found


RESOURCE_RULES: tuple[ResourceRule, ...] = (
    ResourceRule(
        "customer-managed-keys",
        "Every SQS queue (dead-letter queues too), DynamoDB table, CloudWatch log group, "
        "Secrets Manager secret and ECR repository is encrypted with a customer-managed KMS key.",
        (SQS_QUEUE, DYNAMODB_TABLE, LOG_GROUP, SECRET, ECR_REPOSITORY),
        _customer_managed_keys,
    ),
    ResourceRule(
        "kms-key-rotation",
        "Every customer-managed KMS key rotates its key material.",
        (KMS_KEY,),
        _key_rotation,
    ),
    ResourceRule(
        "point-in-time-recovery",
        "Every DynamoDB table has point-in-time recovery.",
        (DYNAMODB_TABLE,),
        _point_in_time_recovery,
    ),
    ResourceRule(
        "log-retention",
        "Every CloudWatch log group has a retention period.",
        (LOG_GROUP,),
        _log_retention,
    ),
    ResourceRule(
        "lambda-in-vpc",
        "Every Lambda function runs in the VPC (subnets and security groups set).",
        (LAMBDA_FUNCTION,),
        _lambda_in_vpc,
    ),
    ResourceRule(
        "no-public-ip",
        "No ECS service gives its tasks a public IP address.",
        (ECS_SERVICE,),
        _no_public_ip,
    ),
    ResourceRule(
        "no-execute-api-private-dns",
        "No execute-api VPC endpoint has private DNS (it would break posts to @connections).",
        (VPC_ENDPOINT,),
        _no_execute_api_private_dns,
    ),
    ResourceRule(
        "no-data-tracing",
        "API Gateway never logs full request/response data (data tracing off on every route).",
        (WEBSOCKET_STAGE, REST_METHOD_SETTINGS),
        _no_data_tracing,
    ),
)

STACK_RULES: tuple[StackRule, ...] = (
    StackRule(
        "execution-log-groups",
        "Every API Gateway stage that writes execution logs writes them to a log group the stack "
        "declares (so the log group rules apply to it).",
        _execution_log_groups,
    ),
)


def check_resource(resource: Resource) -> list[Violation]:
    """Every resource rule's violations for one resource."""
    return [v for rule in RESOURCE_RULES for v in rule(resource)]


def check_stack(resources: Iterable[Resource]) -> list[Violation]:
    """Every violation of every rule, resource rules first, in resource order."""
    listed = list(resources)
    found = [v for r in listed for v in check_resource(r)]
    return found + [v for rule in STACK_RULES for v in rule(listed)]
