"""The lean ``$default`` route: API Gateway's own SQS integration, specified once.

With ``defaultRouteIntegration = sqs`` no Lambda function runs per client message: API
Gateway turns each message into an SQS ``SendMessage`` request (the query API, a form post)
with the mapping template below, signs it with a role of its own and posts it to SQS. The
queue is the connection's slot queue (wire/slots.py): the ``$connect`` authorizer put its URL
in the connection's authorizer context, and the template names it in the form's ``QueueUrl``,
so one integration serves every slot. The message is exactly the one the ``$default``
function sends
(``wire.queue.QueueEnvelope.to_send_message``): the raw client frame as the body, the
connection as the FIFO message group, API Gateway's per-message ``requestId`` as the
deduplication id, and the same three message attributes.

The Pulumi component (``infra.websocket_api``) deploys this template, and the local stack's
stand-in (``emulators.sqs_integration``) renders the very same template, so what runs
locally is what API Gateway runs. Standard library only, and no Pulumi (see ``infra``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote_plus

from wire.queue import ATTR_CONNECTION_ID, ATTR_KIND, ATTR_RECEIVED_AT_MS, EnvelopeKind
from wire.slots import CONTEXT_QUEUE_URL

# The WebSocket API's template selection: the escaped ``\$default`` expression always
# evaluates to the ``$default`` key, so this one template applies to every message.
TEMPLATE_SELECTION_EXPRESSION = r"\$default"
TEMPLATE_KEY = "$default"
# A message no template matches is refused rather than passed through unmapped (it cannot
# happen with the expression above; NEVER makes that explicit).
PASSTHROUGH_BEHAVIOR = "NEVER"
INTEGRATION_METHOD = "POST"
# The SQS query API takes a form post; API Gateway sends the template's output as the body.
CONTENT_TYPE = "application/x-www-form-urlencoded"
REQUEST_PARAMETERS = {"integration.request.header.Content-Type": f"'{CONTENT_TYPE}'"}

# The request values the template reads (WebSocket mapping template reference).
BODY = "$input.body"  # the client's frame, as received
CONNECTION_ID = "$context.connectionId"
REQUEST_ID = "$context.requestId"  # unique per message: the deduplication id
REQUEST_TIME_EPOCH = "$context.requestTimeEpoch"  # milliseconds
# The connection's slot queue, from the $connect authorizer's context: API Gateway keeps that
# context for the connection and offers it to every route's template as a string.
QUEUE_URL = f"$context.authorizer.{CONTEXT_QUEUE_URL}"


class ValueKind(Enum):
    LITERAL = "literal"  # fixed text, form-encoded here
    STRING = "string"  # a request value, form-encoded by $util.urlEncode at request time
    NUMBER = "number"  # a numeric request value: digits need no encoding (and urlEncode
    # takes a string, so a number is never passed to it)


@dataclass(frozen=True, slots=True)
class FormField:
    """One parameter of the ``SendMessage`` form."""

    name: str
    value: str
    kind: ValueKind = ValueKind.LITERAL

    def render(self) -> str:
        """The field as Velocity template text."""
        if self.kind is ValueKind.LITERAL:
            value = form_encode(self.value)
        elif self.kind is ValueKind.STRING:
            value = f"$util.urlEncode({self.value})"
        else:
            value = self.value
        return f"{form_encode(self.name)}={value}"


def _attribute(
    index: int, name: str, data_type: str, value: str, kind: ValueKind
) -> list[FormField]:
    prefix = f"MessageAttribute.{index}"
    return [
        FormField(f"{prefix}.Name", name),
        FormField(f"{prefix}.Value.DataType", data_type),
        FormField(f"{prefix}.Value.StringValue", value, kind),
    ]


def send_message_fields() -> list[FormField]:
    """The ``SendMessage`` parameters, in template order."""
    return [
        FormField("Action", "SendMessage"),
        FormField("QueueUrl", QUEUE_URL, ValueKind.STRING),
        FormField("MessageBody", BODY, ValueKind.STRING),
        FormField("MessageGroupId", CONNECTION_ID, ValueKind.STRING),
        FormField("MessageDeduplicationId", REQUEST_ID, ValueKind.STRING),
        *_attribute(1, ATTR_CONNECTION_ID, "String", CONNECTION_ID, ValueKind.STRING),
        *_attribute(2, ATTR_KIND, "String", EnvelopeKind.FRAME.value, ValueKind.LITERAL),
        *_attribute(3, ATTR_RECEIVED_AT_MS, "Number", REQUEST_TIME_EPOCH, ValueKind.NUMBER),
    ]


def send_message_template() -> str:
    """The request template: one line (a trailing newline would end up in the last value)."""
    return "&".join(field.render() for field in send_message_fields())


def form_encode(text: str) -> str:
    """``application/x-www-form-urlencoded`` as Java's ``URLEncoder`` (``$util.urlEncode``)
    writes it: space as ``+``, everything but letters, digits and ``.-*_`` escaped."""
    return quote_plus(text, safe="*").replace("~", "%7E")


def integration_uri(partition: str, region: str) -> str:
    """The AWS-service integration URI: SQS, path form, at the service's root (``/``).

    The query API takes the queue as the ``QueueUrl`` parameter of a request posted to the
    endpoint's root, so the URI names no queue and one integration serves every slot.
    (``path/{account}/{queue}`` would fix one queue; the ``action/SendMessage`` form is meant
    for actions that address no resource by path.)
    """
    return f"arn:{partition}:apigateway:{region}:sqs:path//"
