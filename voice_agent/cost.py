"""``voice-agent cost``: what a stack costs per call-minute, itemised, from a dated price table.

The model is pure: a ``Scenario`` (the stack's settings and the shape of its calls), a
``PriceTable`` and the ``Assumptions`` go in, a ``CostEstimate`` comes out; no files, no
network, no clock. The command layer at the end of this module (``add_arguments``, ``run``)
reads ``Pulumi.<stack>.yaml`` and ``prices.toml`` and prints a table or JSON.

Two kinds of cost are priced:

- per-call costs, counted per call-minute: WebSocket messages, Lambda invocations, SQS
  requests, DynamoDB writes, NAT and endpoint gigabytes, log bytes, model tokens;
- shared costs, billed per hour whatever the traffic (worker tasks, NAT gateways, VPC
  endpoints, keys, secrets, provisioned concurrency), spread over the concurrent calls.

Message and request sizes come from the wire formats themselves (``wire.client``,
``wire.queue``, ``wire.realtime``), so the metering steps (32 KB per WebSocket message,
64 KB per SQS request) are applied to the bytes the code really sends.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from voice_agent.arguments import bounded_int, positive_number
from wire import client as proto
from wire import realtime as rt
from wire.audio import BYTES_PER_SECOND, ms_to_bytes
from wire.queue import EnvelopeKind, QueueEnvelope

if TYPE_CHECKING:
    from infra.config import StackConfig

Route = Literal["lambda", "sqs"]
ROUTES: tuple[Route, ...] = ("lambda", "sqs")
ARCHITECTURES = ("arm64", "x86_64")
Group = Literal["aws", "model"]

# AWS prices a month as 730 hours; monthly volumes (for tiered prices) assume the given
# number of concurrent calls around the clock.
HOURS_PER_MONTH = 730
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60
GIB = 1024**3  # AWS's "GB" in data transfer and memory prices
MILLION = 1_000_000

# The page's uplink frame can be 10 ms to the 16 KB PCM limit (341 ms); the downlink chunk
# must be whole samples and fit one 32 KB frame as base64 JSON (wire.client).
MIN_FRAME_MS = 10
MAX_FRAME_MS = proto.MAX_UPLINK_PCM_BYTES * 1000 // BYTES_PER_SECOND
MIN_CHUNK_BYTES = 480
MAX_CHUNK_BYTES = proto.MAX_DOWNLINK_PCM_BYTES

# Representative identifiers, so sizes are those of real messages: API Gateway connection
# and request ids are 16 characters; Realtime item ids are "item_" and 21 characters.
_SAMPLE_CONNECTION_ID = "L0SM9cOFvHcCIhw="
_SAMPLE_REQUEST_ID = "L0SMAcOFvHcFnYA="
_SAMPLE_ITEM_ID = "item_CVfZb7mX6n9ZQ0kTnKmXG"
_SAMPLE_EPOCH_MS = 1_764_000_000_000
_SAMPLE_SEQ = 123_456
# The first audio delta of a response goes to the caller at once, whatever the chunk size.
_FIRST_DELTA_MS = 100

# The HIPAA network as infra/network.py and infra/keys.py build it (a test keeps these in
# step): a NAT gateway per zone, six interface endpoints in each zone, two keys.
ZONE_COUNT = 2
INTERFACE_ENDPOINT_COUNT = 6
KMS_KEY_COUNT = 2
SECRET_COUNT = 1  # the OpenAI key in Secrets Manager, in every mode


class PriceError(ValueError):
    """The price table is malformed or lacks an item the model needs."""


class CostInputError(ValueError):
    """A stack file or an option the cost command cannot use; the message says why."""


# --- the price table ----------------------------------------------------------------------


@dataclass(frozen=True)
class PriceTable:
    """The dated prices of ``prices.toml``: items by ``section.name``, per region."""

    as_of: date
    regions: tuple[str, ...]
    fallback_region: str
    items: Mapping[str, Mapping[str, Any]]

    @classmethod
    def from_toml(cls, text: str) -> PriceTable:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PriceError(f"price table is not valid TOML: {exc}") from None
        items: dict[str, Mapping[str, Any]] = {}
        for section, entries in raw.items():
            if isinstance(entries, dict):
                for name, item in entries.items():
                    if isinstance(item, dict):
                        items[f"{section}.{name}"] = item
        try:
            return cls(
                as_of=raw["as_of"],
                regions=tuple(raw["regions"]),
                fallback_region=raw["fallback_region"],
                items=items,
            )
        except KeyError as exc:
            raise PriceError(f"price table lacks {exc.args[0]!r}") from None

    def price_region(self, region: str) -> str:
        """The region whose prices apply: ``region`` if the table covers it, else the fallback."""
        return region if region in self.regions else self.fallback_region

    def item(self, key: str) -> Mapping[str, Any]:
        try:
            return self.items[key]
        except KeyError:
            raise PriceError(f"price table has no item {key!r}") from None

    def usd(self, key: str, region: str) -> float:
        """A flat price, in the item's unit."""
        item = self.item(key)
        by_region = item.get("by_region", {})
        region = self.price_region(region)
        if region in by_region:
            return float(by_region[region])
        if "usd" not in item:
            raise PriceError(f"price table item {key!r} has no flat 'usd' price")
        return float(item["usd"])

    def value(self, key: str) -> float:
        """A fact that is not a price: a metering step, tokens per second, a discount."""
        item = self.item(key)
        if "value" not in item:
            raise PriceError(f"price table item {key!r} has no 'value'")
        return float(item["value"])

    def tiered(self, key: str, monthly_quantity: float) -> float:
        """Average price over a month's ``monthly_quantity`` under the item's volume tiers."""
        tiers = self.item(key).get("tiers")
        if not tiers:
            raise PriceError(f"price table item {key!r} has no 'tiers'")
        return blended_tier_price(
            [(float(bound), float(price)) for bound, price in tiers], monthly_quantity
        )

    def model_price(self, model: str, kind: str) -> float:
        """Per million tokens of ``kind`` (audio_input, text_output, ...) for a Realtime model."""
        item = self.item(f"openai.{model}")
        if kind not in item:
            raise PriceError(f"price table has no {kind!r} price for {model}")
        return float(item[kind])


def blended_tier_price(tiers: Sequence[tuple[float, float]], quantity: float) -> float:
    """Average unit price of ``quantity`` units under ascending ``(upper bound, price)`` tiers.

    The first tier's price applies to a zero quantity, so a unit cost is always defined.
    """
    if quantity <= 0:
        return tiers[0][1]
    cost, lower = 0.0, 0.0
    for bound, price in tiers:
        in_tier = min(quantity, bound) - lower
        if in_tier > 0:
            cost += in_tier * price
        if quantity <= bound:
            break
        lower = bound
    return cost / quantity


