"""The worker's settings, read once from the environment (docs/architecture.md lists them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from wire import realtime as rt
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
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            sessions_table=required("SESSIONS_TABLE"),
            audio_queue_url=required("AUDIO_QUEUE_URL"),
            connections_endpoint_url=required("CONNECTIONS_ENDPOINT_URL"),
            realtime_base_url=env.get("REALTIME_BASE_URL") or rt.DEFAULT_BASE_URL,
            openai_api_key=env.get("OPENAI_API_KEY", ""),
            session=session,
            bridge=bridge,
            sqs_pollers=max(1, integer("SQS_POLLERS", 4)),
            io_threads=max(4, integer("IO_THREADS", 64)),
            health_file=env.get("HEALTH_FILE") or "/tmp/worker-heartbeat",
        )
