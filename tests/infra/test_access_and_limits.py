"""Who may connect (the $connect token authorizer and its signing key) and the limits each
stack sets (sessions, call length, per-caller message rate), as deployed under mocks."""

from __future__ import annotations

import json

from infra.config import SETTINGS_BY_KEY
from infra.connect_authorizer import HANDLER as AUTHORIZER_HANDLER
from infra.connect_authorizer import SIGNING_KEY_LENGTH
from infra.websocket_api import STAGE_NAME, TOKEN_IDENTITY_SOURCE
from tests.infra.conftest import LEAN_OVERRIDES, Graph
from tests.infra.mock_stack import SIGNING_KEY
from wire.token import audience_for

SECRET_SIG = "4dabf18193072939515e22adb298388d"  # how Pulumi marks a secret value on the wire
AUTHORIZER = "aws:apigatewayv2/authorizer:Authorizer"


def function_for(graph: Graph, handler: str):
    return next(f for f in graph.of_type("aws:lambda/function:Function")
                if f.inputs["handler"] == handler)  # fmt: skip


def worker_environment(graph: Graph) -> dict[str, str]:
    [container] = json.loads(graph.one("aws:ecs/taskDefinition:TaskDefinition").inputs[
        "containerDefinitions"])  # fmt: skip
    return {e["name"]: e["value"] for e in container["environment"]}


# --- the authorizer -------------------------------------------------------------------------


def test_the_token_authorizer_guards_connect_and_nothing_else(every_stack: Graph) -> None:
    api = every_stack.one("aws:apigatewayv2/api:Api")
    authorizer = every_stack.one(AUTHORIZER)
    assert authorizer.inputs["apiId"] == api.id
    assert authorizer.inputs["authorizerType"] == "REQUEST"
    # Browsers cannot set WebSocket headers: the token is the `token` query parameter, and a
    # connect without one is refused by API Gateway before the function runs.
    assert authorizer.inputs["identitySources"] == [TOKEN_IDENTITY_SOURCE]
    assert TOKEN_IDENTITY_SOURCE == "route.request.querystring.token"
    function = function_for(every_stack, AUTHORIZER_HANDLER)
    assert authorizer.inputs["authorizerUri"] == function.outputs["invokeArn"]
    routes = {r.inputs["routeKey"]: r for r in every_stack.of_type("aws:apigatewayv2/route:Route")}
    assert set(routes) == {"$connect", "$disconnect", "$default"}
    assert routes["$connect"].inputs["authorizationType"] == "CUSTOM"
    assert routes["$connect"].inputs["authorizerId"] == authorizer.id
    for key in ("$disconnect", "$default"):
        assert "authorizerId" not in routes[key].inputs
        assert routes[key].inputs.get("authorizationType", "NONE") == "NONE"


def test_only_this_apis_authorizer_may_invoke_the_authorizer_function(every_stack: Graph) -> None:
    api = every_stack.one("aws:apigatewayv2/api:Api")
    authorizer = every_stack.one(AUTHORIZER)
    function = function_for(every_stack, AUTHORIZER_HANDLER)
    [permission] = [p for p in every_stack.of_type("aws:lambda/permission:Permission")
                    if p.inputs["function"] == function.outputs["name"]]  # fmt: skip
    assert permission.inputs["principal"] == "apigateway.amazonaws.com"
    assert permission.inputs["action"] == "lambda:InvokeFunction"
    assert permission.inputs["sourceArn"] == (
        f"{api.outputs['executionArn']}/authorizers/{authorizer.id}")  # fmt: skip


def test_the_signing_key_is_random_per_stack_and_kept_only_in_secrets_manager(
    every_stack: Graph,
) -> None:
    key = every_stack.one("random:index/randomPassword:RandomPassword")
    assert key.inputs["length"] == SIGNING_KEY_LENGTH >= 43  # at least 256 bits of base62
    assert key.inputs["special"] is False  # safe to paste into a shell or an .env file
    secret = every_stack.named("connect-auth-secret")
    version = every_stack.named("connect-auth-value")
    assert version.inputs["secretId"] == secret.id
    assert version.inputs["secretString"][SECRET_SIG]  # a Pulumi secret, encrypted in state
    # The key reaches nothing else: not the function's environment, not any other input.
    others = [r.inputs for r in every_stack.resources if r not in (key, version)]
    assert SIGNING_KEY not in json.dumps(others, default=str)


