"""The resource graph of each stack, rendered under Pulumi mocks (no CLI, no AWS)."""

from __future__ import annotations

import json

import pytest

from infra import specs
from infra.functions import HANDLERS, LIVE_ALIAS
from infra.network import GATEWAY_ENDPOINT_SERVICES, INTERFACE_ENDPOINT_SERVICES
from infra.websocket_api import ACCESS_LOG_FORMAT, ROUTE_SELECTION_EXPRESSION, STAGE_NAME
from tests.infra.conftest import OPENAI_TEST_KEY, Graph
from tests.infra.mock_stack import DIGEST

WORKER_ENV = {
    "SESSIONS_TABLE", "AUDIO_QUEUE_URLS", "WORKER_SLOTS", "DRAIN_WAIT_SECONDS", "METRICS_SERVICE",
    "CONNECTIONS_ENDPOINT_URL", "REALTIME_BASE_URL",
    "REALTIME_MODEL", "REALTIME_VOICE", "REALTIME_INSTRUCTIONS", "AUDIO_CHUNK_BYTES",
    "AWS_REGION", "LOG_LEVEL", "HEALTH_FILE",
    "MAX_CALL_SECONDS", "CLIENT_MESSAGES_PER_SECOND", "CLIENT_MESSAGE_BURST",
}  # fmt: skip
LAMBDA_ENV = {"SESSIONS_TABLE", "AUDIO_QUEUE_URLS", "WORKER_SLOTS", "SESSION_TTL_SECONDS",
              "LOG_LEVEL"}  # fmt: skip
CONNECT_ENV = LAMBDA_ENV | {"MAX_SESSIONS"}
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how Pulumi marks a secret value on the wire


def container(graph: Graph) -> dict:
    [definition] = json.loads(graph.one("aws:ecs/taskDefinition:TaskDefinition").inputs[
        "containerDefinitions"])  # fmt: skip
    return definition


def environment(graph: Graph) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(graph)["environment"]}


def function_for(graph: Graph, handler: str):
    return next(f for f in graph.of_type("aws:lambda/function:Function")
                if f.inputs["handler"] == handler)  # fmt: skip


def route_permissions(graph: Graph) -> list:
    """Invoke permissions of the route functions (the authorizer's has its own test)."""
    return [p for p in graph.of_type("aws:lambda/permission:Permission")
            if "/authorizers/" not in p.inputs["sourceArn"]]  # fmt: skip


# --- whole stack ------------------------------------------------------------------------------


def test_outputs_give_the_caller_and_the_operator_what_they_need(every_stack: Graph) -> None:
    out = every_stack.outputs
    api = every_stack.one("aws:apigatewayv2/api:Api")
    region = every_stack.one("pulumi:providers:aws").inputs["region"]
    host = f"{api.id}.execute-api.{region}.amazonaws.com"
    assert out["wssUrl"] == f"wss://{host}/{STAGE_NAME}"
    assert out["connectionsUrl"] == f"https://{host}/{STAGE_NAME}"
    assert out["sessionsTable"] == every_stack.one("aws:dynamodb/table:Table").outputs["name"]
    slots = out["workerSlots"]
    assert [url.rsplit("/", 1)[1] for url in out["audioQueueUrls"]] == [
        f"{out['clusterName']}-audio-{k}.fifo" for k in range(slots)]  # fmt: skip
    assert out["audioDeadLetterQueueUrl"].endswith("-audio-dlq.fifo")
    assert out["clusterName"] == every_stack.one("aws:ecs/cluster:Cluster").outputs["name"]
    assert out["serviceName"] == every_stack.one("aws:ecs/service:Service").outputs["name"]
    assert out["imageDigest"] == DIGEST
    # What `voice-agent token` reads to mint a token and print a ready URL.
    assert out["authSecretArn"] == every_stack.named("connect-auth-secret").outputs["arn"]
    stack = out["clusterName"].removeprefix("voice-agent-")
    assert out["tokenAudience"] == f"voice-agent-{stack}"
    assert out["defaultRouteIntegration"] in ("lambda", "sqs")


