"""The lean $default route (defaultRouteIntegration = sqs): API Gateway's SQS integration.

Its mapping template is rendered by a real Velocity engine (airspeed) and by the local
stack's emulation of it, and both must give exactly the message the $default function sends
(``QueueEnvelope.to_send_message``); on moto, the two messages arrive identical. The graph
tests check what is deployed: no $default function, an AWS integration with its own role.
"""

from __future__ import annotations

import json

import airspeed
import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

from emulators.sqs_integration import (
    TemplateError,
    render_request_template,
    send_message_arguments,
    sqs_integration_target,
)
from infra import queue_integration as lean
from infra.websocket_api import STAGE_NAME
from tests.infra.conftest import Graph
from wire.queue import RECEIVE_ATTRIBUTES, EnvelopeKind, QueueEnvelope
from wire.slots import CONTEXT_QUEUE_URL, CONTEXT_SLOT

QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/voice-agent-dev-audio-1.fifo"
# Ids as API Gateway makes them: 16 base64 characters ending in "=", which may hold "+" and
# "/" (so every id must be form-encoded, not only the body).
CONNECTION_ID = "L0SM9c+FvHc/Ihw="
REQUEST_ID = "Ab1Cd+EfG/hIjk="


def message_event(
    body: str,
    *,
    connection_id: str = CONNECTION_ID,
    request_id: str = REQUEST_ID,
    epoch_ms: int = 1_717_171_717_123,
    queue_url: str = QUEUE_URL,
) -> dict:
    """A WebSocket MESSAGE event as API Gateway hands it to a route (emulators.api_gateway):
    the ``$connect`` authorizer placed the connection on slot 1 (wire/slots.py)."""
    return {
        "requestContext": {
            "routeKey": "$default", "eventType": "MESSAGE", "messageDirection": "IN",
            "connectionId": connection_id, "requestId": request_id,
            "extendedRequestId": request_id, "messageId": "Mid0123456789A=",
            "requestTimeEpoch": epoch_ms, "connectedAt": epoch_ms - 5_000, "stage": STAGE_NAME,
            "apiId": "wsapi123", "domainName": "wsapi123.execute-api.us-east-1.amazonaws.com",
            "authorizer": {"principalId": "caller", CONTEXT_SLOT: "1",
                           CONTEXT_QUEUE_URL: queue_url},
        },
        "body": body,
        "isBase64Encoded": False,
    }  # fmt: skip


def lambda_message(event: dict) -> dict:
    """What the $default function sends for ``event`` (handlers/default.py): to the queue of
    the connection's slot."""
    ctx = event["requestContext"]
    envelope = QueueEnvelope(
        kind=EnvelopeKind.FRAME,
        connection_id=ctx["connectionId"],
        request_id=ctx["requestId"],
        received_at_ms=int(ctx["requestTimeEpoch"]),
        body=event["body"],
    )
    return envelope.to_send_message(ctx["authorizer"][CONTEXT_QUEUE_URL])


class VelocityUtil:
    """``$util`` as API Gateway provides it, for the functions the template calls."""

    @staticmethod
    def urlEncode(text: str) -> str:  # noqa: N802 - API Gateway's name
        return lean.form_encode(text)


def velocity(event: dict) -> str:
    """The template rendered by airspeed, a Velocity engine, with API Gateway's variables."""
    template = airspeed.Template(lean.send_message_template())
    return template.merge(
        {"context": event["requestContext"], "input": {"body": event["body"]},
         "util": VelocityUtil()}
    )  # fmt: skip


AUDIO_FRAME = json.dumps({"action": "audio", "seq": 7, "audio": "AAEC/+8AAQ=="})
BODIES = [
    AUDIO_FRAME,
    '{"action":"text","text":"a & b = c; 100% ü 日本 \\"q\\" + $x #set(1)"}',
    "not json at all ~ * . - _",
    "{}",
    " leading and trailing spaces ",
]


# --- the template ---------------------------------------------------------------------------


def test_the_template_is_one_line_built_from_the_envelope_attribute_names() -> None:
    template = lean.send_message_template()
    assert "\n" not in template and "#" not in template
    for name in ("connection_id", "kind", "received_at_ms"):
        assert f"={name}&" in template
    # The queue is the connection's slot queue, from the $connect authorizer's context.
    assert template.startswith("Action=SendMessage&QueueUrl=$util.urlEncode("
                               "$context.authorizer.queueUrl)&")  # fmt: skip
    # Every request value that can hold form-special characters goes through urlEncode; the
    # number does not (urlEncode takes a string, and digits need no encoding).
    assert "$util.urlEncode($input.body)" in template
    assert template.count("$util.urlEncode($context.connectionId)") == 2
    assert "$util.urlEncode($context.requestId)" in template
    assert template.endswith("StringValue=$context.requestTimeEpoch")