# --- metering -----------------------------------------------------------------------------


def metered_units(size_bytes: int, step_bytes: int) -> int:
    """Billing units of a payload metered in ``step_bytes`` steps; an empty one is still one."""
    return max(1, math.ceil(size_bytes / step_bytes))


def uplink_frame_bytes(frame_ms: int) -> int:
    """Bytes of one client audio frame on the WebSocket (base64 PCM16 in JSON)."""
    return len(proto.audio_action(bytes(ms_to_bytes(frame_ms)), seq=_SAMPLE_SEQ))


def downlink_audio_bytes(chunk_bytes: int) -> int:
    """Bytes of one downlink ``audio`` event carrying ``chunk_bytes`` of PCM."""
    return len(proto.audio_event(bytes(chunk_bytes), _SAMPLE_ITEM_ID))


def queue_message_bytes(body: str) -> int:
    """SQS size of one audio-queue message: its body plus its message attributes."""
    envelope = QueueEnvelope(
        kind=EnvelopeKind.FRAME,
        connection_id=_SAMPLE_CONNECTION_ID,
        request_id=_SAMPLE_REQUEST_ID,
        received_at_ms=_SAMPLE_EPOCH_MS,
        body=body,
    )
    attributes = envelope.to_send_message("")["MessageAttributes"]
    attribute_bytes = sum(
        len(name) + len(attr["DataType"]) + len(attr["StringValue"])
        for name, attr in attributes.items()
    )
    return len(body.encode()) + attribute_bytes


def model_append_bytes(frame_ms: int) -> int:
    """Bytes of the ``input_audio_buffer.append`` event the worker sends per uplink frame."""
    return len(json.dumps(rt.input_audio_append(bytes(ms_to_bytes(frame_ms)))))


# The worker's default lease tick (worker/settings.py, SLOT_TICK_SECONDS).
LEASE_TICK_SECONDS = 5.0

# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What shapes the bill: the stack's settings and the calls it carries."""

    region: str
    model: str
    hipaa: bool = False
    point_in_time_recovery: bool = False
    worker_cpu: int = 512
    worker_memory: int = 1024
    worker_count: int = 1
    worker_slots: int = 1
    worker_on_demand_base: int = 0
    default_provisioned_concurrency: int = 0
    default_route: Route = "lambda"
    chunk_bytes: int = 4800
    frame_ms: int = 100
    concurrency: int = 1
    talk_ratio: float = 0.5  # fraction of the call the assistant speaks; the user the rest

    def __post_init__(self) -> None:
        if self.concurrency < 0:
            raise CostInputError(f"concurrency must be 0 or more, got {self.concurrency}")
        if not 0.0 <= self.talk_ratio <= 1.0:
            raise CostInputError(f"talk ratio must be between 0 and 1, got {self.talk_ratio}")
        if self.default_route not in ROUTES:
            raise CostInputError(
                f"default route must be one of {', '.join(ROUTES)}, got {self.default_route!r}"
            )
        if not MIN_FRAME_MS <= self.frame_ms <= MAX_FRAME_MS:
            raise CostInputError(
                f"frame length must be {MIN_FRAME_MS}-{MAX_FRAME_MS} ms, got {self.frame_ms}"
            )
        if not MIN_CHUNK_BYTES <= self.chunk_bytes <= MAX_CHUNK_BYTES or self.chunk_bytes % 2:
            raise CostInputError(
                f"chunk bytes must be even and {MIN_CHUNK_BYTES}-{MAX_CHUNK_BYTES}, "
                f"got {self.chunk_bytes}"
            )


@dataclass(frozen=True)
class Assumptions:
    """Every number the estimate uses that is neither a stack setting nor a published price."""

    call_minutes: float = 3.0  # average call length: spreads per-call costs, grows context
    turns_per_minute: float = 4.0  # assistant responses per call-minute
    # Transcript deltas (user and assistant) go to the caller as they arrive, about one per
    # text token: ~150 spoken words a minute is ~3 tokens a second of speech.
    transcript_events_per_speech_second: float = 3.0
    # speech_started, speech_stopped, audio_done and two final transcripts per turn.
    control_events_per_turn: float = 5.0
    assistant_text_tokens_per_second: float = 3.0  # the transcript the model also outputs
    instructions_tokens: int = 100
    lambda_architecture: str = "arm64"
    lambda_memory_mb: int = 256
    default_invocation_ms: float = 15.0  # one SQS SendMessage, warm
    connect_invocation_ms: float = 40.0  # a DynamoDB put and an SQS send
    disconnect_invocation_ms: float = 30.0
    worker_architecture: str = "arm64"
    calls_per_vcpu: int = 300  # the target; `voice-agent bench` measures it
    sqs_pollers: int = 4  # SQS_POLLERS
    poll_cycle_ms: float = 30.0  # a receive and its delete_message_batch
    model_deltas_per_second: float = 10.0  # output_audio.delta events per second of speech
    model_event_overhead_bytes: int = 250  # JSON around each Realtime event's payload
    websocket_overhead_bytes: int = 40  # WebSocket and TLS framing per message
    http_overhead_bytes: int = 1200  # SigV4-signed request and response headers per call
    # CloudWatch Logs bills 26 bytes per event on top of the message.
    lambda_log_bytes_per_invocation: int = 340  # START, END and REPORT lines (Text format)
    handler_log_bytes_per_call: int = 800  # "connected" and "disconnected"
    api_access_log_bytes_per_message: int = 305  # infra.websocket_api's JSON line, ~280 B
    worker_log_bytes_per_call: int = 1500
    kms_requests_per_hour: float = 100.0  # data-key refreshes of SQS, DynamoDB and logs
    session_row_bytes: int = 300

    def __post_init__(self) -> None:
        for name in ("lambda_architecture", "worker_architecture"):
            if getattr(self, name) not in ARCHITECTURES:
                raise CostInputError(
                    f"{name.replace('_', ' ')} must be one of {', '.join(ARCHITECTURES)}"
                )
        if self.call_minutes <= 0 or self.turns_per_minute < 0 or self.calls_per_vcpu <= 0:
            raise CostInputError("call minutes and calls per vCPU must be positive")
        if not 128 <= self.lambda_memory_mb <= 10_240:
            raise CostInputError(f"Lambda memory must be 128-10240 MB, got {self.lambda_memory_mb}")

    @property
    def lambda_memory_gb(self) -> float:
        return self.lambda_memory_mb / 1024


# --- what one call does, per call-minute --------------------------------------------------