def test_every_aws_resource_is_tagged_through_the_one_provider(any_stack: Graph) -> None:
    provider = any_stack.one("pulumi:providers:aws")
    stack = "prod" if provider.inputs["region"] == "us-west-2" else "dev"
    assert json.loads(provider.inputs["defaultTags"])["tags"] == {
        "project": "voice-agent", "stack": stack}  # fmt: skip
    for resource in any_stack.aws():
        assert resource.provider and "pulumi:providers:aws::aws::" in resource.provider, (
            f"{resource.type} {resource.name} is not on the tagged provider"
        )


def test_every_lookup_goes_through_the_same_provider(any_stack: Graph) -> None:
    tokens = {c["token"] for c in any_stack.calls}
    assert "aws:ecr/getAuthorizationToken:getAuthorizationToken" in tokens
    assert "aws:index/getAvailabilityZones:getAvailabilityZones" in tokens
    for call in any_stack.calls:
        assert call["provider"] and "pulumi:providers:aws::aws::" in call["provider"], call


def test_model_region_and_voice_follow_the_stack_config(dev: Graph, prod: Graph) -> None:
    for graph, region, model, voice in (
        (dev, "us-east-1", "gpt-realtime-mini", "marin"),
        (prod, "us-west-2", "gpt-realtime", "cedar"),
    ):
        env = environment(graph)
        assert graph.one("pulumi:providers:aws").inputs["region"] == region
        assert (env["AWS_REGION"], env["REALTIME_MODEL"], env["REALTIME_VOICE"]) == (
            region, model, voice)  # fmt: skip
        assert f".{region}." in graph.outputs["wssUrl"]
        assert graph.outputs["model"] == model


def test_invalid_config_fails_the_program_with_the_allowed_values(renders: dict) -> None:
    error = renders["bad_model"]["error"]
    assert "RunError" in error
    assert "voice-agent:model is 'gpt-4o-realtime'" in error
    assert "allowed values are: gpt-realtime, gpt-realtime-mini" in error


def test_an_openai_key_set_without_secret_is_refused(renders: dict) -> None:
    error = renders["plain_key"]["error"]
    assert "pulumi config set --secret openaiApiKey" in error
    assert OPENAI_TEST_KEY not in error


# --- WebSocket API --------------------------------------------------------------------------


def test_each_route_reaches_its_own_function_through_an_aws_proxy_integration(
    any_stack: Graph,
) -> None:
    api = any_stack.one("aws:apigatewayv2/api:Api")
    assert api.inputs["protocolType"] == "WEBSOCKET"
    assert api.inputs["routeSelectionExpression"] == ROUTE_SELECTION_EXPRESSION
    routes = {r.inputs["routeKey"]: r for r in any_stack.of_type("aws:apigatewayv2/route:Route")}
    assert set(routes) == {"$connect", "$disconnect", "$default"}
    targets = set()
    for spec in HANDLERS:
        route = routes[spec.route_key]
        assert route.inputs["apiId"] == api.id
        integration = any_stack.by_id(route.inputs["target"].removeprefix("integrations/"))
        assert integration.type == "aws:apigatewayv2/integration:Integration"
        assert integration.inputs["integrationType"] == "AWS_PROXY"
        assert integration.inputs["apiId"] == api.id
        function = function_for(any_stack, spec.handler)
        uri = integration.inputs["integrationUri"]
        invoked = any_stack.by_output("invokeArn", uri)  # the function, or its alias
        assert invoked is function or invoked.inputs["functionName"] == function.outputs["name"]
        targets.add(function.name)
    assert len(targets) == 3, "every route has a function of its own"