def test_the_authorizer_function_knows_its_secret_audience_origins_and_slots(
    dev: Graph, dev_lean: Graph
) -> None:
    for graph, origins in ((dev, ""), (dev_lean, "https://app.example.com,http://localhost:8000")):
        function = function_for(graph, AUTHORIZER_HANDLER)
        assert function.inputs["architectures"] == ["arm64"]
        assert function.inputs["environment"]["variables"] == {
            "AUTH_SECRET_ARN": graph.named("connect-auth-secret").outputs["arn"],
            "TOKEN_AUDIENCE": audience_for("dev"),
            "ALLOWED_ORIGINS": origins,
            # Where it reads the slots' leases, and the queue URLs it hands back per slot.
            "SESSIONS_TABLE": graph.outputs["sessionsTable"],
            "AUDIO_QUEUE_URLS": ",".join(graph.outputs["audioQueueUrls"]),
            "WORKER_SLOTS": str(graph.outputs["workerSlots"]),
            "LOG_LEVEL": "INFO",
        }
        assert graph.outputs["tokenAudience"] == "voice-agent-dev"
        group = f"/aws/lambda/{function.outputs['name']}"
        assert function.inputs["loggingConfig"]["logGroup"] == group
        [logs] = [g for g in graph.of_type("aws:cloudwatch/logGroup:LogGroup")
                  if g.inputs["name"] == group]  # fmt: skip
        assert logs.inputs["retentionInDays"] == 7


def test_in_hipaa_mode_the_key_is_under_our_key_and_the_function_in_the_vpc(
    hipaa_stack: Graph,
) -> None:
    data_key = next(k for k in hipaa_stack.of_type("aws:kms/key:Key") if k.name == "keys-data")
    assert hipaa_stack.named("connect-auth-secret").inputs["kmsKeyId"] == data_key.outputs["arn"]
    assert hipaa_stack.named("connect-auth-secret").inputs["recoveryWindowInDays"] == 30
    function = function_for(hipaa_stack, AUTHORIZER_HANDLER)
    private = {s.id for s in hipaa_stack.of_type("aws:ec2/subnet:Subnet") if "private" in s.name}
    assert set(function.inputs["vpcConfig"]["subnetIds"]) == private


# --- limits ---------------------------------------------------------------------------------


def test_the_default_limits_reach_the_code_that_enforces_them(any_stack: Graph) -> None:
    connect = function_for(any_stack, "handlers.connect.handler")
    assert connect.inputs["environment"]["variables"]["MAX_SESSIONS"] == str(
        SETTINGS_BY_KEY["maxSessions"].default)  # fmt: skip
    env = worker_environment(any_stack)
    assert (env["MAX_CALL_SECONDS"], env["CLIENT_MESSAGES_PER_SECOND"],
            env["CLIENT_MESSAGE_BURST"]) == ("7080", "50", "100")  # fmt: skip
    for handler in ("handlers.disconnect.handler", "handlers.default.handler",
                    AUTHORIZER_HANDLER):  # fmt: skip
        assert "MAX_SESSIONS" not in function_for(any_stack, handler).inputs["environment"][
            "variables"]  # fmt: skip


def test_configured_limits_reach_the_code_that_enforces_them(dev_lean: Graph) -> None:
    connect = function_for(dev_lean, "handlers.connect.handler")
    assert connect.inputs["environment"]["variables"]["MAX_SESSIONS"] == "0"  # no limit
    env = worker_environment(dev_lean)
    assert env["MAX_CALL_SECONDS"] == LEAN_OVERRIDES["voice-agent:maxCallSeconds"] == "1800"
    assert env["CLIENT_MESSAGES_PER_SECOND"] == "20"
    assert env["CLIENT_MESSAGE_BURST"] == "40"


def test_stage_throttling_stays_the_first_line_of_defence(every_stack: Graph) -> None:
    settings = every_stack.one("aws:apigatewayv2/stage:Stage").inputs["defaultRouteSettings"]
    assert (settings["throttlingRateLimit"], settings["throttlingBurstLimit"]) == (1000, 2000)
    assert every_stack.one("aws:apigatewayv2/stage:Stage").inputs["name"] == STAGE_NAME


def test_bad_values_of_the_new_keys_fail_the_program_clearly(renders: dict) -> None:
    error = renders["bad_route"]["error"]
    assert "RunError" in error
    assert "voice-agent:defaultRouteIntegration is 'http'; allowed values are: lambda, sqs" in error
    assert "voice-agent:allowedOrigins has 'example.com', which is not a web origin" in error
