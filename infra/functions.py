"""The WebSocket route handlers as Lambda functions, each with its own role and logs.

``python_function`` builds one function the way every function of the stack is built (its
own log group, role and policy; arm64; in the private subnets in HIPAA mode); the ``$connect``
authorizer (``infra.connect_authorizer``) is built with it too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import iam
from infra.audio_queue import slot_environment
from infra.aws_context import AwsContext
from infra.config import StackConfig
from infra.handler_bundle import bundle_handler
from infra.log_groups import log_group
from infra.network import Network

RUNTIME = aws.lambda_.Runtime.PYTHON3D14
ARCHITECTURE = "arm64"  # Graviton: cheaper per ms, and the handlers are pure Python
MEMORY_MB = 256
# API Gateway gives an integration 29 s; the handlers' boto3 retries end well before 10 s.
TIMEOUT_S = 10
# The alias API Gateway invokes when $default has provisioned concurrency.
LIVE_ALIAS = "live"


@dataclass(frozen=True)
class HandlerSpec:
    """One route's function and exactly the calls it makes (see handlers/*.py)."""

    route_key: str
    handler: str
    short_name: str
    table_actions: tuple[str, ...]
    queue_actions: tuple[str, ...]
    provisioned: bool = False
    # Enforces maxSessions (env MAX_SESSIONS), counting live sessions with a table scan.
    limits_sessions: bool = False


HANDLERS: tuple[HandlerSpec, ...] = (
    # put_item (the session row) + send_message (open envelope); scan when maxSessions > 0
    HandlerSpec("$connect", "handlers.connect.handler", "connect",
                ("dynamodb:PutItem",), ("sqs:SendMessage",), limits_sessions=True),
    # delete_item + send_message (close envelope)
    HandlerSpec("$disconnect", "handlers.disconnect.handler", "disconnect",
                ("dynamodb:DeleteItem",), ("sqs:SendMessage",)),
    # send_message (the client's frame); the hot path, so it may be kept warm. Not deployed
    # when defaultRouteIntegration is sqs: API Gateway then sends the same message itself.
    HandlerSpec("$default", "handlers.default.handler", "default",
                (), ("sqs:SendMessage",), provisioned=True),
)  # fmt: skip
SESSION_COUNT_ACTION = "dynamodb:Scan"


def deployed_handlers(config: StackConfig) -> tuple[HandlerSpec, ...]:
    """The route handlers this stack runs as functions."""
    if config.lean_default_route:
        return tuple(s for s in HANDLERS if s.route_key != "$default")
    return HANDLERS


def table_actions(spec: HandlerSpec, config: StackConfig) -> tuple[str, ...]:
    """What the handler does to the sessions table in this stack."""
    if spec.limits_sessions and config.max_sessions > 0:
        return (*spec.table_actions, SESSION_COUNT_ACTION)
    return spec.table_actions


@dataclass(frozen=True)
class DeployedFunction:
    """What API Gateway needs to invoke one handler."""

    spec: HandlerSpec
    name: pulumi.Output[str]
    invoke_arn: pulumi.Output[str]
    # The alias name when API Gateway invokes an alias (provisioned concurrency), else None.
    qualifier: pulumi.Output[str] | None


class HandlerFunctions(pulumi.ComponentResource):
    """One Lambda function per route, zipped from only the modules its handler imports.

    ``$default`` has none when ``defaultRouteIntegration`` is ``sqs``.
    """

    by_route: dict[str, DeployedFunction]
    policies: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        config: StackConfig,
        ctx: AwsContext,
        source_root: Path,
        table_name: pulumi.Input[str],
        table_arn: pulumi.Input[str],
        queue_urls: pulumi.Input[str],
        queue_arns: Sequence[pulumi.Input[str]],
        network: Network,
        data_key_arn: pulumi.Input[str] | None,
        logs_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:compute:HandlerFunctions", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.by_route = {}
        self.policies = {}
        shared_environment: dict[str, pulumi.Input[str]] = {
            "SESSIONS_TABLE": table_name,
            **slot_environment(config, queue_urls),
            "SESSION_TTL_SECONDS": str(config.session_ttl_seconds),
            "LOG_LEVEL": config.log_level,
        }
        if config.lean_default_route and config.default_provisioned_concurrency > 0:
            pulumi.log.warn(
                "defaultProvisionedConcurrency is ignored: with defaultRouteIntegration=sqs "
                "there is no $default function to keep warm",
                resource=self,
            )

        for spec in deployed_handlers(config):
            base = f"{name}-{spec.short_name}"
            actions = table_actions(spec, config)
            # A connection's slot picks its queue, so every handler may send to every slot's.
            statements = [
                iam.statement(list(spec.queue_actions), list(queue_arns), sid="AudioQueues")
            ]
            if actions:
                statements.append(iam.statement(list(actions), [table_arn], sid="SessionTable"))
            if data_key_arn is not None:
                statements.append(_data_key_statement(ctx, data_key_arn, spec))
            environment = dict(shared_environment)
            if spec.limits_sessions:
                environment["MAX_SESSIONS"] = str(config.max_sessions)

            provisioned = spec.provisioned and config.default_provisioned_concurrency > 0
            built = python_function(
                base,
                function_name=f"{config.name_prefix}-{spec.short_name}",
                handler=spec.handler,
                description=f"voice-agent {spec.route_key} route",
                role_description=f"voice-agent {spec.route_key} handler ({config.stack})",
                config=config,
                ctx=ctx,
                source_root=source_root,
                network=network,
                logs_key_arn=logs_key_arn,
                statements=statements,
                environment=environment,
                parent=self,
                # Provisioned concurrency needs a published version behind an alias.
                publish=provisioned,
            )
            function = built.function
            self.policies[spec.route_key] = built.policy
            qualifier: pulumi.Output[str] | None = None
            invoke_arn = function.invoke_arn
            if provisioned:
                alias = aws.lambda_.Alias(
                    f"{base}-{LIVE_ALIAS}",
                    name=LIVE_ALIAS,
                    function_name=function.name,
                    function_version=function.version,
                    opts=child,
                )
                aws.lambda_.ProvisionedConcurrencyConfig(
                    f"{base}-warm",
                    function_name=function.name,
                    qualifier=alias.name,
                    provisioned_concurrent_executions=config.default_provisioned_concurrency,
                    opts=child,
                )
                qualifier = alias.name
                invoke_arn = alias.invoke_arn
            self.by_route[spec.route_key] = DeployedFunction(
                spec=spec, name=function.name, invoke_arn=invoke_arn, qualifier=qualifier
            )
        self.register_outputs({r: f.name for r, f in self.by_route.items()})


