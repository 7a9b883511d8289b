"""The stack's configuration, read once into a typed, validated ``StackConfig``.

Every project key, its type, default and meaning is declared here (``SETTINGS``), and
``Pulumi.yaml`` declares the same (a test keeps the two, and the README table, in step). The
program applies the defaults itself: under mocks, and in some CLI paths, Pulumi does not.

Parsing is pure (``parse_stack_config`` takes plain strings), so every rule is tested without
Pulumi; ``read_stack_config`` is the thin Pulumi-facing wrapper.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire.audio import SAMPLE_WIDTH_BYTES
from wire.client import MAX_DOWNLINK_PCM_BYTES
from wire.realtime import DEFAULT_BASE_URL, MODELS, VOICES

if TYPE_CHECKING:
    pass

PROJECT = "voice-agent"

# The values CloudWatch Logs accepts for a log group's retention.
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip
# Fargate's valid task sizes: CPU units -> allowed memory (MiB).
FARGATE_MEMORY_BY_CPU: dict[int, tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4097, 1024)),
    1024: tuple(range(2048, 8193, 1024)),
    2048: tuple(range(4096, 16385, 1024)),
    4096: tuple(range(8192, 30721, 1024)),
    8192: tuple(range(16384, 61441, 4096)),
    16384: tuple(range(32768, 122881, 8192)),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# API Gateway closes every WebSocket connection after two hours; a session row that outlives
# its connection by a day is certainly stale.
MAX_SESSION_TTL_SECONDS = 86_400
# How $default reaches the audio queue: a Lambda function per message, or API Gateway's own
# SQS integration (the lean path: no function per audio frame).
DEFAULT_ROUTE_INTEGRATIONS = ("lambda", "sqs")
# API Gateway cuts a WebSocket connection at 2 hours; the longest call we allow ends a
# minute before that, cleanly. (OpenAI's 60-minute session limit no longer bounds a call:
# the worker replaces the model session at a turn boundary before it.)
MAX_CALL_SECONDS = 7_140
# Worker slots (wire/slots.py): each has its own FIFO audio queue, and every queue redrives to
# the one dead-letter queue, whose RedriveAllowPolicy may name at most 10 source queues
# ("byQueue"). Ten slots also keep the queue URLs well inside Lambda's 4 KB environment.
MAX_WORKER_SLOTS = 10
# The worker's drain on SIGTERM (hand calls over, release its slots) must end within the
# container's stopTimeout (120 s, Fargate's maximum, infra.worker_service); the rest of
# the 120 s is for releasing the leases and exiting.
MAX_DRAIN_WAIT_SECONDS = 110
# A caller at the page's default 100 ms uplink frames sends 10 messages a second.
MIN_CLIENT_MESSAGES_PER_SECOND = 10
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$")
# Lambda allows 4 KB of environment in all; the origin list must leave room for the rest.
MAX_ALLOWED_ORIGINS_CHARS = 1_024


class ConfigError(ValueError):
    """One or more config values are wrong; the message names every key and the fix."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One project config key as declared in Pulumi.yaml."""

    key: str
    type: str  # "string" | "integer" | "boolean" (Pulumi's project config types)
    default: str | int | bool
    description: str
    # Set with `pulumi config set --secret`. Pulumi.yaml can't say `secret: true` for an
    # optional key: the CLI then rejects the (plain) default, and without a default the key
    # becomes required. So the program enforces it instead (``plaintext_secrets``).
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("model", "string", "gpt-realtime-mini",
            f"OpenAI Realtime model the worker talks to: {' or '.join(MODELS)}."),
    Setting("hipaa", "boolean", False,
            "HIPAA mode: customer-managed KMS keys everywhere, private subnets with NAT and VPC "
            "endpoints, point-in-time recovery, no message bodies in API logs."),
    Setting("openaiApiKey", "string", "",
            "OpenAI API key, stored in Secrets Manager for the worker. Set it with --secret. "
            "Optional: without it "
            "the secret is created empty (put the value with `aws secretsmanager "
            "put-secret-value`).", secret=True),
    Setting("voice", "string", "marin", f"Voice of the agent: one of {', '.join(VOICES)}."),
    Setting("instructions", "string", "You are a helpful, concise voice assistant.",
            "Instructions (system prompt) of the agent."),
    Setting("realtimeBaseUrl", "string", DEFAULT_BASE_URL,
            "WebSocket URL of the Realtime API (OpenAI, or an Azure OpenAI endpoint)."),
    Setting("defaultProvisionedConcurrency", "integer", 0,
            "Provisioned concurrency of the $default function (0 = off, no idle cost)."),
    Setting("defaultRouteIntegration", "string", "lambda",
            "How $default reaches the audio queue: lambda (a function per client message) or "
            "sqs (API Gateway's SQS integration: the same message, no Lambda per audio frame; "
            "see docs/cost.md)."),
    Setting("workerCpu", "integer", 512, "Fargate CPU units of one worker task."),
    Setting("workerMemory", "integer", 1024, "Memory (MiB) of one worker task."),
    Setting("workerSlots", "integer", 4,
            f"Worker slots: calls are spread over this many FIFO audio queues, each served by "
            f"one worker task at a time; the most worker tasks that can share the load "
            f"(1-{MAX_WORKER_SLOTS})."),
    Setting("workerCount", "integer", 1,
            "Worker tasks always running (each bridges many calls): the autoscaling minimum. "
            "0 pauses the worker."),
    Setting("workerMaxCount", "integer", 2,
            "Most worker tasks autoscaling may run, from workerCount up to workerSlots; equal "
            "to workerCount: a fixed count, no autoscaling."),
    Setting("workerTargetCalls", "integer", 6,
            "Calls per worker task autoscaling aims at (the tasks' average ActiveCalls). "
            "Measured capacity is about 20 calls per vCPU (docs/performance.md): 6 keeps a "
            "0.5 vCPU task near 60%; scale it with workerCpu."),
    Setting("drainWaitSeconds", "integer", 60,
            "How long a stopping worker waits for each call to reach a turn boundary before "
            f"handing it over (at most {MAX_DRAIN_WAIT_SECONDS}: ECS stops the task 120 s after "
            "SIGTERM)."),
    Setting("workerOnDemandBase", "integer", 0,
            "Worker tasks kept on regular Fargate; the rest run on Fargate Spot."),
    Setting("audioChunkBytes", "integer", 4800,
            "PCM bytes per downlink @connections post (4800 = 100 ms at 24 kHz)."),
    Setting("sessionTtlSeconds", "integer", 7200,
            "Lifetime of a session row (API Gateway closes connections after 2 hours)."),
    Setting("logRetentionDays", "integer", 14,
            "Retention of every log group (a value CloudWatch Logs accepts)."),
    Setting("logLevel", "string", "INFO",
            f"Log level of handlers and worker: {', '.join(LOG_LEVELS)}."),
    Setting("pointInTimeRecovery", "boolean", False,
            "Point-in-time recovery of the sessions table (always on when hipaa is true)."),
    Setting("apiThrottleRateLimit", "integer", 1000,
            "Steady-state messages per second the WebSocket stage accepts, all callers together: "
            "the first line of defence, applied by API Gateway before any of our code runs."),
    Setting("apiThrottleBurstLimit", "integer", 2000,
            "Burst of messages the stage accepts above apiThrottleRateLimit."),
    Setting("clientMessagesPerSecond", "integer", 50,
            "Messages per second one caller may send (a token bucket in the worker); more are "
            "dropped with a rate_limited error. 100 ms audio frames are 10 a second."),
    Setting("clientMessageBurst", "integer", 100,
            "Burst of messages one caller may send above clientMessagesPerSecond."),
    Setting("maxSessions", "integer", 100,
            "Concurrent calls the stack accepts; a connect beyond them is refused with 429 "
            "(0 = no limit)."),
    Setting("maxCallSeconds", "integer", 7080,
            "Longest call, ended cleanly (session_ended, reason max_duration) before API "
            "Gateway's 2-hour cut (at most 7140). The model session is replaced before "
            "OpenAI's 60-minute limit, at a turn boundary."),
    Setting("allowedOrigins", "string", "",
            "Comma-separated web origins whose pages may connect, e.g. "
            "https://app.example.com (empty = any). Callers that send no Origin (servers, "
            "apps) are judged by their token alone."),
    Setting("manageApiGatewayAccount", "boolean", True,
            "Set this region's API Gateway CloudWatch Logs role (an account-wide setting that "
            "stage logging needs). Turn off if the account already manages it."),
    Setting("vpcCidr", "string", "10.40.0.0/16", "Address range of the VPC (/16 to /22)."),
)  # fmt: skip
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class StackConfig:
    """Everything the components need to know about this stack, validated."""

    stack: str
    region: str
    model: str
    hipaa: bool
    voice: str
    instructions: str
    realtime_base_url: str
    default_provisioned_concurrency: int
    default_route_integration: str
    worker_cpu: int
    worker_memory: int
    worker_slots: int
    worker_count: int  # the autoscaling minimum
    worker_max_count: int
    worker_target_calls: int
    drain_wait_seconds: int
    worker_on_demand_base: int
    audio_chunk_bytes: int
    session_ttl_seconds: int
    log_retention_days: int
    log_level: str
    point_in_time_recovery: bool
    api_throttle_rate_limit: int
    api_throttle_burst_limit: int
    client_messages_per_second: int
    client_message_burst: int
    max_sessions: int
    max_call_seconds: int
    # Normalised origins (scheme://host[:port], no trailing slash); empty: any origin.
    allowed_origins: tuple[str, ...]
    manage_api_gateway_account: bool
    vpc_cidr: str
    # The OpenAI key as a Pulumi secret Output, or None when not configured.
    openai_api_key: Any = None

    @property
    def name_prefix(self) -> str:
        """Prefix of the physical names this stack gives its resources."""
        return f"{PROJECT}-{self.stack}"

    @property
    def point_in_time_recovery_enabled(self) -> bool:
        return self.point_in_time_recovery or self.hipaa

    @property
    def worker_autoscaled(self) -> bool:
        """Autoscaling manages the worker's task count: a range to scale in, and at least one
        task running (a paused worker, count 0, has no task to report the load metric)."""
        return self.worker_count >= 1 and self.worker_max_count > self.worker_count

    @property
    def lean_default_route(self) -> bool:
        """$default goes straight to SQS through API Gateway: no $default function."""
        return self.default_route_integration == "sqs"