@pytest.mark.parametrize("body", BODIES)
def test_velocity_renders_exactly_the_message_the_default_function_sends(body: str) -> None:
    event = message_event(body)
    form = velocity(event)
    assert send_message_arguments(form) == lambda_message(event)
    # The local stack's renderer produces the very same request, byte for byte.
    assert render_request_template(lean.send_message_template(), event) == form


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(min_size=1, max_size=300).filter(lambda s: "\x00" not in s),
    connection_id=st.from_regex(r"[A-Za-z0-9+/]{15}=", fullmatch=True),
    request_id=st.from_regex(r"[A-Za-z0-9+/]{15}=", fullmatch=True),
    epoch_ms=st.integers(min_value=1, max_value=2**42),
)
def test_any_frame_survives_the_template_unchanged(
    body: str, connection_id: str, request_id: str, epoch_ms: int
) -> None:
    event = message_event(body, connection_id=connection_id, request_id=request_id,
                          epoch_ms=epoch_ms)  # fmt: skip
    form = velocity(event)
    assert send_message_arguments(form) == lambda_message(event)
    assert render_request_template(lean.send_message_template(), event) == form


def test_the_emulated_renderer_refuses_what_it_does_not_implement() -> None:
    event = message_event("{}")
    with pytest.raises(TemplateError, match=r"\$input.json"):
        render_request_template("MessageBody=$input.json", event)
    with pytest.raises(TemplateError, match="directives"):
        render_request_template("#set($x = 1)MessageBody=$input.body", event)
    with pytest.raises(TemplateError, match="requestContext.identity"):
        render_request_template("X=$context.identity", event)
    with pytest.raises(TemplateError, match="requestContext.authorizer.tenant"):
        render_request_template("X=$context.authorizer.tenant", event)
    with pytest.raises(TemplateError, match="a map"):
        render_request_template("X=$context.authorizer", event)
    del event["requestContext"]["authorizer"]
    with pytest.raises(TemplateError, match="no requestContext.authorizer"):
        render_request_template("X=$context.authorizer.queueUrl", event)


def test_authorizer_context_values_render_as_api_gateway_stringifies_them() -> None:
    event = message_event("{}")
    event["requestContext"]["authorizer"].update({"n": 3, "ok": True})
    assert render_request_template(
        "a=$context.authorizer.n&b=$context.authorizer.ok&c=$util.urlEncode("
        "$context.authorizer.queueUrl)", event) == (
        f"a=3&b=true&c={lean.form_encode(QUEUE_URL)}")  # fmt: skip


def test_form_reading_refuses_other_actions_and_unknown_parameters() -> None:
    with pytest.raises(ValueError, match="not SendMessage"):
        send_message_arguments("Action=DeleteMessage&MessageBody=x")
    with pytest.raises(ValueError, match="DelaySeconds"):
        send_message_arguments("Action=SendMessage&MessageBody=x&DelaySeconds=5")


# --- the local stack's stand-in, on moto ----------------------------------------------------


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch):
    for name, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("sqs")


def received(sqs, queue_url: str) -> list[dict]:
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                   **RECEIVE_ATTRIBUTES)["Messages"]  # fmt: skip
    return [
        {"Body": m["Body"], "MessageAttributes": m["MessageAttributes"],
         "MessageGroupId": m["Attributes"]["MessageGroupId"],
         "MessageDeduplicationId": m["Attributes"]["MessageDeduplicationId"]}
        for m in messages
    ]  # fmt: skip


def fifo_queue(sqs, name: str) -> str:
    return sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]


def test_the_emulated_integration_delivers_what_the_default_function_delivers(sqs) -> None:
    lean_queue, lambda_queue = fifo_queue(sqs, "lean.fifo"), fifo_queue(sqs, "lambda.fifo")
    target = sqs_integration_target(sqs)
    for i, body in enumerate(BODIES):
        event = message_event(body, request_id=f"Req{i:012d}+/=", queue_url=lean_queue)
        assert target(event, None) == {"statusCode": 200}
        sqs.send_message(**{**lambda_message(event), "QueueUrl": lambda_queue})
    lean_messages = received(sqs, lean_queue)
    assert len(lean_messages) == len(BODIES)
    assert lean_messages == received(sqs, lambda_queue)