@dataclass(frozen=True)
class PythonFunction:
    """A function built by ``python_function``, and the policy its role carries."""

    function: aws.lambda_.Function
    policy: pulumi.Output[str]


def python_function(
    name: str,
    *,
    function_name: str,
    handler: str,
    description: str,
    role_description: str,
    config: StackConfig,
    ctx: AwsContext,
    source_root: Path,
    network: Network,
    logs_key_arn: pulumi.Input[str] | None,
    statements: Sequence[Mapping[str, Any]],
    environment: Mapping[str, pulumi.Input[str]],
    parent: pulumi.Resource,
    publish: bool = False,
) -> PythonFunction:
    """One Lambda function of this stack, as children of ``parent``.

    Zipped from only the modules ``handler`` imports; a log group of its own (retention, and
    the logs key in HIPAA mode); a role of its own whose policy is ``statements`` plus writing
    those logs and, in HIPAA mode, attaching to the private subnets it runs in.
    """
    child = pulumi.ResourceOptions(parent=parent)
    logs = log_group(
        f"{name}-logs",
        log_group_name=f"/aws/lambda/{function_name}",
        config=config,
        kms_key_arn=logs_key_arn,
        opts=child,
    )
    role = aws.iam.Role(
        f"{name}-role",
        description=role_description,
        assume_role_policy=iam.service_trust_policy("lambda.amazonaws.com"),
        opts=child,
    )
    all_statements = [iam.log_writer(logs.arn), *statements]
    vpc_config = None
    if network.lambda_subnet_ids is not None and network.lambda_security_group_id is not None:
        all_statements.extend(_vpc_access_statements(ctx, network))
        vpc_config = aws.lambda_.FunctionVpcConfigArgs(
            subnet_ids=network.lambda_subnet_ids,
            security_group_ids=[network.lambda_security_group_id],
        )
    policy = iam.identity_policy(all_statements)
    role_policy = aws.iam.RolePolicy(f"{name}-policy", role=role.id, policy=policy, opts=child)
    function = aws.lambda_.Function(
        name,
        name=function_name,
        description=description,
        runtime=RUNTIME,
        architectures=[ARCHITECTURE],
        handler=handler,
        code=bundle_handler(source_root, handler).archive(),
        role=role.arn,
        memory_size=MEMORY_MB,
        timeout=TIMEOUT_S,
        environment=aws.lambda_.FunctionEnvironmentArgs(variables=dict(environment)),
        vpc_config=vpc_config,
        logging_config=aws.lambda_.FunctionLoggingConfigArgs(
            log_format="Text",
            log_group=logs.name,  # the handlers write JSON lines
        ),
        publish=publish,
        # The role must be able to write logs before the first invocation.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[logs, role_policy]),
    )
    return PythonFunction(function=function, policy=policy)


def _data_key_statement(
    ctx: AwsContext, data_key_arn: pulumi.Input[str], spec: HandlerSpec
) -> dict[str, object]:
    """Use of the data key, only through the services the handler calls.

    SQS needs GenerateDataKey + Decrypt from a producer of an encrypted queue; DynamoDB
    decrypts the table key with the caller's permissions.
    """
    services = ["sqs"] + (["dynamodb"] if spec.table_actions else [])
    via = [ctx.service_host(s) for s in services]
    return iam.statement(
        ["kms:Decrypt", "kms:GenerateDataKey"],
        [data_key_arn],
        sid="DataKeyViaServices",
        condition={"StringEquals": {"kms:ViaService": via}},
    )


def _vpc_access_statements(ctx: AwsContext, network: Network) -> list[dict[str, object]]:
    """What Lambda needs to attach a function to the private subnets (HIPAA mode).

    The same actions as AWS's AWSLambdaVPCAccessExecutionRole, scoped to this VPC's subnets
    and security group where EC2 accepts resource ARNs.
    """
    assert network.lambda_subnet_ids is not None and network.lambda_security_group_id is not None
    enis = ctx.arn("ec2", "network-interface/*")
    subnet_arns = [
        pulumi.Output.concat(ctx.arn("ec2", "subnet/"), subnet_id)
        for subnet_id in network.lambda_subnet_ids
    ]
    group_arn = pulumi.Output.concat(
        ctx.arn("ec2", "security-group/"), network.lambda_security_group_id
    )
    return [
        iam.statement(
            ["ec2:CreateNetworkInterface"], [enis, *subnet_arns, group_arn], sid="CreateEni"
        ),
        iam.statement(
            [
                "ec2:AssignPrivateIpAddresses",
                "ec2:DeleteNetworkInterface",
                "ec2:UnassignPrivateIpAddresses",
            ],
            [enis],
            sid="ManageEni",
        ),  # fmt: skip
        iam.statement(
            ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"], ["*"], sid="DescribeEni"
        ),
    ]