def test_invoke_permissions_are_scoped_to_this_api_stage_and_route(any_stack: Graph) -> None:
    api = any_stack.one("aws:apigatewayv2/api:Api")
    permissions = route_permissions(any_stack)
    assert len(permissions) == 3
    by_function = {p.inputs["function"]: p for p in permissions}
    for spec in HANDLERS:
        function = function_for(any_stack, spec.handler)
        permission = by_function[function.outputs["name"]]
        assert permission.inputs["principal"] == "apigateway.amazonaws.com"
        assert permission.inputs["action"] == "lambda:InvokeFunction"
        assert permission.inputs["sourceArn"] == (
            f"{api.outputs['executionArn']}/{STAGE_NAME}/{spec.route_key}"
        )


def test_the_stage_auto_deploys_throttles_and_logs_access_without_bodies(any_stack: Graph) -> None:
    stage = any_stack.one("aws:apigatewayv2/stage:Stage")
    assert stage.inputs["name"] == STAGE_NAME and stage.inputs["autoDeploy"] is True
    settings = stage.inputs["defaultRouteSettings"]
    assert settings["throttlingRateLimit"] > 0 and settings["throttlingBurstLimit"] > 0
    assert settings["dataTraceEnabled"] is False
    assert settings["loggingLevel"] == "ERROR"
    access = stage.inputs["accessLogSettings"]
    access_group = any_stack.by_output("arn", access["destinationArn"])
    assert access_group.type == "aws:cloudwatch/logGroup:LogGroup"
    logged = json.loads(access["format"])
    assert logged == ACCESS_LOG_FORMAT and "$context.requestId" in logged.values()
    assert not any("body" in v.lower() for v in logged.values())


def test_stage_logging_has_the_account_role_it_needs(any_stack: Graph) -> None:
    account = any_stack.one("aws:apigateway/account:Account")
    role = any_stack.by_output("arn", account.inputs["cloudwatchRoleArn"])
    assert "apigateway.amazonaws.com" in role.inputs["assumeRolePolicy"]


# --- functions ------------------------------------------------------------------------------


def test_functions_are_arm64_current_python_with_the_documented_environment(
    any_stack: Graph,
) -> None:
    table = any_stack.one("aws:dynamodb/table:Table").outputs["name"]
    queue_urls = any_stack.outputs["audioQueueUrls"]
    for spec in HANDLERS:
        function = function_for(any_stack, spec.handler)
        assert function.inputs["architectures"] == ["arm64"]
        assert function.inputs["runtime"] in ("python3.13", "python3.14")
        variables = function.inputs["environment"]["variables"]
        assert set(variables) == (CONNECT_ENV if spec.limits_sessions else LAMBDA_ENV)
        assert variables["SESSIONS_TABLE"] == table
        # Every slot's queue, in slot order: a connection's slot picks its queue.
        assert variables["AUDIO_QUEUE_URLS"].split(",") == queue_urls
        assert variables["WORKER_SLOTS"] == str(len(queue_urls))
        assert variables["SESSION_TTL_SECONDS"] == "7200"
        role = any_stack.by_output("arn", function.inputs["role"])
        policies = [p for p in any_stack.of_type("aws:iam/rolePolicy:RolePolicy")
                    if p.inputs["role"] == role.id]  # fmt: skip
        assert len(policies) == 1, "each function has a role (and policy) of its own"


def test_every_log_group_has_retention_and_every_function_logs_to_its_own(
    dev: Graph, prod: Graph, dev_lean: Graph
) -> None:
    for graph, days in ((dev, 7), (prod, 90), (dev_lean, 7)):
        groups = {g.inputs["name"]: g for g in graph.of_type("aws:cloudwatch/logGroup:LogGroup")}
        assert all(g.inputs["retentionInDays"] == days for g in groups.values())
        functions = graph.of_type("aws:lambda/function:Function")
        for function in functions:
            name = f"/aws/lambda/{function.outputs['name']}"
            assert name in groups
            assert function.inputs["loggingConfig"]["logGroup"] == name
        assert container(graph)["logConfiguration"]["options"]["awslogs-group"] in groups
        assert any(name.startswith("/aws/apigateway/") for name in groups)
        # The functions, the worker, the stage (access, execution).
        assert len(groups) == len(functions) + 3
    # The route handlers and the authorizer; the lean route has no $default function.
    assert len(dev.of_type("aws:lambda/function:Function")) == 4
    assert len(dev_lean.of_type("aws:lambda/function:Function")) == 3