_STACK_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,23}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")


def parse_stack_config(
    values: Mapping[str, str | None],
    *,
    stack: str,
    region: str | None,
    openai_api_key: Any = None,
    plaintext_secrets: Collection[str] = (),
) -> StackConfig:
    """Validate raw config strings (keys without the project prefix) into a ``StackConfig``.

    Unset keys take their declared default. ``plaintext_secrets`` names secret settings that
    were set without ``--secret``. All problems are reported at once.
    """
    errors: list[str] = []
    for key in sorted(plaintext_secrets):
        errors.append(
            f"{PROJECT}:{key} is stored in plain text; set it with "
            f"`pulumi config set --secret {key} <value>`"
        )

    unknown = sorted(set(values) - set(SETTINGS_BY_KEY))
    for key in unknown:
        errors.append(
            f"{PROJECT}:{key} is not a setting of this project; known settings: "
            f"{', '.join(SETTINGS_BY_KEY)}"
        )

    def raw(key: str) -> str | None:
        value = values.get(key)
        return None if value is None or value == "" else value

    def string(key: str, allowed: tuple[str, ...] | None = None) -> str:
        value = raw(key)
        result = str(SETTINGS_BY_KEY[key].default) if value is None else value.strip()
        if allowed is not None and result not in allowed:
            errors.append(
                f"{PROJECT}:{key} is {result!r}; allowed values are: {', '.join(allowed)}"
            )
        return result

    def boolean(key: str) -> bool:
        value = raw(key)
        if value is None:
            return bool(SETTINGS_BY_KEY[key].default)
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            errors.append(f"{PROJECT}:{key} must be true or false, got {value!r}")
            return False
        return lowered == "true"

    def integer(key: str, low: int, high: int) -> int:
        value = raw(key)
        if value is None:
            return int(SETTINGS_BY_KEY[key].default)
        try:
            number = int(value.strip())
        except ValueError:
            errors.append(f"{PROJECT}:{key} must be an integer, got {value!r}")
            return int(SETTINGS_BY_KEY[key].default)
        if not low <= number <= high:
            errors.append(f"{PROJECT}:{key} must be between {low} and {high}, got {number}")
        return number

    if not _STACK_NAME.match(stack):
        errors.append(
            f"stack name {stack!r} must be 1-24 lowercase letters, digits or hyphens "
            "(it prefixes every resource name)"
        )
    if not region:
        errors.append("aws:region is not set; run `pulumi config set aws:region us-east-1`")
    elif not _REGION.match(region):
        errors.append(f"aws:region {region!r} is not an AWS region name like us-east-1")

    model = string("model", MODELS)
    voice = string("voice", VOICES)
    instructions = string("instructions")
    if len(instructions) > 8_000:
        errors.append(
            f"{PROJECT}:instructions is {len(instructions)} characters; keep it under 8000"
        )

    base_url = string("realtimeBaseUrl")
    if not base_url.startswith("wss://"):
        errors.append(f"{PROJECT}:realtimeBaseUrl must be a wss:// URL, got {base_url!r}")

    worker_cpu = integer("workerCpu", 256, 16384)
    worker_memory = integer("workerMemory", 512, 122880)
    if worker_cpu not in FARGATE_MEMORY_BY_CPU:
        errors.append(
            f"{PROJECT}:workerCpu must be one of {', '.join(map(str, FARGATE_MEMORY_BY_CPU))}, "
            f"got {worker_cpu}"
        )
    elif worker_memory not in FARGATE_MEMORY_BY_CPU[worker_cpu]:
        allowed = FARGATE_MEMORY_BY_CPU[worker_cpu]
        errors.append(
            f"{PROJECT}:workerMemory {worker_memory} is not valid with workerCpu {worker_cpu}; "
            f"Fargate allows {allowed[0]}-{allowed[-1]} MiB in steps of "
            f"{allowed[1] - allowed[0]}"
        )
    worker_slots = integer("workerSlots", 1, MAX_WORKER_SLOTS)
    worker_count = integer("workerCount", 0, MAX_WORKER_SLOTS)
    worker_max_count = integer("workerMaxCount", 0, MAX_WORKER_SLOTS)
    # A worker holds at least one slot to do any work, so tasks beyond the slots would idle.
    if worker_count > worker_max_count:
        errors.append(
            f"{PROJECT}:workerCount ({worker_count}) exceeds workerMaxCount ({worker_max_count}): "
            "workerCount is the autoscaling minimum; raise workerMaxCount to at least it"
        )
    if worker_max_count > worker_slots:
        errors.append(
            f"{PROJECT}:workerMaxCount ({worker_max_count}) exceeds workerSlots ({worker_slots}): "
            "every worker task needs a slot of its own (a queue it alone polls); raise "
            "workerSlots or lower workerMaxCount"
        )
    worker_target_calls = integer("workerTargetCalls", 1, 1_000)
    drain_wait = integer("drainWaitSeconds", 0, MAX_DRAIN_WAIT_SECONDS)
    on_demand_base = integer("workerOnDemandBase", 0, 100)
    if on_demand_base > worker_count:
        errors.append(
            f"{PROJECT}:workerOnDemandBase ({on_demand_base}) exceeds workerCount ({worker_count})"
        )

    chunk = integer("audioChunkBytes", 480, MAX_DOWNLINK_PCM_BYTES)
    if chunk % SAMPLE_WIDTH_BYTES:
        errors.append(f"{PROJECT}:audioChunkBytes must be even (whole PCM16 samples), got {chunk}")

    retention = integer("logRetentionDays", 1, 3653)
    if retention not in LOG_RETENTION_DAYS:
        errors.append(
            f"{PROJECT}:logRetentionDays must be one of "
            f"{', '.join(map(str, LOG_RETENTION_DAYS))}, got {retention}"
        )

    session_ttl = integer("sessionTtlSeconds", 60, MAX_SESSION_TTL_SECONDS)
    max_call = integer("maxCallSeconds", 60, 7_200)
    if max_call > MAX_CALL_SECONDS:
        errors.append(
            f"{PROJECT}:maxCallSeconds is {max_call}; a call must end before API Gateway's "
            f"2-hour connection limit: at most {MAX_CALL_SECONDS}"
        )
    if session_ttl < max_call:
        errors.append(
            f"{PROJECT}:sessionTtlSeconds ({session_ttl}) is shorter than maxCallSeconds "
            f"({max_call}): a live call's session row would expire under it"
        )
    rate = integer("clientMessagesPerSecond", MIN_CLIENT_MESSAGES_PER_SECOND, 1_000)
    burst = integer("clientMessageBurst", 1, 10_000)
    if burst < rate:
        errors.append(
            f"{PROJECT}:clientMessageBurst ({burst}) must be at least clientMessagesPerSecond "
            f"({rate})"
        )
    origins = _origins(string("allowedOrigins"), errors)

    vpc_cidr = string("vpcCidr")
    try:
        network = ipaddress.ip_network(vpc_cidr)
        if network.version != 4 or not 16 <= network.prefixlen <= 22:
            errors.append(f"{PROJECT}:vpcCidr must be an IPv4 /16 to /22 range, got {vpc_cidr}")
    except ValueError:
        errors.append(f"{PROJECT}:vpcCidr is not a CIDR range: {vpc_cidr!r}")

    config = StackConfig(
        stack=stack,
        region=region or "",
        model=model,
        hipaa=boolean("hipaa"),
        voice=voice,
        instructions=instructions,
        realtime_base_url=base_url,
        default_provisioned_concurrency=integer("defaultProvisionedConcurrency", 0, 1000),
        default_route_integration=string("defaultRouteIntegration", DEFAULT_ROUTE_INTEGRATIONS),
        worker_cpu=worker_cpu,
        worker_memory=worker_memory,
        worker_slots=worker_slots,
        worker_count=worker_count,
        worker_max_count=worker_max_count,
        worker_target_calls=worker_target_calls,
        drain_wait_seconds=drain_wait,
        worker_on_demand_base=on_demand_base,
        audio_chunk_bytes=chunk,
        session_ttl_seconds=session_ttl,
        log_retention_days=retention,
        log_level=string("logLevel", LOG_LEVELS),
        point_in_time_recovery=boolean("pointInTimeRecovery"),
        api_throttle_rate_limit=integer("apiThrottleRateLimit", 1, 10_000),
        api_throttle_burst_limit=integer("apiThrottleBurstLimit", 1, 10_000),
        client_messages_per_second=rate,
        client_message_burst=burst,
        max_sessions=integer("maxSessions", 0, 100_000),
        max_call_seconds=max_call,
        allowed_origins=origins,
        manage_api_gateway_account=boolean("manageApiGatewayAccount"),
        vpc_cidr=vpc_cidr,
        openai_api_key=openai_api_key,
    )
    if errors:
        raise ConfigError(
            f"invalid configuration for stack {stack!r}:\n" + "\n".join(f"  - {e}" for e in errors)
        )
    return config


