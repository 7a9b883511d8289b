"""The worker's settings, read once from the environment (docs/architecture.md lists them)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from wire import realtime as rt
from wire import slots
from worker.core import BridgeSettings
from worker.realtime_link import RECONNECT_BACKOFF_S


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    sessions_table: str
    audio_queue_url: str
    connections_endpoint_url: str
    realtime_base_url: str
    openai_api_key: str
    session: rt.SessionConfig
    bridge: BridgeSettings
    sqs_pollers: int = 4
    # Threads for blocking boto3 calls; also the @connections connection pool size.
    io_threads: int = 64
    health_file: str = "/tmp/worker-heartbeat"
    # Pauses before each attempt to replace a lost model socket (tests shorten them).
    model_reconnect_backoff_s: tuple[float, ...] = RECONNECT_BACKOFF_S
    # The other slots' queues (audio_queue_url is slot 0's); see wire/slots.py.
    more_queue_urls: tuple[str, ...] = ()
    # This process's name in the slot leases: unique per process, never reused.
    worker_id: str = ""
    # A slot lease lasts this long unless renewed; renewals run every lease_tick_ms.
    # A crashed worker's slots are taken over after at most lease_ms + lease_tick_ms.
    lease_ms: int = 20_000
    lease_tick_ms: int = 5_000
    # While another worker is handing a slot over, look this often, to take it at once.
    lease_fast_tick_ms: int = 200
    # On SIGTERM, how long to wait for calls to reach a turn boundary before handing
    # them over anyway (ECS gives a task at most 120 s between SIGTERM and SIGKILL).
    drain_wait_ms: int = 60_000
    sqs_wait_seconds: int = 20
    # The ECS service name, the dimension of the ActiveCalls metric ("" = no metric).
    metrics_service: str = ""

    @property
    def queue_urls(self) -> tuple[str, ...]:
        return (self.audio_queue_url, *self.more_queue_urls)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        env = os.environ if env is None else env

        def required(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise SettingsError(f"{name} is not set (see docs/architecture.md)")
            return value

        def integer(name: str, default: int) -> int:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return int(raw)
            except ValueError:
                raise SettingsError(f"{name} must be an integer, got {raw!r}") from None

        model = env.get("REALTIME_MODEL", "gpt-realtime-mini")
        if model not in rt.MODELS:
            raise SettingsError(
                f"REALTIME_MODEL must be one of {', '.join(rt.MODELS)}; got {model!r}"
            )
        defaults = rt.SessionConfig()
        session = rt.SessionConfig(
            model=model,
            voice=env.get("REALTIME_VOICE") or defaults.voice,
            instructions=env.get("REALTIME_INSTRUCTIONS") or defaults.instructions,
        )
        defaults_bridge = BridgeSettings()
        try:
            bridge = BridgeSettings(
                chunk_bytes=integer("AUDIO_CHUNK_BYTES", defaults_bridge.chunk_bytes),
                max_call_ms=1000 * integer("MAX_CALL_SECONDS", defaults_bridge.max_call_ms // 1000),
                client_messages_per_second=integer(
                    "CLIENT_MESSAGES_PER_SECOND", int(defaults_bridge.client_messages_per_second)
                ),
                client_message_burst=integer(
                    "CLIENT_MESSAGE_BURST", defaults_bridge.client_message_burst
                ),
                model_session_max_ms=1000
                * integer(
                    "MODEL_SESSION_MAX_SECONDS", defaults_bridge.model_session_max_ms // 1000
                ),
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        try:
            queue_urls = slots.queue_urls_from_env(env)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if not queue_urls:
            raise SettingsError(f"{slots.ENV_QUEUE_URLS} is not set (see docs/architecture.md)")
        lease_seconds = integer("SLOT_LEASE_SECONDS", 20)
        tick_ms = int(1000 * _decimal(env, "SLOT_TICK_SECONDS", 5.0))
        if lease_seconds * 1000 < 2 * tick_ms:
            raise SettingsError("SLOT_LEASE_SECONDS must be at least twice SLOT_TICK_SECONDS")
        return cls(
            sessions_table=required("SESSIONS_TABLE"),
            audio_queue_url=queue_urls[0],
            more_queue_urls=queue_urls[1:],
            worker_id=env.get("WORKER_ID") or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}",
            lease_ms=1000 * lease_seconds,
            lease_tick_ms=tick_ms,
            drain_wait_ms=1000 * max(0, integer("DRAIN_WAIT_SECONDS", 60)),
            sqs_wait_seconds=min(20, max(1, integer("SQS_WAIT_SECONDS", 20))),
            metrics_service=env.get(slots.ENV_METRICS_SERVICE, ""),
            connections_endpoint_url=required("CONNECTIONS_ENDPOINT_URL"),
            realtime_base_url=env.get("REALTIME_BASE_URL") or rt.DEFAULT_BASE_URL,
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            session=session,
            bridge=bridge,
            sqs_pollers=max(1, integer("SQS_POLLERS", 4)),
            io_threads=max(4, integer("IO_THREADS", 64)),
            health_file=env.get("HEALTH_FILE") or "/tmp/worker-heartbeat",
        )


def _decimal(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value