def test_provisioned_concurrency_only_when_configured(dev: Graph, prod: Graph) -> None:
    assert not dev.of_type("aws:lambda/provisionedConcurrencyConfig:ProvisionedConcurrencyConfig")
    assert not dev.of_type("aws:lambda/alias:Alias")
    assert all(not f.inputs["publish"] for f in dev.of_type("aws:lambda/function:Function"))

    default = function_for(prod, "handlers.default.handler")
    assert default.inputs["publish"] is True
    alias = prod.one("aws:lambda/alias:Alias")
    assert alias.inputs["name"] == LIVE_ALIAS
    assert alias.inputs["functionName"] == default.outputs["name"]
    assert alias.inputs["functionVersion"] == default.outputs["version"] != "$LATEST"
    warm = prod.one("aws:lambda/provisionedConcurrencyConfig:ProvisionedConcurrencyConfig")
    assert warm.inputs["qualifier"] == LIVE_ALIAS
    assert warm.inputs["provisionedConcurrentExecutions"] == 5
    # API Gateway invokes the alias (where the warm instances are), with permission for it.
    integrations = prod.of_type("aws:apigatewayv2/integration:Integration")
    assert alias.outputs["invokeArn"] in [i.inputs["integrationUri"] for i in integrations]
    permission = next(p for p in prod.of_type("aws:lambda/permission:Permission")
                      if p.inputs["function"] == default.outputs["name"])  # fmt: skip
    assert permission.inputs["qualifier"] == LIVE_ALIAS


# --- data -----------------------------------------------------------------------------------


def test_sessions_table_is_on_demand_keyed_by_connection_with_ttl(any_stack: Graph) -> None:
    table = any_stack.one("aws:dynamodb/table:Table")
    assert table.inputs["billingMode"] == specs.SESSIONS_BILLING_MODE == "PAY_PER_REQUEST"
    assert table.inputs["hashKey"] == specs.SESSIONS_HASH_KEY == "connectionId"
    assert table.inputs["attributes"] == [{"name": "connectionId", "type": "S"}]
    assert table.inputs["ttl"] == {"attributeName": "ttl", "enabled": True}


def test_point_in_time_recovery_in_prod_and_hipaa_only(stacks: dict[str, Graph]) -> None:
    pitr = {name: g.one("aws:dynamodb/table:Table").inputs["pointInTimeRecovery"]["enabled"]
            for name, g in stacks.items()}  # fmt: skip
    assert pitr == {"dev": False, "prod": True, "dev_hipaa": True, "dev_lean": False,
                    "hipaa_lean": True}  # fmt: skip


