"""The lean ``$default`` route for the local stack: API Gateway's SQS integration, emulated.

``sqs_integration_target`` builds a route target for ``emulators.api_gateway`` (a plain
``handler(event, context)``, like the Lambda handlers) that does what the deployed
integration does with each client message:

1. render the deployed mapping template (``infra.queue_integration``) against the message,
   as API Gateway's Velocity engine does; only the references that template uses are
   supported (``$context.<name>``, ``$context.authorizer.<name>``, ``$input.body`` and
   ``$util.urlEncode(...)`` of them), and anything else fails loudly instead of rendering
   differently from AWS;
2. read the result as SQS reads a query-API ``SendMessage`` form post, ``QueueUrl`` included
   (the connection's slot queue, from the ``$connect`` authorizer's context);
3. send that message to that queue with boto3.

So the local stack runs the production template, not a second description of the message.
``tests/infra/test_queue_integration.py`` checks the renderer against a real Velocity engine
and the message against the ``$default`` function's.

An SQS error raises, which the emulator turns into API Gateway's ``Internal server error``
message to the client; what AWS sends back for a failed AWS-service integration without a
route response is not documented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from infra.queue_integration import form_encode, send_message_template

RouteTarget = Callable[[dict[str, Any], Any], dict[str, Any]]

# ``$util.urlEncode($ref)`` or a bare ``$ref``; refs are ``$context.name`` or ``$input.body``.
_REFERENCE = re.compile(
    r"\$util\.urlEncode\((?P<encoded>\$[A-Za-z]+(?:\.[A-Za-z]+)*)\)"
    r"|(?P<plain>\$[A-Za-z]+(?:\.[A-Za-z]+)*)"
)


class TemplateError(ValueError):
    """The template uses something this emulator does not render."""


def render_request_template(template: str, event: Mapping[str, Any]) -> str:
    """Render ``template`` against a WebSocket message event, as API Gateway would."""

    def value(reference: str) -> str:
        if reference == "$input.body":
            body = event.get("body")
            return body if isinstance(body, str) else ""
        context = event.get("requestContext") or {}
        path = reference.split(".")
        if path[0] == "$context" and len(path) == 2:
            return _context_value(context, path[1], reference)
        if path[:2] == ["$context", "authorizer"] and len(path) == 3:
            # The authorizer's context, as API Gateway keeps it for the connection.
            authorizer = context.get("authorizer")
            if not isinstance(authorizer, Mapping):
                raise TemplateError(f"the event has no requestContext.authorizer for {reference}")
            return _context_value(authorizer, path[2], reference, "requestContext.authorizer")
        raise TemplateError(f"{reference} is not supported by this emulator")

    def substitute(match: re.Match[str]) -> str:
        if match.group("encoded"):
            return form_encode(value(match.group("encoded")))
        return value(match.group("plain"))

    if "#" in template:
        raise TemplateError("Velocity directives (#set, #if, ...) are not supported")
    return _REFERENCE.sub(substitute, template)


def _context_value(
    context: Mapping[str, Any], name: str, reference: str, where: str = "requestContext"
) -> str:
    if name not in context:
        raise TemplateError(f"the event has no {where}.{name} for {reference}")
    value = context[name]
    if isinstance(value, Mapping):
        raise TemplateError(f"{reference} is a map; this emulator renders only its fields")
    # API Gateway stringifies context values as Java does: booleans in lower case.
    return str(value).lower() if isinstance(value, bool) else str(value)


def send_message_arguments(form: str) -> dict[str, Any]:
    """An SQS query-API ``SendMessage`` form as ``sqs.send_message`` keyword arguments,
    ``QueueUrl`` included when the form names one."""
    params = dict(parse_qsl(form, keep_blank_values=True, strict_parsing=True))
    action = params.pop("Action", None)
    if action != "SendMessage":
        raise ValueError(f"the form's Action is {action!r}, not SendMessage")
    attributes: dict[str, dict[str, str]] = {}
    index = 1
    while f"MessageAttribute.{index}.Name" in params:
        prefix = f"MessageAttribute.{index}"
        name = params.pop(f"{prefix}.Name")
        data_type = params.pop(f"{prefix}.Value.DataType")
        attributes[name] = {
            "DataType": data_type,
            "StringValue": params.pop(f"{prefix}.Value.StringValue"),
        }
        index += 1
    arguments: dict[str, Any] = {"MessageBody": params.pop("MessageBody")}
    for optional in ("QueueUrl", "MessageGroupId", "MessageDeduplicationId"):
        if optional in params:
            arguments[optional] = params.pop(optional)
    if attributes:
        arguments["MessageAttributes"] = attributes
    if params:
        raise ValueError(f"SendMessage parameters this emulator does not know: {sorted(params)}")
    return arguments


def sqs_integration_target(sqs_client: Any) -> RouteTarget:
    """A ``$default`` route target that sends each message to the connection's slot queue
    exactly as the deployed SQS integration does (``defaultRouteIntegration = sqs``): the
    queue is the ``queueUrl`` of the event's ``requestContext.authorizer``, put there by the
    ``$connect`` authorizer (wire/slots.py).

    ``sqs_client`` is a boto3 SQS client (the local stack's, pointed at moto).
    """
    template = send_message_template()

    def target(event: dict[str, Any], context: Any) -> dict[str, Any]:
        form = render_request_template(template, event)
        arguments = send_message_arguments(form)
        if not arguments.get("QueueUrl"):
            # API Gateway would post an empty QueueUrl and SQS refuse it; fail as loudly.
            raise TemplateError("the connection's authorizer context names no queue (queueUrl)")
        sqs_client.send_message(**arguments)
        return {"statusCode": 200}

    return target
