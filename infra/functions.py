"""The three WebSocket route handlers as Lambda functions, each with its own role and logs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from infra import iam
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


HANDLERS: tuple[HandlerSpec, ...] = (
    # put_item (the session row) + send_message (open envelope)
    HandlerSpec("$connect", "handlers.connect.handler", "connect",
                ("dynamodb:PutItem",), ("sqs:SendMessage",)),
    # delete_item + send_message (close envelope)
    HandlerSpec("$disconnect", "handlers.disconnect.handler", "disconnect",
                ("dynamodb:DeleteItem",), ("sqs:SendMessage",)),
    # send_message (the client's frame); the hot path, so it may be kept warm
    HandlerSpec("$default", "handlers.default.handler", "default",
                (), ("sqs:SendMessage",), provisioned=True),
)  # fmt: skip


@dataclass(frozen=True)
class DeployedFunction:
    """What API Gateway needs to invoke one handler."""

    spec: HandlerSpec
    name: pulumi.Output[str]
    invoke_arn: pulumi.Output[str]
    # The alias name when API Gateway invokes an alias (provisioned concurrency), else None.
    qualifier: pulumi.Output[str] | None


class HandlerFunctions(pulumi.ComponentResource):
    """One Lambda function per route, zipped from only the modules its handler imports."""

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
        queue_url: pulumi.Input[str],
        queue_arn: pulumi.Input[str],
        network: Network,
        data_key_arn: pulumi.Input[str] | None,
        logs_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:compute:HandlerFunctions", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.by_route = {}
        self.policies = {}
        environment = aws.lambda_.FunctionEnvironmentArgs(
            variables={
                "SESSIONS_TABLE": table_name,
                "AUDIO_QUEUE_URL": queue_url,
                "SESSION_TTL_SECONDS": str(config.session_ttl_seconds),
                "LOG_LEVEL": config.log_level,
            }
        )
        vpc_config = None
        if network.lambda_subnet_ids is not None and network.lambda_security_group_id is not None:
            vpc_config = aws.lambda_.FunctionVpcConfigArgs(
                subnet_ids=network.lambda_subnet_ids,
                security_group_ids=[network.lambda_security_group_id],
            )

        for spec in HANDLERS:
            base = f"{name}-{spec.short_name}"
            function_name = f"{config.name_prefix}-{spec.short_name}"
            logs = log_group(
                f"{base}-logs",
                log_group_name=f"/aws/lambda/{function_name}",
                config=config,
                kms_key_arn=logs_key_arn,
                opts=child,
            )
            role = aws.iam.Role(
                f"{base}-role",
                description=f"voice-agent {spec.route_key} handler ({config.stack})",
                assume_role_policy=iam.service_trust_policy("lambda.amazonaws.com"),
                opts=child,
            )
            statements = [
                iam.log_writer(logs.arn),
                iam.statement(list(spec.queue_actions), [queue_arn], sid="AudioQueue"),
            ]
            if spec.table_actions:
                statements.append(
                    iam.statement(list(spec.table_actions), [table_arn], sid="SessionTable")
                )
            if data_key_arn is not None:
                statements.append(_data_key_statement(ctx, data_key_arn, spec))
            if network.lambda_subnet_ids is not None:
                statements.extend(_vpc_access_statements(ctx, network))
            policy = iam.identity_policy(statements)
            self.policies[spec.route_key] = policy
            role_policy = aws.iam.RolePolicy(
                f"{base}-policy", role=role.id, policy=policy, opts=child
            )

            provisioned = spec.provisioned and config.default_provisioned_concurrency > 0
            function = aws.lambda_.Function(
                base,
                name=function_name,
                description=f"voice-agent {spec.route_key} route",
                runtime=RUNTIME,
                architectures=[ARCHITECTURE],
                handler=spec.handler,
                code=bundle_handler(source_root, spec.handler).archive(),
                role=role.arn,
                memory_size=MEMORY_MB,
                timeout=TIMEOUT_S,
                environment=environment,
                vpc_config=vpc_config,
                logging_config=aws.lambda_.FunctionLoggingConfigArgs(
                    log_format="Text",
                    log_group=logs.name,  # the handlers write JSON lines
                ),
                # Provisioned concurrency needs a published version behind an alias.
                publish=provisioned,
                # The role must be able to write logs before the first invocation.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[logs, role_policy]),
            )
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