def test_each_slot_has_a_high_throughput_fifo_queue_redriving_to_one_fifo_dlq(
    every_stack: Graph,
) -> None:
    queues = {q.inputs["name"]: q for q in every_stack.of_type("aws:sqs/queue:Queue")}
    prefix = every_stack.outputs["clusterName"]  # voice-agent-<stack>
    slots = every_stack.outputs["workerSlots"]
    dlq = queues.pop(specs.audio_dlq_name(prefix))
    assert sorted(queues) == sorted(specs.audio_queue_name(prefix, k) for k in range(slots))
    slot_queues = [queues[specs.audio_queue_name(prefix, k)] for k in range(slots)]
    assert [q.outputs["url"] for q in slot_queues] == every_stack.outputs["audioQueueUrls"]
    for queue in slot_queues:
        # The same attributes the local stack creates (infra/specs.py), attribute for attribute.
        as_attributes = {
            "FifoQueue": str(queue.inputs["fifoQueue"]).lower(),
            "ContentBasedDeduplication": str(queue.inputs["contentBasedDeduplication"]).lower(),
            "DeduplicationScope": queue.inputs["deduplicationScope"],
            "FifoThroughputLimit": queue.inputs["fifoThroughputLimit"],
            "ReceiveMessageWaitTimeSeconds": str(int(queue.inputs["receiveWaitTimeSeconds"])),
            "VisibilityTimeout": str(int(queue.inputs["visibilityTimeoutSeconds"])),
            "MessageRetentionPeriod": str(int(queue.inputs["messageRetentionSeconds"])),
        }
        assert as_attributes == specs.audio_queue_attributes()
        assert as_attributes["ContentBasedDeduplication"] == "false"
        assert json.loads(queue.inputs["redrivePolicy"]) == {
            "deadLetterTargetArn": dlq.outputs["arn"],
            "maxReceiveCount": specs.AUDIO_QUEUE_MAX_RECEIVE_COUNT,
        }
    assert dlq.inputs["fifoQueue"] is True
    assert dlq.inputs["messageRetentionSeconds"] == specs.AUDIO_DLQ_RETENTION_SECONDS
    allow = every_stack.one("aws:sqs/redriveAllowPolicy:RedriveAllowPolicy")
    assert allow.inputs["queueUrl"] == dlq.outputs["url"]
    assert json.loads(allow.inputs["redriveAllowPolicy"]) == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [q.outputs["arn"] for q in slot_queues]}  # fmt: skip


def test_the_slot_count_follows_the_config(stacks: dict[str, Graph]) -> None:
    slots = {name: g.outputs["workerSlots"] for name, g in stacks.items()}
    # dev and prod from their stack files, dev_lean's override, the others dev's.
    assert slots == {"dev": 2, "prod": 8, "dev_hipaa": 2, "dev_lean": 3, "hipaa_lean": 2}
    for name, graph in stacks.items():
        assert len(graph.of_type("aws:sqs/queue:Queue")) == slots[name] + 1, name


# --- worker ---------------------------------------------------------------------------------