def _origins(value: str, errors: list[str]) -> tuple[str, ...]:
    """``allowedOrigins`` as normalised origins; each bad entry is reported."""
    origins: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        origin = entry.rstrip("/")
        if not _ORIGIN.match(origin):
            errors.append(
                f"{PROJECT}:allowedOrigins has {entry!r}, which is not a web origin like "
                "https://app.example.com (scheme and host, optional port, no path)"
            )
            continue
        if origin.lower() not in origins:
            origins.append(origin.lower())
    if len(",".join(origins)) > MAX_ALLOWED_ORIGINS_CHARS:
        errors.append(
            f"{PROJECT}:allowedOrigins is longer than {MAX_ALLOWED_ORIGINS_CHARS} characters "
            "(it travels in the authorizer's environment, 4 KB in all)"
        )
    return tuple(origins)


def reference_table() -> str:
    """The README's configuration reference, generated from ``SETTINGS``."""
    rows = [
        "| key | type | default | meaning |",
        "| --- | --- | --- | --- |",
        "| `aws:region` | string | (required) | AWS region of the stack, e.g. `us-east-1`. |",
    ]
    for s in SETTINGS:
        if s.default == "":
            default = "(none)"
        elif isinstance(s.default, bool):
            default = f"`{str(s.default).lower()}`"
        else:
            default = f"`{s.default}`"
        kind = f"{s.type}, set with `--secret`" if s.secret else s.type
        meaning = s.description.replace("|", "\\|")
        rows.append(f"| `{s.key}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows)


def read_stack_config() -> StackConfig:
    """Read this stack's config from Pulumi, once. Raises ``pulumi.RunError`` on bad values."""
    import pulumi
    from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret

    config = pulumi.Config()
    prefix = f"{PROJECT}:"
    # Every key set for this project, so a misspelt one is reported instead of ignored.
    present = {k[len(prefix) :] for k in (*CONFIG.get(), *get_config_env()) if k.startswith(prefix)}
    values = {key: config.get(key) for key in present | set(SETTINGS_BY_KEY)}
    # The key never travels as plain text: wrapped as a secret, and kept out of ``values``.
    # The CLI applies the empty default from Pulumi.yaml, so "" means "not configured".
    raw_key = values.pop("openaiApiKey", None)
    key = pulumi.Output.secret(raw_key) if raw_key else None
    plaintext = [
        s.key
        for s in SETTINGS
        if s.secret and config.get(s.key) and not is_config_secret(f"{PROJECT}:{s.key}")
    ]
    try:
        return parse_stack_config(
            values,
            stack=pulumi.get_stack(),
            region=pulumi.Config("aws").get("region"),
            openai_api_key=key,
            plaintext_secrets=plaintext,
        )
    except ConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