@dataclass(frozen=True)
class CallShape:
    """What one call sends and receives in one minute, derived from the scenario."""

    user_speech_s: float
    assistant_speech_s: float
    turns: float
    calls_started: float  # per call-minute: 1 / call length
    uplink_frames: float
    uplink_frame_bytes: int
    downlink_audio_posts: float
    downlink_audio_bytes: float  # all audio posts together
    downlink_control_posts: float
    queue_message_bytes: int

    @property
    def downlink_audio_post_bytes(self) -> float:
        return (
            self.downlink_audio_bytes / self.downlink_audio_posts
            if self.downlink_audio_posts
            else 0
        )


def call_shape(scenario: Scenario, assumptions: Assumptions) -> CallShape:
    """Counts per call-minute. Uplink audio flows the whole call (the mic stays on); downlink
    audio only while the assistant speaks."""
    assistant_s = 60.0 * scenario.talk_ratio
    user_s = 60.0 - assistant_s
    turns = assumptions.turns_per_minute
    frame_bytes = uplink_frame_bytes(scenario.frame_ms)
    frame_body = proto.audio_action(bytes(ms_to_bytes(scenario.frame_ms)), seq=_SAMPLE_SEQ)
    posts, audio_bytes = _downlink_audio(assistant_s, turns, scenario.chunk_bytes)
    control = (
        assumptions.transcript_events_per_speech_second * (user_s + assistant_s)
        + assumptions.control_events_per_turn * turns
        + 2 / assumptions.call_minutes  # ready and session_ended
    )
    return CallShape(
        user_speech_s=user_s,
        assistant_speech_s=assistant_s,
        turns=turns,
        calls_started=1 / assumptions.call_minutes,
        uplink_frames=60_000 / scenario.frame_ms,
        uplink_frame_bytes=frame_bytes,
        downlink_audio_posts=posts,
        downlink_audio_bytes=audio_bytes,
        downlink_control_posts=control,
        queue_message_bytes=queue_message_bytes(frame_body),
    )


def _downlink_audio(assistant_s: float, turns: float, chunk_bytes: int) -> tuple[float, float]:
    """Audio posts per call-minute and their total bytes.

    The core sends an item's first audio at once and coalesces the rest into full chunks
    (the model streams faster than real time), flushing the remainder at the end: about one
    post per chunk plus one per turn.
    """
    if assistant_s <= 0 or turns <= 0:
        return 0.0, 0.0
    pcm_per_turn = assistant_s * BYTES_PER_SECOND / turns
    first = min(pcm_per_turn, ms_to_bytes(_FIRST_DELTA_MS))
    full, rest = divmod(pcm_per_turn - first, chunk_bytes)
    posts_per_turn = 1 + full + (1 if rest else 0)
    bytes_per_turn = (
        downlink_audio_bytes(_whole_samples(first))
        + full * downlink_audio_bytes(chunk_bytes)
        + (downlink_audio_bytes(_whole_samples(rest)) if rest else 0)
    )
    return posts_per_turn * turns, bytes_per_turn * turns