def test_worker_runs_on_fargate_spot_with_an_optional_on_demand_base(
    dev: Graph, prod: Graph
) -> None:
    for graph in (dev, prod):
        capacity = graph.one("aws:ecs/clusterCapacityProviders:ClusterCapacityProviders")
        assert set(capacity.inputs["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}
        assert capacity.inputs["defaultCapacityProviderStrategies"][0]["capacityProvider"] == (
            "FARGATE_SPOT")  # fmt: skip
        service = graph.one("aws:ecs/service:Service")
        assert service.inputs["platformVersion"] == "LATEST"
        assert service.inputs["taskDefinition"] == graph.one(
            "aws:ecs/taskDefinition:TaskDefinition").outputs["arn"]  # fmt: skip
    assert dev.one("aws:ecs/service:Service").inputs["capacityProviderStrategies"] == [
        {"capacityProvider": "FARGATE_SPOT", "weight": 1}]  # fmt: skip
    assert prod.one("aws:ecs/service:Service").inputs["capacityProviderStrategies"] == [
        {"capacityProvider": "FARGATE", "base": 1, "weight": 0},
        {"capacityProvider": "FARGATE_SPOT", "weight": 1},
    ]


def test_task_pins_the_pushed_digest_and_gets_the_key_only_as_a_secret(any_stack: Graph) -> None:
    task = any_stack.one("aws:ecs/taskDefinition:TaskDefinition")
    assert task.inputs["runtimePlatform"] == {
        "cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"}  # fmt: skip
    assert task.inputs["requiresCompatibilities"] == ["FARGATE"]
    spec = container(any_stack)
    repo = any_stack.one("aws:ecr/repository:Repository").outputs["repositoryUrl"]
    assert spec["image"] == f"{repo}@{DIGEST}"
    assert spec["stopTimeout"] == 120  # all of Spot's two-minute warning
    assert spec["healthCheck"]["command"] == ["CMD", "python", "-m", "worker.health"]
    env = environment(any_stack)
    assert set(env) == WORKER_ENV
    assert "OPENAI_API_KEY" not in env
    secret = any_stack.named("openai-key-secret")
    assert spec["secrets"] == [{"name": "OPENAI_API_KEY", "valueFrom": secret.outputs["arn"]}]
    api = any_stack.one("aws:apigatewayv2/api:Api")
    region = env["AWS_REGION"]
    assert env["CONNECTIONS_ENDPOINT_URL"] == (
        f"https://{api.id}.execute-api.{region}.amazonaws.com/{STAGE_NAME}")  # fmt: skip
    assert env["SESSIONS_TABLE"] == any_stack.outputs["sessionsTable"]
    assert env["AUDIO_QUEUE_URLS"].split(",") == any_stack.outputs["audioQueueUrls"]
    assert env["WORKER_SLOTS"] == str(any_stack.outputs["workerSlots"])
    # The drain fits the stop timeout; the metric is dimensioned by this very service.
    assert int(env["DRAIN_WAIT_SECONDS"]) + 10 <= spec["stopTimeout"]
    assert env["METRICS_SERVICE"] == any_stack.outputs["serviceName"]


def test_the_image_is_built_for_arm64_from_the_repo_root_and_pushed_to_ecr(
    any_stack: Graph,
) -> None:
    image = any_stack.one("docker-build:index:Image")
    repo = any_stack.one("aws:ecr/repository:Repository")
    assert image.inputs["platforms"] == ["linux/arm64"]
    assert image.inputs["push"] is True
    assert image.inputs["context"] == {"location": "."}
    assert image.inputs["dockerfile"] == {"location": "worker/Dockerfile"}
    registries = image.inputs["registries"]
    assert registries[SECRET_SIG], "the registry password stays a secret in the state"
    [registry] = registries["value"]
    assert registry["address"] == repo.outputs["repositoryUrl"]
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
    lifecycle = any_stack.one("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    assert lifecycle.inputs["repository"] == repo.outputs["name"]
    assert json.loads(lifecycle.inputs["policy"])["rules"]


def test_the_openai_key_is_a_pulumi_secret_and_appears_nowhere_else(
    dev: Graph, prod: Graph
) -> None:
    version = dev.named("openai-key-value")
    assert version.inputs["secretString"][SECRET_SIG]  # marked secret, encrypted in state
    others = [r.inputs for r in dev.resources if r is not version]
    assert OPENAI_TEST_KEY not in json.dumps(others, default=str)
    # Without the config value: the secret exists, empty, for put-secret-value.
    assert prod.named("openai-key-secret")
    versions = [v.name for v in prod.of_type("aws:secretsmanager/secretVersion:SecretVersion")]
    assert versions == ["connect-auth-value"]


# --- network and encryption -----------------------------------------------------------------


def test_normal_mode_has_no_idle_cost_network(dev: Graph) -> None:
    for idle_cost in ("aws:ec2/vpcEndpoint:VpcEndpoint", "aws:ec2/natGateway:NatGateway",
                      "aws:ec2/eip:Eip", "aws:kms/key:Key"):  # fmt: skip
        assert not dev.of_type(idle_cost), idle_cost
    network = dev.one("aws:ecs/service:Service").inputs["networkConfiguration"]
    assert network["assignPublicIp"] is True
    subnets = [dev.by_id(s) for s in network["subnets"]]
    assert all(s.name.startswith("network-public-") for s in subnets)
    assert all("vpcConfig" not in f.inputs for f in dev.of_type("aws:lambda/function:Function"))
    for queue in dev.of_type("aws:sqs/queue:Queue"):
        assert queue.inputs["sqsManagedSseEnabled"] is True


def test_hipaa_mode_keeps_compute_private_behind_nat_and_endpoints(hipaa_stack: Graph) -> None:
    graph = hipaa_stack
    assert len(graph.of_type("aws:ec2/natGateway:NatGateway")) == 2
    network = graph.one("aws:ecs/service:Service").inputs["networkConfiguration"]
    assert network["assignPublicIp"] is False
    private = {s.id for s in graph.of_type("aws:ec2/subnet:Subnet") if "private" in s.name}
    assert set(network["subnets"]) == private and len(private) == 2
    for function in graph.of_type("aws:lambda/function:Function"):
        assert set(function.inputs["vpcConfig"]["subnetIds"]) == private

    endpoints = graph.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")
    region = graph.one("pulumi:providers:aws").inputs["region"]
    prefix = f"com.amazonaws.{region}."
    gateway = {e.inputs["serviceName"].removeprefix(prefix) for e in endpoints
               if e.inputs["vpcEndpointType"] == "Gateway"}  # fmt: skip
    interface = [e for e in endpoints if e.inputs["vpcEndpointType"] == "Interface"]
    assert gateway == set(GATEWAY_ENDPOINT_SERVICES) == {"dynamodb", "s3"}
    assert {e.inputs["serviceName"].removeprefix(prefix) for e in interface} == set(
        INTERFACE_ENDPOINT_SERVICES) == {"sqs", "ecr.api", "ecr.dkr", "logs", "secretsmanager",
                                         "kms"}  # fmt: skip
    vpc_cidr = graph.one("aws:ec2/vpc:Vpc").inputs["cidrBlock"]
    for endpoint in interface:
        assert endpoint.inputs["privateDnsEnabled"] is True
        [group_id] = endpoint.inputs["securityGroupIds"]
        group = graph.by_id(group_id)
        assert group.inputs["ingress"] == [{"cidrBlocks": [vpc_cidr], "fromPort": 443,
                                            "protocol": "tcp", "toPort": 443}]  # fmt: skip


@pytest.mark.parametrize("name", ["dev", "prod", "dev_hipaa"])
def test_there_is_never_an_execute_api_endpoint(stacks: dict[str, Graph], name: str) -> None:
    # It would turn every @connections post of the public API into a 403 (network.py).
    for endpoint in stacks[name].of_type("aws:ec2/vpcEndpoint:VpcEndpoint"):
        assert "execute-api" not in endpoint.inputs["serviceName"]


def test_hipaa_mode_encrypts_everything_with_rotating_customer_keys(hipaa_stack: Graph) -> None:
    graph = hipaa_stack
    keys = {k.name: k for k in graph.of_type("aws:kms/key:Key")}
    assert set(keys) == {"keys-data", "keys-logs"}
    assert all(k.inputs["enableKeyRotation"] is True for k in keys.values())
    data, logs = keys["keys-data"].outputs["arn"], keys["keys-logs"].outputs["arn"]

    queues = graph.of_type("aws:sqs/queue:Queue")
    assert len(queues) == graph.outputs["workerSlots"] + 1  # every slot's queue and the DLQ
    assert all(q.inputs["kmsMasterKeyId"] == data for q in queues)
    assert all("sqsManagedSseEnabled" not in q.inputs for q in queues)
    table = graph.one("aws:dynamodb/table:Table")
    assert table.inputs["serverSideEncryption"] == {"enabled": True, "kmsKeyArn": data}
    secrets = graph.of_type("aws:secretsmanager/secret:Secret")
    assert len(secrets) == 2 and all(s.inputs["kmsKeyId"] == data for s in secrets)
    assert graph.one("aws:ecr/repository:Repository").inputs["encryptionConfigurations"] == [
        {"encryptionType": "KMS", "kmsKey": data}]  # fmt: skip
    groups = graph.of_type("aws:cloudwatch/logGroup:LogGroup")
    functions = graph.of_type("aws:lambda/function:Function")
    assert len(groups) == len(functions) + 3 and all(g.inputs["kmsKeyId"] == logs for g in groups)
    # The logs key lets the CloudWatch Logs service use it, for this account's log groups only.
    region = graph.one("pulumi:providers:aws").inputs["region"]
    statements = json.loads(keys["keys-logs"].inputs["policy"])["Statement"]
    service = [s for s in statements if s["Principal"].get("Service")]
    assert [s["Principal"]["Service"] for s in service] == [f"logs.{region}.amazonaws.com"]
    assert service[0]["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"].endswith(
        ":log-group:*")  # fmt: skip