def test_each_connection_reaches_the_queue_of_its_own_slot(sqs) -> None:
    slots = [fifo_queue(sqs, f"slot-{k}.fifo") for k in range(3)]
    target = sqs_integration_target(sqs)
    for k, queue in enumerate(slots):
        target(message_event(f'{{"slot":{k}}}', connection_id=f"Conn{k:011d}=",
                             queue_url=queue), None)  # fmt: skip
    assert [[m["Body"] for m in received(sqs, q)] for q in slots] == [
        ['{"slot":0}'], ['{"slot":1}'], ['{"slot":2}']]  # fmt: skip


def test_an_sqs_error_fails_the_message_like_a_failed_integration(sqs) -> None:
    target = sqs_integration_target(sqs)
    missing = fifo_queue(sqs, "x.fifo") + "-missing"
    with pytest.raises(Exception, match="NonExistentQueue|does not exist"):
        target(message_event(AUDIO_FRAME, queue_url=missing), None)
    # A connection the authorizer named no queue for: SQS would refuse the empty QueueUrl.
    with pytest.raises(TemplateError, match="names no queue"):
        target(message_event(AUDIO_FRAME, queue_url=""), None)


# --- what is deployed -----------------------------------------------------------------------


def routes(graph: Graph) -> dict:
    return {r.inputs["routeKey"]: r for r in graph.of_type("aws:apigatewayv2/route:Route")}


def test_lean_stacks_have_no_default_function_nor_warm_capacity(lean_stack: Graph) -> None:
    handlers = {f.inputs["handler"] for f in lean_stack.of_type("aws:lambda/function:Function")}
    assert "handlers.default.handler" not in handlers
    assert {"handlers.connect.handler", "handlers.disconnect.handler"} <= handlers
    assert not lean_stack.of_type("aws:lambda/alias:Alias")
    assert not lean_stack.of_type(
        "aws:lambda/provisionedConcurrencyConfig:ProvisionedConcurrencyConfig")  # fmt: skip
    permissions = lean_stack.of_type("aws:lambda/permission:Permission")
    assert not any(p.inputs["sourceArn"].endswith("/$default") for p in permissions)
    assert lean_stack.outputs["defaultRouteIntegration"] == "sqs"


def test_lean_default_route_is_an_sqs_integration_with_its_own_role(lean_stack: Graph) -> None:
    api = lean_stack.one("aws:apigatewayv2/api:Api")
    route = routes(lean_stack)["$default"]
    assert "authorizationType" not in route.inputs  # only $connect is authorized
    integration = lean_stack.by_id(route.inputs["target"].removeprefix("integrations/"))
    assert integration.inputs["apiId"] == api.id
    assert integration.inputs["integrationType"] == "AWS"
    assert integration.inputs["integrationMethod"] == "POST"
    region = lean_stack.one("pulumi:providers:aws").inputs["region"]
    # SQS's root: the template names the queue (QueueUrl), so one integration serves every slot.
    assert integration.inputs["integrationUri"] == f"arn:aws:apigateway:{region}:sqs:path//"
    role = lean_stack.by_output("arn", integration.inputs["credentialsArn"])
    assert role.type == "aws:iam/role:Role" and role.name == "websocket-default-queue-role"
    assert integration.inputs["requestParameters"] == {
        "integration.request.header.Content-Type": "'application/x-www-form-urlencoded'"
    }
    assert integration.inputs["templateSelectionExpression"] == r"\$default"
    assert integration.inputs["requestTemplates"] == {"$default": lean.send_message_template()}
    assert integration.inputs["passthroughBehavior"] == "NEVER"
    # No route response: SQS's reply never reaches the caller.
    assert not lean_stack.of_type("aws:apigatewayv2/routeResponse:RouteResponse")
    # $connect and $disconnect stay functions.
    for key in ("$connect", "$disconnect"):
        target = lean_stack.by_id(routes(lean_stack)[key].inputs["target"].removeprefix(
            "integrations/"))  # fmt: skip
        assert target.inputs["integrationType"] == "AWS_PROXY"


def test_the_default_stacks_keep_the_default_function(any_stack: Graph) -> None:
    route = routes(any_stack)["$default"]
    integration = any_stack.by_id(route.inputs["target"].removeprefix("integrations/"))
    assert integration.inputs["integrationType"] == "AWS_PROXY"
    roles = {r.name for r in any_stack.of_type("aws:iam/role:Role")}
    assert "websocket-default-queue-role" not in roles
    assert any_stack.outputs["defaultRouteIntegration"] == "lambda"
