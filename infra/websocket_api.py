"""The public WebSocket API: its routes, the ``$connect`` authorizer and one logged stage.

``$connect`` and ``$disconnect`` are AWS_PROXY integrations to their own functions, and so is
``$default`` by default; with ``defaultRouteIntegration = sqs`` it is API Gateway's own SQS
integration instead (``infra.queue_integration``): it sends to the connection's slot queue,
named by the ``$connect`` authorizer's context, signed with a role that may only send to the
audio queues. Only ``$connect`` carries the token authorizer: a WebSocket API checks a
caller once, at the handshake.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from infra import iam
from infra import queue_integration as lean
from infra.aws_context import AwsContext
from infra.config import StackConfig
from infra.connect_authorizer import ConnectAuthorizer
from infra.functions import HandlerFunctions
from infra.guardrails import execution_log_group_name
from infra.log_groups import log_group

STAGE_NAME = "live"
# Clients send {"action": ...}; anything without a matching route goes to $default.
ROUTE_SELECTION_EXPRESSION = "$request.body.action"
# Execution logs at ERROR only: at INFO API Gateway writes several lines for every message,
# and a call sends ten audio messages a second. Access logs (below) already give one line per
# message. Data tracing (full message bodies, i.e. callers' audio) is never on.
EXECUTION_LOGGING_LEVEL = "ERROR"
# One JSON line per message: ids, route, status and latency; API Gateway's access log
# variables carry no message body.
ACCESS_LOG_FORMAT = {
    # All from API Gateway's list of WebSocket access-log variables.
    "requestId": "$context.requestId",
    "messageId": "$context.messageId",
    "connectionId": "$context.connectionId",
    "eventType": "$context.eventType",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "integrationLatencyMs": "$context.integrationLatency",
    "error": "$context.error.message",
    "requestTimeEpochMs": "$context.requestTimeEpoch",
    "sourceIp": "$context.identity.sourceIp",
}
API_GATEWAY_LOGS_MANAGED_POLICY = "service-role/AmazonAPIGatewayPushToCloudWatchLogs"
# Browsers cannot set headers on a WebSocket, so the token travels in the query string. A
# connect without it is refused with 401 by API Gateway, without invoking the authorizer.
TOKEN_IDENTITY_SOURCE = "route.request.querystring.token"
AUTHORIZED_ROUTE = "$connect"  # the only route a WebSocket API authorizes


class WebSocketApi(pulumi.ComponentResource):
    """API Gateway v2 WebSocket API, its routes and integrations, and one logged stage."""

    api_id: pulumi.Output[str]
    execution_arn: pulumi.Output[str]
    stage_name: pulumi.Output[str]
    wss_url: pulumi.Output[str]
    connections_url: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        config: StackConfig,
        ctx: AwsContext,
        functions: HandlerFunctions,
        authorizer: ConnectAuthorizer,
        queue_arns: Sequence[pulumi.Input[str]],
        data_key_arn: pulumi.Input[str] | None,
        logs_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:api:WebSocketApi", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        api = aws.apigatewayv2.Api(
            f"{name}-api",
            name=config.name_prefix,
            description="voice-agent: browser <-> voice agent audio",
            protocol_type="WEBSOCKET",
            route_selection_expression=ROUTE_SELECTION_EXPRESSION,
            opts=child,
        )
        connect_authorizer = aws.apigatewayv2.Authorizer(
            f"{name}-authorizer",
            api_id=api.id,
            name=f"{config.name_prefix}-token",
            authorizer_type="REQUEST",
            authorizer_uri=authorizer.invoke_arn,
            identity_sources=[TOKEN_IDENTITY_SOURCE],
            opts=child,
        )
        aws.lambda_.Permission(
            f"{name}-authorizer-invoke",
            action="lambda:InvokeFunction",
            function=authorizer.function_name,
            principal="apigateway.amazonaws.com",
            # Only this API's authorizer may invoke the function.
            source_arn=pulumi.Output.concat(
                api.execution_arn, "/authorizers/", connect_authorizer.id
            ),
            opts=child,
        )

        routes = []
        for route_key, function in functions.by_route.items():
            slug = function.spec.short_name
            integration = aws.apigatewayv2.Integration(
                f"{name}-{slug}",
                api_id=api.id,
                integration_type="AWS_PROXY",
                integration_method="POST",  # Lambda is always invoked with POST
                integration_uri=function.invoke_arn,
                opts=child,
            )
            authorized = route_key == AUTHORIZED_ROUTE
            routes.append(
                aws.apigatewayv2.Route(
                    f"{name}-{slug}",
                    api_id=api.id,
                    route_key=route_key,
                    target=pulumi.Output.concat("integrations/", integration.id),
                    authorization_type="CUSTOM" if authorized else None,
                    authorizer_id=connect_authorizer.id if authorized else None,
                    opts=child,
                )
            )
            aws.lambda_.Permission(
                f"{name}-{slug}-invoke",
                action="lambda:InvokeFunction",
                function=function.name,
                qualifier=function.qualifier,
                principal="apigateway.amazonaws.com",
                # Only this API's stage, on this route, may invoke the function.
                source_arn=pulumi.Output.concat(api.execution_arn, "/", STAGE_NAME, "/", route_key),
                opts=child,
            )

        if config.lean_default_route:
            routes.append(
                self._default_route_to_queue(name, api, ctx, queue_arns, data_key_arn, child)
            )

        stage_depends: list[pulumi.Resource] = list(routes)
        if config.manage_api_gateway_account:
            stage_depends.append(self._account_logging_role(name, ctx, child))

        access_logs = log_group(
            f"{name}-access-logs",
            log_group_name=f"/aws/apigateway/{config.name_prefix}/access",
            config=config,
            kms_key_arn=logs_key_arn,
            opts=child,
        )
        # Execution logs (ERROR level) go to a group API Gateway would otherwise create on
        # first use, with no retention and no key of ours; the stage must find it in place.
        execution_logs = log_group(
            f"{name}-execution-logs",
            log_group_name=api.id.apply(lambda i: execution_log_group_name(i, STAGE_NAME)),
            config=config,
            kms_key_arn=logs_key_arn,
            opts=child,
        )
        stage_depends.append(execution_logs)
        stage = aws.apigatewayv2.Stage(
            f"{name}-stage",
            api_id=api.id,
            name=STAGE_NAME,
            # Every change to routes or integrations goes live without a deployment resource.
            auto_deploy=True,
            default_route_settings=aws.apigatewayv2.StageDefaultRouteSettingsArgs(
                throttling_rate_limit=config.api_throttle_rate_limit,
                throttling_burst_limit=config.api_throttle_burst_limit,
                logging_level=EXECUTION_LOGGING_LEVEL,
                data_trace_enabled=False,
                detailed_metrics_enabled=False,
            ),
            access_log_settings=aws.apigatewayv2.StageAccessLogSettingsArgs(
                destination_arn=access_logs.arn,
                format=json.dumps(ACCESS_LOG_FORMAT, separators=(",", ":")),
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=stage_depends),
        )

        host = pulumi.Output.concat(api.id, ".execute-api.", ctx.region, ".", ctx.dns_suffix)
        self.api_id = api.id
        self.execution_arn = api.execution_arn
        self.stage_name = stage.name
        self.wss_url = pulumi.Output.concat("wss://", host, "/", stage.name)
        self.connections_url = pulumi.Output.concat("https://", host, "/", stage.name)
        self.register_outputs({"wss_url": self.wss_url, "connections_url": self.connections_url})

    @staticmethod
    def _default_route_to_queue(
        name: str,
        api: aws.apigatewayv2.Api,
        ctx: AwsContext,
        queue_arns: Sequence[pulumi.Input[str]],
        data_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions,
    ) -> aws.apigatewayv2.Route:
        """``$default`` as an SQS ``SendMessage`` by API Gateway itself (the lean path), to
        the queue of the connection's slot."""
        statements = [iam.statement(["sqs:SendMessage"], list(queue_arns), sid="SendToAudioQueues")]
        if data_key_arn is not None:
            # A producer of a queue encrypted with our key needs the key too, through SQS.
            statements.append(
                iam.statement(
                    ["kms:Decrypt", "kms:GenerateDataKey"],
                    [data_key_arn],
                    sid="DataKeyViaSqs",
                    condition={"StringEquals": {"kms:ViaService": ctx.service_host("sqs")}},
                )
            )
        role = aws.iam.Role(
            f"{name}-default-queue-role",
            description="API Gateway: send $default messages to the voice-agent audio queues",
            assume_role_policy=iam.service_trust_policy("apigateway.amazonaws.com"),
            opts=opts,
        )
        role_policy = aws.iam.RolePolicy(
            f"{name}-default-queue-policy",
            role=role.id,
            policy=iam.identity_policy(statements),
            opts=opts,
        )
        uri = ctx.partition.apply(lambda partition: lean.integration_uri(partition, ctx.region))
        integration = aws.apigatewayv2.Integration(
            f"{name}-default",
            api_id=api.id,
            integration_type="AWS",
            integration_method=lean.INTEGRATION_METHOD,
            integration_uri=uri,
            credentials_arn=role.arn,
            request_parameters=lean.REQUEST_PARAMETERS,
            template_selection_expression=lean.TEMPLATE_SELECTION_EXPRESSION,
            request_templates={lean.TEMPLATE_KEY: lean.send_message_template()},
            passthrough_behavior=lean.PASSTHROUGH_BEHAVIOR,
            # API Gateway must be able to assume the role before the first message.
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[role_policy])
            ),
        )
        # No route response: SQS's answer is never sent to the caller.
        return aws.apigatewayv2.Route(
            f"{name}-default",
            api_id=api.id,
            route_key="$default",
            target=pulumi.Output.concat("integrations/", integration.id),
            opts=opts,
        )

    @staticmethod
    def _account_logging_role(
        name: str, ctx: AwsContext, opts: pulumi.ResourceOptions
    ) -> aws.apigateway.Account:
        """API Gateway writes stage logs with one role per account and region.

        Stage logging is refused until that role is set. The role gets AWS's managed policy
        (not one of ours) because it serves every API in the region, not only this one.
        """
        role = aws.iam.Role(
            f"{name}-cloudwatch-role",
            description="API Gateway: write execution and access logs (account setting)",
            assume_role_policy=iam.service_trust_policy("apigateway.amazonaws.com"),
            opts=opts,
        )
        attachment = aws.iam.RolePolicyAttachment(
            f"{name}-cloudwatch-role",
            role=role.name,
            policy_arn=pulumi.Output.concat(
                "arn:", ctx.partition, ":iam::aws:policy/", API_GATEWAY_LOGS_MANAGED_POLICY
            ),
            opts=opts,
        )
        return aws.apigateway.Account(
            f"{name}-account",
            cloudwatch_role_arn=role.arn,
            opts=pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(depends_on=[attachment])
            ),
        )