def _whole_samples(pcm_bytes: float) -> int:
    return max(2, int(pcm_bytes) // 2 * 2)


# --- the estimate -------------------------------------------------------------------------


@dataclass(frozen=True)
class LineItem:
    """One priced line: a service's charge for one thing, per call-minute.

    ``quantity`` is per call-minute for per-call items; for shared items it is per hour of
    the whole stack and ``shared_usd_per_hour`` is the hourly bill the calls split.
    """

    service: str
    item: str
    quantity: float
    unit: str
    usd_per_call_minute: float
    group: Group = "aws"
    shared_usd_per_hour: float | None = None


@dataclass(frozen=True)
class CostEstimate:
    """The priced scenario: line items, totals, and every assumption behind them."""

    scenario: Scenario
    assumptions: Assumptions
    prices_as_of: date
    price_region: str
    items: tuple[LineItem, ...]
    idle_usd_per_hour: float
    notes: tuple[str, ...] = field(default=())

    def usd_per_call_minute(self, group: Group | None = None, service: str | None = None) -> float:
        return sum(
            i.usd_per_call_minute
            for i in self.items
            if (group is None or i.group == group) and (service is None or i.service == service)
        )

    @property
    def aws_usd_per_call_minute(self) -> float:
        return self.usd_per_call_minute("aws")

    @property
    def model_usd_per_call_minute(self) -> float:
        return self.usd_per_call_minute("model")

    @property
    def total_usd_per_call_minute(self) -> float:
        return self.usd_per_call_minute()

    def to_json(self) -> dict[str, Any]:
        calls = self.scenario.concurrency
        return {
            "prices_as_of": self.prices_as_of.isoformat(),
            "price_region": self.price_region,
            "scenario": asdict(self.scenario),
            "assumptions": asdict(self.assumptions),
            "notes": list(self.notes),
            "items": [asdict(i) for i in self.items],
            "totals": {
                "aws_usd_per_call_minute": self.aws_usd_per_call_minute,
                "model_usd_per_call_minute": self.model_usd_per_call_minute,
                "usd_per_call_minute": self.total_usd_per_call_minute,
                "aws_usd_per_call_hour": self.aws_usd_per_call_minute * 60,
                "usd_per_call_hour": self.total_usd_per_call_minute * 60,
                "aws_usd_per_hour": self.aws_usd_per_call_minute * 60 * calls,
                "usd_per_hour": self.total_usd_per_call_minute * 60 * calls,
                "idle_usd_per_hour": self.idle_usd_per_hour,
            },
        }


def estimate_cost(
    scenario: Scenario, prices: PriceTable, assumptions: Assumptions | None = None
) -> CostEstimate:
    """Price ``scenario``: every line item per call-minute, and the idle hourly floor."""
    assumptions = assumptions or Assumptions()
    shape = call_shape(scenario, assumptions)
    pricing = _Pricing(scenario, prices, assumptions, shape)
    items = tuple(i for i in pricing.items() if i.usd_per_call_minute > 0 or i.quantity > 0)
    idle = _Pricing(replace(scenario, concurrency=0), prices, assumptions, shape)
    return CostEstimate(
        scenario=scenario,
        assumptions=assumptions,
        prices_as_of=prices.as_of,
        price_region=prices.price_region(scenario.region),
        items=items,
        idle_usd_per_hour=sum(i.shared_usd_per_hour or 0 for i in idle.shared_items()),
        notes=tuple(_notes(scenario, prices, assumptions, shape)),
    )


class _Pricing:
    """Turns one scenario into line items, one small method per service."""

    def __init__(
        self, scenario: Scenario, prices: PriceTable, assumptions: Assumptions, shape: CallShape
    ) -> None:
        self.s = scenario
        self.p = prices
        self.a = assumptions
        self.shape = shape
        self.region = scenario.region

    # -- helpers

    def usd(self, key: str) -> float:
        return self.p.usd(key, self.region)

    def monthly(self, per_call_minute: float) -> float:
        """Monthly volume of a per-call-minute quantity at this concurrency, around the clock."""
        return per_call_minute * self.s.concurrency * MINUTES_PER_MONTH

    def per_call(
        self, service: str, item: str, quantity: float, unit: str, usd: float, group: Group = "aws"
    ) -> LineItem:
        return LineItem(service, item, quantity, unit, usd, group)

    def shared(
        self, service: str, item: str, quantity: float, unit: str, usd_per_hour: float
    ) -> LineItem:
        calls = self.s.concurrency
        per_minute = usd_per_hour / (60 * calls) if calls else 0.0
        return LineItem(service, item, quantity, unit, per_minute, "aws", usd_per_hour)

    # -- all items

    def items(self) -> list[LineItem]:
        return [
            *self.api_gateway(),
            *self.lambda_functions(),
            *self.sqs(),
            *self.dynamodb(),
            *self.network(),
            *self.logs(),
            *self.shared_items(),
            *self.model(),
        ]

    def shared_items(self) -> list[LineItem]:
        """The hourly bill that runs whether or not anyone calls (at this concurrency)."""
        return [
            *self.fargate(),
            *self.shared_network(),
            *self.keys_and_secrets(),
            *self.provisioned_concurrency(),
            *self.idle_polls(),
            *self.slot_leases(),
            *self.session_storage(),
        ]

    # -- API Gateway

    def api_gateway(self) -> list[LineItem]:
        step = int(self.p.value("api_gateway.message_metering"))
        shape = self.shape
        uplink = shape.uplink_frames * metered_units(shape.uplink_frame_bytes, step)
        audio_post_units = metered_units(math.ceil(shape.downlink_audio_post_bytes), step)
        downlink = shape.downlink_audio_posts * audio_post_units
        control = shape.downlink_control_posts
        per_message = self.p.tiered(
            "api_gateway.message", self.monthly(uplink + downlink + control)
        )
        per_message /= MILLION
        connection = self.usd("api_gateway.connection_minute") / MILLION
        return [
            self.per_call(
                "API Gateway", "uplink audio messages", uplink, "messages", uplink * per_message
            ),
            self.per_call(
                "API Gateway",
                "downlink audio posts (@connections)",
                downlink,
                "messages",
                downlink * per_message,
            ),
            self.per_call(
                "API Gateway",
                "downlink control events (transcripts, turn events)",
                control,
                "messages",
                control * per_message,
            ),
            self.per_call("API Gateway", "connection minutes", 1, "minutes", connection),
        ]

    # -- Lambda

    def lambda_functions(self) -> list[LineItem]:
        a = self.a
        calls = self.shape.calls_started
        items = [
            self._invocations("$connect", calls, a.connect_invocation_ms),
            self._invocations("$disconnect", calls, a.disconnect_invocation_ms),
        ]
        if self.s.default_route == "lambda":
            items.append(
                self._invocations(
                    "$default (one per uplink frame)",
                    self.shape.uplink_frames,
                    a.default_invocation_ms,
                    provisioned=self._pc_share(),
                )
            )
        return items

    def _invocations(
        self, name: str, count: float, duration_ms: float, provisioned: float = 0.0
    ) -> LineItem:
        """One function's requests and duration; ``provisioned`` is the share of its
        invocations served by provisioned concurrency (billed at the lower duration rate)."""
        arch = self.a.lambda_architecture
        gb_seconds = count * duration_ms / 1000 * self.a.lambda_memory_gb
        on_demand_rate = self.p.tiered(f"lambda.duration_{arch}", self.monthly(gb_seconds))
        pc_rate = self.usd(f"lambda.provisioned_duration_{arch}")
        duration = gb_seconds * (provisioned * pc_rate + (1 - provisioned) * on_demand_rate)
        requests = count * self.usd("lambda.request") / MILLION
        return self.per_call(
            "Lambda",
            f"{name}: requests + {duration_ms:g} ms at {self.a.lambda_memory_mb} MB {arch}",
            count,
            "invocations",
            requests + duration,
        )

    def _pc_needed(self) -> float:
        """Concurrent $default executions the calls keep busy."""
        per_second = self.s.concurrency * self.shape.uplink_frames / 60
        return per_second * self.a.default_invocation_ms / 1000

    def _pc_share(self) -> float:
        configured = self.s.default_provisioned_concurrency
        needed = self._pc_needed()
        if configured <= 0:
            return 0.0
        return 1.0 if needed <= configured else configured / needed

    def provisioned_concurrency(self) -> list[LineItem]:
        configured = self.s.default_provisioned_concurrency
        if configured <= 0 or self.s.default_route != "lambda":
            return []
        arch = self.a.lambda_architecture
        rate = self.usd(f"lambda.provisioned_concurrency_{arch}")
        per_hour = configured * self.a.lambda_memory_gb * 3600 * rate
        return [
            self.shared(
                "Lambda",
                f"$default provisioned concurrency ({configured})",
                configured,
                "environments",
                per_hour,
            )
        ]

    # -- SQS

    def sqs(self) -> list[LineItem]:
        step = int(self.p.value("sqs.request_metering"))
        shape = self.shape
        message = shape.queue_message_bytes
        sends = shape.uplink_frames * metered_units(message, step) + 2 * shape.calls_started
        messages = shape.uplink_frames + 2 * shape.calls_started
        batch = self.receive_batch()
        receives = messages / batch
        billed_receives = receives * metered_units(math.ceil(batch * message), step)
        deletes = receives  # one delete_message_batch per non-empty receive
        rate = self.p.tiered("sqs.fifo_request", self.monthly(sends + billed_receives + deletes))
        rate /= MILLION
        sender = "$default" if self.s.default_route == "lambda" else "API Gateway (SQS integration)"
        return [
            self.per_call(
                "SQS",
                f"sends (one per frame, by {sender}; open/close by Lambda)",
                sends,
                "requests",
                sends * rate,
            ),
            self.per_call(
                "SQS",
                f"receives (batches of {batch:.1f}, 64 KB chunks)",
                billed_receives,
                "requests",
                billed_receives * rate,
            ),
            self.per_call("SQS", "delete_message_batch", deletes, "requests", deletes * rate),
        ]

    def worker_tasks(self, concurrency: int | None = None) -> int:
        """Worker tasks: the stack's count, or more if the calls need more capacity."""
        calls = self.s.concurrency if concurrency is None else concurrency
        capacity = max(1, math.floor(self.a.calls_per_vcpu * self.s.worker_cpu / 1024))
        return max(self.s.worker_count, math.ceil(calls / capacity))

    def receive_batch(self) -> float:
        """Messages per receive: long polls return at once when traffic is light (one message);
        under load, messages pile up between a poller's receives, up to SQS's 10."""
        tasks = max(1, self.worker_tasks())
        per_task = self.s.concurrency / tasks * self.shape.uplink_frames / 60  # messages/s
        waiting = per_task * self.a.poll_cycle_ms / 1000 / self.a.sqs_pollers
        return min(10.0, max(1.0, waiting))

    def idle_polls(self) -> list[LineItem]:
        tasks = self.worker_tasks()
        if not tasks:
            return []
        # Each slot's queue is polled by the worker holding it, with sqs_pollers loops, each
        # a 20 s long poll: three a minute.
        polls = self.s.worker_slots * self.a.sqs_pollers * 3 * 60
        rate = self.p.tiered("sqs.fifo_request", polls * HOURS_PER_MONTH) / MILLION
        return [
            self.shared(
                "SQS",
                "empty long polls of an idle worker (upper bound)",
                polls,
                "requests an hour",
                polls * rate,
            )
        ]

    # -- DynamoDB

    def slot_leases(self) -> list[LineItem]:
        """Every worker, every lease tick: one read of all lease items, a registry write and
        a renewal per slot it holds (worker/service.py), whether or not calls are up."""
        tasks = self.worker_tasks()
        if not tasks:
            return []
        ticks = 3600 / LEASE_TICK_SECONDS
        slots = self.s.worker_slots
        reads = tasks * ticks * (slots + 1)  # items under 4 KB: a read unit each
        writes = tasks * ticks + ticks * slots  # registry per task; each slot renewed once
        usd = (
            reads * self.usd("dynamodb.read_request_unit")
            + writes * self.usd("dynamodb.write_request_unit")
        ) / MILLION
        return [
            self.shared(
                "DynamoDB",
                f"slot leases ({slots} slots, a {LEASE_TICK_SECONDS:g} s tick per worker)",
                reads + writes,
                "request units an hour",
                usd,
            )
        ]

    def dynamodb(self) -> list[LineItem]:
        writes = 2 * self.shape.calls_started  # a put at $connect, a delete at $disconnect
        rate = self.usd("dynamodb.write_request_unit") / MILLION
        return [
            self.per_call(
                "DynamoDB",
                "session put + delete (1 WRU each)",
                writes,
                "write units",
                writes * rate,
            )
        ]

    def session_storage(self) -> list[LineItem]:
        gb = self.s.concurrency * self.a.session_row_bytes / GIB
        per_gb_month = self.usd("dynamodb.storage_gb_month")
        item = "session rows"
        if self.s.point_in_time_recovery or self.s.hipaa:
            per_gb_month += self.usd("dynamodb.pitr_gb_month")
            item += " + point-in-time recovery"
        if not gb:
            return []
        return [self.shared("DynamoDB", item, gb, "GB stored", gb * per_gb_month / HOURS_PER_MONTH)]

    # -- Fargate

    def fargate(self) -> list[LineItem]:
        tasks = self.worker_tasks()
        on_demand = min(self.s.worker_on_demand_base, tasks)
        spot = tasks - on_demand
        arch = self.a.worker_architecture
        vcpu = self.s.worker_cpu / 1024
        gb = self.s.worker_memory / 1024
        task_hour = vcpu * self.usd(f"fargate.vcpu_hour_{arch}") + gb * self.usd(
            f"fargate.gb_hour_{arch}"
        )
        spot_task_hour = task_hour * (1 - self.p.value("fargate.spot_discount"))
        size = f"{vcpu:g} vCPU / {gb:g} GB {arch}"
        items = []
        if on_demand:
            items.append(
                self.shared(
                    "Fargate",
                    f"on-demand worker tasks ({size})",
                    on_demand,
                    "tasks",
                    on_demand * task_hour,
                )
            )
        if spot:
            items.append(
                self.shared(
                    "Fargate", f"Spot worker tasks ({size})", spot, "tasks", spot * spot_task_hour
                )
            )
        return items

    # -- networking

    def _openai_upload_bytes(self) -> float:
        per_frame = model_append_bytes(self.s.frame_ms) + self.a.websocket_overhead_bytes
        return self.shape.uplink_frames * per_frame

    def _openai_download_bytes(self) -> float:
        a, shape = self.a, self.shape
        events = (
            shape.assistant_speech_s * a.model_deltas_per_second
            + a.transcript_events_per_speech_second
            * (shape.user_speech_s + shape.assistant_speech_s)
        )
        audio = shape.assistant_speech_s * BYTES_PER_SECOND * 4 / 3  # base64
        return audio + events * (a.model_event_overhead_bytes + a.websocket_overhead_bytes)

    def _connections_bytes(self) -> float:
        shape, overhead = self.shape, self.a.http_overhead_bytes
        posts = shape.downlink_audio_posts + shape.downlink_control_posts
        control_bytes = shape.downlink_control_posts * 150
        return shape.downlink_audio_bytes + control_bytes + posts * overhead

    def _queue_endpoint_bytes(self) -> float:
        """SQS traffic through the VPC's SQS endpoint (HIPAA): Lambda's sends and the worker's
        receives and deletes. API Gateway's own SQS integration does not enter the VPC."""
        shape, overhead = self.shape, self.a.http_overhead_bytes
        batch = self.receive_batch()
        receives = (shape.uplink_frames + 2 * shape.calls_started) / batch
        traffic = shape.uplink_frames * shape.queue_message_bytes + 2 * receives * overhead
        if self.s.default_route == "lambda":
            traffic += shape.uplink_frames * (shape.queue_message_bytes + overhead)
        return traffic

    def network(self) -> list[LineItem]:
        upload = self._openai_upload_bytes()
        egress_gb = upload / GIB
        rate = self.p.tiered("data_transfer.internet_out_gb", self.monthly(egress_gb))
        items = [
            self.per_call(
                "Data transfer",
                "out to the internet (uplink audio to OpenAI)",
                egress_gb,
                "GB",
                egress_gb * rate,
            )
        ]
        if self.s.hipaa:
            nat_gb = (upload + self._openai_download_bytes() + self._connections_bytes()) / GIB
            endpoint_gb = (self._queue_endpoint_bytes() + self._log_bytes()) / GIB
            items += [
                self.per_call(
                    "NAT gateway",
                    "processing (OpenAI both ways, @connections posts)",
                    nat_gb,
                    "GB",
                    nat_gb * self.usd("vpc.nat_gateway_gb"),
                ),
                self.per_call(
                    "VPC endpoints",
                    "processing (SQS, CloudWatch Logs)",
                    endpoint_gb,
                    "GB",
                    endpoint_gb * self.usd("vpc.interface_endpoint_gb"),
                ),
            ]
        return items

    def shared_network(self) -> list[LineItem]:
        ip_hour = self.usd("vpc.public_ipv4_hour")
        if not self.s.hipaa:
            tasks = self.worker_tasks()
            if not tasks:
                return []
            return [
                self.shared(
                    "VPC",
                    "public IPv4 address of each worker task",
                    tasks,
                    "addresses",
                    tasks * ip_hour,
                )
            ]
        endpoint_hours = INTERFACE_ENDPOINT_COUNT * ZONE_COUNT
        return [
            self.shared(
                "NAT gateway",
                f"{ZONE_COUNT} gateways (one per zone)",
                ZONE_COUNT,
                "gateways",
                ZONE_COUNT * self.usd("vpc.nat_gateway_hour"),
            ),
            self.shared(
                "VPC",
                "Elastic IPs of the NAT gateways",
                ZONE_COUNT,
                "addresses",
                ZONE_COUNT * ip_hour,
            ),
            self.shared(
                "VPC endpoints",
                f"{INTERFACE_ENDPOINT_COUNT} interface endpoints x {ZONE_COUNT} zones",
                endpoint_hours,
                "endpoint-zones",
                endpoint_hours * self.usd("vpc.interface_endpoint_hour"),
            ),
        ]

    # -- keys, secrets, logs

    def keys_and_secrets(self) -> list[LineItem]:
        items = [
            self.shared(
                "Secrets Manager",
                "OpenAI API key",
                SECRET_COUNT,
                "secrets",
                SECRET_COUNT * self.usd("secrets_manager.secret_month") / HOURS_PER_MONTH,
            )
        ]
        if self.s.hipaa:
            requests = self.a.kms_requests_per_hour
            items += [
                self.shared(
                    "KMS",
                    f"{KMS_KEY_COUNT} customer-managed keys",
                    KMS_KEY_COUNT,
                    "keys",
                    KMS_KEY_COUNT * self.usd("kms.key_month") / HOURS_PER_MONTH,
                ),
                self.shared(
                    "KMS",
                    "requests (data-key refreshes)",
                    requests,
                    "requests an hour",
                    requests * self.usd("kms.request") / 10_000,
                ),
            ]
        return items

    def _log_bytes(self) -> float:
        a, shape = self.a, self.shape
        invocations = 2 * shape.calls_started
        if self.s.default_route == "lambda":
            invocations += shape.uplink_frames
        routed_messages = shape.uplink_frames + 2 * shape.calls_started
        return (
            invocations * a.lambda_log_bytes_per_invocation
            + routed_messages * a.api_access_log_bytes_per_message
            + shape.calls_started * (a.handler_log_bytes_per_call + a.worker_log_bytes_per_call)
        )

    def logs(self) -> list[LineItem]:
        gb = self._log_bytes() / GIB
        return [
            self.per_call(
                "CloudWatch Logs",
                "ingestion (Lambda, API access log, worker)",
                gb,
                "GB",
                gb * self.usd("cloudwatch_logs.ingestion_gb"),
            )
        ]

    # -- the model

    def model(self) -> list[LineItem]:
        a, shape, model = self.a, self.shape, self.s.model
        user_rate = self.p.value("openai.user_audio_tokens_per_second")
        assistant_rate = self.p.value("openai.assistant_audio_tokens_per_second")
        user_tokens = shape.user_speech_s * user_rate
        assistant_tokens = shape.assistant_speech_s * assistant_rate
        text_out = shape.assistant_speech_s * a.assistant_text_tokens_per_second
        context = cached_context_tokens(user_tokens + assistant_tokens, a)
        instructions_in, instructions_cached = instruction_tokens(a)

        def price(kind: str) -> float:
            return self.p.model_price(model, kind) / MILLION

        transcribe = self.usd("openai.gpt-4o-mini-transcribe") * shape.user_speech_s / 60
        return [
            self.per_call(
                model,
                "user audio in",
                user_tokens,
                "tokens",
                user_tokens * price("audio_input"),
                "model",
            ),
            self.per_call(
                model,
                "assistant audio out",
                assistant_tokens,
                "tokens",
                assistant_tokens * price("audio_output"),
                "model",
            ),
            self.per_call(
                model,
                "assistant transcript text out",
                text_out,
                "tokens",
                text_out * price("text_output"),
                "model",
            ),
            self.per_call(
                model,
                "earlier turns re-read each response (cached audio)",
                context,
                "tokens",
                context * price("audio_cached_input"),
                "model",
            ),
            self.per_call(
                model,
                "instructions (cached after the first response)",
                instructions_in + instructions_cached,
                "tokens",
                instructions_in * price("text_input")
                + instructions_cached * price("text_cached_input"),
                "model",
            ),
            self.per_call(
                "gpt-4o-mini-transcribe",
                "user speech transcription",
                shape.user_speech_s / 60,
                "minutes",
                transcribe,
                "model",
            ),
        ]


def cached_context_tokens(audio_tokens_per_minute: float, assumptions: Assumptions) -> float:
    """Cached input tokens per call-minute from re-reading earlier turns.

    Each response reads the whole conversation so far; the turns before the new one are a
    cached prefix. Over a call of K responses with t tokens a turn, that is t * K(K-1)/2.
    """
    turns_per_minute = assumptions.turns_per_minute
    if turns_per_minute <= 0:
        return 0.0
    responses = turns_per_minute * assumptions.call_minutes
    per_turn = audio_tokens_per_minute / turns_per_minute
    return per_turn * responses * (responses - 1) / 2 / assumptions.call_minutes


def instruction_tokens(assumptions: Assumptions) -> tuple[float, float]:
    """(uncached, cached) instruction tokens per call-minute: the first response of a call
    reads them in full, every later one from the cache."""
    responses = assumptions.turns_per_minute * assumptions.call_minutes
    if responses <= 0:
        return 0.0, 0.0
    per_call = assumptions.instructions_tokens
    minutes = assumptions.call_minutes
    return per_call / minutes, per_call * (responses - 1) / minutes


def _notes(scenario: Scenario, prices: PriceTable, a: Assumptions, shape: CallShape) -> list[str]:
    """The assumptions in words, in the order a reader checks them."""
    pricing = _Pricing(scenario, prices, a, shape)
    capacity = max(1, math.floor(a.calls_per_vcpu * scenario.worker_cpu / 1024))
    notes = [
        f"{scenario.concurrency} concurrent calls around the clock ({HOURS_PER_MONTH} h a "
        "month) set the volume tiers; free tiers are ignored",
        f"calls last {a.call_minutes:g} min on average with {a.turns_per_minute:g} assistant "
        f"responses a minute; the assistant speaks {scenario.talk_ratio:.0%} of the call, the "
        "user the rest",
        f"uplink audio flows the whole call: {shape.uplink_frames:g} frames/min of "
        f"{scenario.frame_ms} ms ({shape.uplink_frame_bytes} B as JSON, "
        f"{shape.queue_message_bytes} B on the queue); downlink audio only while the assistant "
        f"speaks, in {scenario.chunk_bytes} B chunks (full chunks: the model streams faster "
        "than real time)",
        f"{a.transcript_events_per_speech_second:g} transcript events per second of speech and "
        f"{a.control_events_per_turn:g} turn events per turn are posted to the caller",
        f"Lambda: {a.lambda_architecture}, {a.lambda_memory_mb} MB; $default "
        f"{a.default_invocation_ms:g} ms, $connect {a.connect_invocation_ms:g} ms, $disconnect "
        f"{a.disconnect_invocation_ms:g} ms (warm; INIT time not counted)",
        f"worker: {a.worker_architecture}, {a.calls_per_vcpu} calls per vCPU ({capacity} per "
        f"task, the issue's target, not a measurement): {pricing.worker_tasks()} task(s) "
        f"(workerCount {scenario.worker_count}, {scenario.worker_on_demand_base} on demand, "
        "the rest Spot)",
        f"SQS receives carry {pricing.receive_batch():.1f} messages each ({a.sqs_pollers} "
        f"pollers, {a.poll_cycle_ms:g} ms per receive + delete)",
        f"model: {a.assistant_text_tokens_per_second:g} transcript text tokens per second of "
        f"assistant speech; earlier turns are re-read from the cache on every response; "
        f"{a.instructions_tokens} instruction tokens",
        f"logs: {a.lambda_log_bytes_per_invocation} B per Lambda invocation, "
        f"{a.api_access_log_bytes_per_message} B of API access log per routed message, "
        f"{a.worker_log_bytes_per_call} B of worker log per call",
        "traffic to @connections (same region) is not charged as data transfer; "
        "uplink audio to OpenAI is internet egress",
    ]
    if scenario.hipaa:
        notes.append(
            f"HIPAA: {ZONE_COUNT} NAT gateways carry OpenAI and @connections traffic; "
            f"{INTERFACE_ENDPOINT_COUNT} interface endpoints in {ZONE_COUNT} zones carry SQS "
            f"and logs; {KMS_KEY_COUNT} keys in their first year (rotation adds $1/key-month "
            f"later); {a.kms_requests_per_hour:g} KMS requests an hour"
        )
    if scenario.default_provisioned_concurrency and scenario.default_route == "sqs":
        notes.append(
            "defaultProvisionedConcurrency is ignored: the sqs route has no $default function"
        )
    if prices.price_region(scenario.region) != scenario.region:
        notes.append(
            f"the price table does not cover {scenario.region}; {prices.fallback_region} "
            "prices are used (most other regions cost 0-30% more)"
        )
    return notes


# --- the command --------------------------------------------------------------------------

PRICES_PATH = Path(__file__).with_name("prices.toml")
PROJECT_NAMESPACE = "voice-agent"
ROUTE_KEY = "defaultRouteIntegration"
_STACK_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class StackSettings:
    """A stack file, validated: the typed config and the $default route it chose."""

    config: StackConfig
    default_route: Route


def find_project_dir(start: Path) -> Path:
    """The Pulumi project: the nearest directory at or above ``start`` with a Pulumi.yaml,
    else the repository this package lives in."""
    for directory in (start, *start.parents):
        if (directory / "Pulumi.yaml").is_file():
            return directory
    return Path(__file__).resolve().parent.parent


def stack_values(document: Any, path: Path) -> tuple[dict[str, str], str | None]:
    """Project settings (as strings, like ``pulumi config get``) and ``aws:region`` of a
    parsed stack file. Secure values are skipped: the estimate never needs a secret."""
    if document is None:
        return {}, None
    if not isinstance(document, dict):
        raise CostInputError(f"{path} is not a Pulumi stack file (expected a mapping)")
    config = document.get("config") or {}
    if not isinstance(config, dict):
        raise CostInputError(f"{path}: 'config' must be a mapping")
    values: dict[str, str] = {}
    region: str | None = None
    for key, value in config.items():
        if key == "aws:region":
            region = str(value)
            continue
        namespace, _, name = str(key).partition(":")
        if namespace != PROJECT_NAMESPACE or (isinstance(value, dict) and "secure" in value):
            continue
        if isinstance(value, bool):
            values[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            values[name] = str(value)
        else:
            raise CostInputError(f"{path}: {key} must be a single value, got {value!r}")
    return values, region


def read_stack(project_dir: Path, stack: str) -> StackSettings:
    """Read and validate ``Pulumi.<stack>.yaml`` with the program's own rules (infra.config)."""
    from infra.config import SETTINGS_BY_KEY, parse_stack_config

    path = _stack_file(project_dir, stack)
    try:
        import yaml
    except ImportError:
        raise CostInputError("reading stack files needs PyYAML (pip install pyyaml)") from None
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CostInputError(f"cannot read {path}: {exc}") from None
    values, region = stack_values(document, path)
    # The route is the program's setting once it declares it; until then it is read here.
    route = values.get(ROUTE_KEY) or "lambda"
    if ROUTE_KEY not in SETTINGS_BY_KEY:
        values.pop(ROUTE_KEY, None)
    if route not in ROUTES:
        raise CostInputError(
            f"{path}: {PROJECT_NAMESPACE}:{ROUTE_KEY} is {route!r}; allowed: {', '.join(ROUTES)}"
        )
    config = parse_stack_config(values, stack=stack, region=region)
    return StackSettings(config=config, default_route=route)  # type: ignore[arg-type]


def _stack_file(project_dir: Path, stack: str) -> Path:
    if not _STACK_FILE_NAME.match(stack):
        raise CostInputError(f"{stack!r} is not a stack name")
    path = project_dir / f"Pulumi.{stack}.yaml"
    if path.is_file():
        return path
    known = sorted(
        p.name[len("Pulumi.") : -len(".yaml")] for p in project_dir.glob("Pulumi.*.yaml")
    )
    listed = f"stacks there: {', '.join(known)}" if known else "no stack files there"
    raise CostInputError(f"no stack {stack!r}: {path.name} is not in {project_dir} ({listed})")


def scenario_from_stack(settings: StackSettings, options: argparse.Namespace) -> Scenario:
    """The stack's settings, with any command-line overrides."""
    config = settings.config
    return Scenario(
        region=config.region,
        model=options.model or config.model,
        hipaa=config.hipaa,
        point_in_time_recovery=config.point_in_time_recovery_enabled,
        worker_cpu=config.worker_cpu,
        worker_memory=config.worker_memory,
        worker_count=config.worker_count,
        worker_slots=config.worker_slots,
        worker_on_demand_base=config.worker_on_demand_base,
        default_provisioned_concurrency=config.default_provisioned_concurrency,
        default_route=options.default_route or settings.default_route,
        chunk_bytes=options.chunk_bytes or config.audio_chunk_bytes,
        frame_ms=options.frame_ms,
        concurrency=options.concurrency,
        talk_ratio=options.talk_ratio,
    )


def _chunk_bytes(text: str) -> int:
    number = bounded_int(MIN_CHUNK_BYTES, MAX_CHUNK_BYTES, "chunk bytes")(text)
    if number % 2:
        raise argparse.ArgumentTypeError(f"chunk bytes must be even (whole samples), got {number}")
    return number


def _ratio(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"talk ratio must be a number, got {text!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"talk ratio must be between 0 and 1, got {number}")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``voice-agent cost``."""
    from wire.realtime import MODELS

    defaults = Assumptions()
    parser.description = (
        "Dollars per call-minute and per hour of a stack, itemised, from the dated price "
        "table voice_agent/prices.toml. States its assumptions."
    )
    parser.add_argument("--stack", required=True, help="stack name: reads Pulumi.<NAME>.yaml")
    parser.add_argument(
        "--concurrency",
        type=bounded_int(1, 10_000_000, "concurrency"),
        default=1,
        help="concurrent calls sharing the fixed costs (default 1)",
    )
    parser.add_argument(
        "--talk-ratio",
        type=_ratio,
        default=0.5,
        help="fraction of the call the assistant speaks (default 0.5)",
    )
    parser.add_argument(
        "--default-route",
        choices=ROUTES,
        default=None,
        help=f"$default integration (default: the stack's {ROUTE_KEY}, else "
        "lambda); sqs = API Gateway straight to SQS, no Lambda per frame",
    )
    parser.add_argument(
        "--chunk-bytes",
        type=_chunk_bytes,
        default=None,
        help="downlink PCM bytes per @connections post (default: the stack's audioChunkBytes)",
    )
    parser.add_argument(
        "--frame-ms",
        type=bounded_int(MIN_FRAME_MS, MAX_FRAME_MS, "frame ms"),
        default=100,
        help="uplink frame length of the page (default 100)",
    )
    parser.add_argument(
        "--model", choices=MODELS, default=None, help="Realtime model (default: the stack's model)"
    )
    parser.add_argument(
        "--call-minutes",
        type=positive_number("call minutes"),
        default=defaults.call_minutes,
        help=f"average call length (default {defaults.call_minutes:g})",
    )
    parser.add_argument(
        "--calls-per-vcpu",
        type=bounded_int(1, 100_000, "calls per vCPU"),
        default=defaults.calls_per_vcpu,
        help=f"worker capacity (default {defaults.calls_per_vcpu})",
    )
    parser.add_argument(
        "--lambda-arch", choices=ARCHITECTURES, default=defaults.lambda_architecture
    )
    parser.add_argument(
        "--lambda-memory-mb",
        type=bounded_int(128, 10_240, "Lambda memory"),
        default=defaults.lambda_memory_mb,
    )
    parser.add_argument(
        "--worker-arch", choices=ARCHITECTURES, default=defaults.worker_architecture
    )
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="where the stack files are (default: the Pulumi project here)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def read_price_table(path: Path) -> PriceTable:
    try:
        return PriceTable.from_toml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PriceError(f"cannot read the price table {path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    """``voice-agent cost``: 0 on success, 2 on a bad stack, option or price table."""
    from infra.config import ConfigError

    try:
        settings = read_stack(args.project_dir or find_project_dir(Path.cwd()), args.stack)
        prices = read_price_table(PRICES_PATH)
        assumptions = Assumptions(
            call_minutes=args.call_minutes,
            calls_per_vcpu=args.calls_per_vcpu,
            lambda_architecture=args.lambda_arch,
            lambda_memory_mb=args.lambda_memory_mb,
            worker_architecture=args.worker_arch,
        )
        estimate = estimate_cost(scenario_from_stack(settings, args), prices, assumptions)
    except (CostInputError, ConfigError, PriceError) as exc:
        print(f"voice-agent cost: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"stack": args.stack, **estimate.to_json()}, indent=2))
    else:
        print(render_table(args.stack, estimate))
    return 0


# --- the table ----------------------------------------------------------------------------


def _usd(value: float) -> str:
    return f"${value:.6f}" if value < 0.1 else f"${value:,.4f}"


def _quantity(value: float) -> str:
    if value == 0:
        return "0"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 0.01:
        return f"{value:.2f}"
    return f"{value:.2e}"


def render_table(stack: str, estimate: CostEstimate) -> str:
    """The estimate as a readable table, then the totals and the assumptions."""
    s = estimate.scenario
    header = (
        f"voice-agent cost: stack {stack} ({s.region}, prices of {estimate.price_region} as of "
        f"{estimate.prices_as_of}), {s.concurrency} concurrent call(s)\n"
        f"$default route {s.default_route}, uplink frames {s.frame_ms} ms, downlink chunks "
        f"{s.chunk_bytes} B, model {s.model}, HIPAA {'on' if s.hipaa else 'off'}, assistant "
        f"speaks {s.talk_ratio:.0%}\n"
    )
    rows = [("service", "item", "quantity", "unit", "$/call-minute")]
    for i in estimate.items:
        shared = i.shared_usd_per_hour is not None
        unit = f"{i.unit} (shared)" if shared else f"{i.unit}/call-min"
        rows.append((i.service, i.item, _quantity(i.quantity), unit, _usd(i.usd_per_call_minute)))
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = [
        "  ".join(
            cell.rjust(widths[c]) if c in (2, 4) else cell.ljust(widths[c])
            for c, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    calls = s.concurrency
    aws, model = estimate.aws_usd_per_call_minute, estimate.model_usd_per_call_minute
    total = estimate.total_usd_per_call_minute
    summary = [
        "",
        f"AWS, model excluded:  {_usd(aws)} per call-minute   {_usd(aws * 60)} per call-hour   "
        f"{_usd(aws * 60 * calls)} per hour for {calls} call(s)",
        f"model ({s.model}):  {_usd(model)} per call-minute",
        f"total:                {_usd(total)} per call-minute   {_usd(total * 60)} per call-hour"
        f"   {_usd(total * 60 * calls)} per hour for {calls} call(s)",
        f"idle (no calls):      {_usd(estimate.idle_usd_per_hour)} per hour",
        "",
        "Assumptions:",
        *(f"  - {note}" for note in estimate.notes),
    ]
    return header + "\n".join(lines + summary)
