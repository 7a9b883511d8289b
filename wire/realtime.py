"""The OpenAI Realtime GA protocol, as far as the bridge uses it.

Event names and shapes follow the GA API (``openai.types.realtime``): no beta header,
``session.update`` with ``session.type = "realtime"``, ``audio/pcm`` at 24 kHz both ways,
``response.output_audio.delta`` for audio out. The tests validate everything built here,
and everything the emulator sends, against the ``openai`` package's event types.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from wire.audio import SAMPLE_RATE_HZ

DEFAULT_BASE_URL = "wss://api.openai.com/v1/realtime"
MODELS = ("gpt-realtime", "gpt-realtime-mini")
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")

# Server -> client (model -> bridge) event types the bridge acts on.
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
ERROR = "error"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
RESPONSE_CREATED = "response.created"
RESPONSE_DONE = "response.done"
OUTPUT_AUDIO_DELTA = "response.output_audio.delta"
OUTPUT_AUDIO_DONE = "response.output_audio.done"
OUTPUT_TRANSCRIPT_DELTA = "response.output_audio_transcript.delta"
OUTPUT_TRANSCRIPT_DONE = "response.output_audio_transcript.done"
INPUT_TRANSCRIPT_DELTA = "conversation.item.input_audio_transcription.delta"
INPUT_TRANSCRIPT_COMPLETED = "conversation.item.input_audio_transcription.completed"
ITEM_TRUNCATED = "conversation.item.truncated"

# Server -> client events the bridge may ignore but a faithful server (the emulator) sends.
INPUT_AUDIO_CLEARED = "input_audio_buffer.cleared"
ITEM_ADDED = "conversation.item.added"
ITEM_DONE = "conversation.item.done"
ITEM_DELETED = "conversation.item.deleted"
ITEM_RETRIEVED = "conversation.item.retrieved"
OUTPUT_ITEM_ADDED = "response.output_item.added"
OUTPUT_ITEM_DONE = "response.output_item.done"
CONTENT_PART_ADDED = "response.content_part.added"
CONTENT_PART_DONE = "response.content_part.done"
RATE_LIMITS_UPDATED = "rate_limits.updated"

# Client -> server event types (GA WebSocket).
SESSION_UPDATE = "session.update"
INPUT_AUDIO_APPEND = "input_audio_buffer.append"
INPUT_AUDIO_COMMIT = "input_audio_buffer.commit"
INPUT_AUDIO_CLEAR = "input_audio_buffer.clear"
ITEM_CREATE = "conversation.item.create"
ITEM_TRUNCATE = "conversation.item.truncate"
ITEM_DELETE = "conversation.item.delete"
ITEM_RETRIEVE = "conversation.item.retrieve"
RESPONSE_CREATE = "response.create"
RESPONSE_CANCEL = "response.cancel"

# Error codes the bridge expects in a race and ignores: cancelling a response the server
# already cancelled (server VAD's interrupt_response does that on barge-in).
BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active"})


DEFAULT_MODEL = "gpt-realtime-mini"
DEFAULT_VOICE = "marin"


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the bridge asks of every model session."""

    model: str = DEFAULT_MODEL
    voice: str = DEFAULT_VOICE
    instructions: str = "You are a helpful, concise voice assistant."
    transcription_model: str = "gpt-4o-mini-transcribe"
    vad_silence_ms: int = 500
    vad_prefix_padding_ms: int = 300
    vad_threshold: float = 0.5


def connect_url(base_url: str, model: str) -> str:
    """``wss://.../v1/realtime?model=...`` for OpenAI, Azure OpenAI or the emulator."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}{urlencode({'model': model})}"


def auth_headers(api_key: str) -> dict[str, str]:
    """GA handshake headers: a bearer key and nothing else (no ``OpenAI-Beta``)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def session_update(config: SessionConfig) -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": config.instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": pcm,
                    "transcription": {"model": config.transcription_model},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": config.vad_threshold,
                        "prefix_padding_ms": config.vad_prefix_padding_ms,
                        "silence_duration_ms": config.vad_silence_ms,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": pcm, "voice": config.voice},
            },
        },
    }


def input_audio_append(pcm: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


def response_cancel() -> dict[str, Any]:
    return {"type": "response.cancel"}


def item_truncate(item_id: str, audio_end_ms: int, content_index: int = 0) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": content_index,
        "audio_end_ms": audio_end_ms,
    }


def user_text_item(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def assistant_text_item(text: str) -> dict[str, Any]:
    """A past assistant turn, restored as text into a new model session."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        },
    }


def response_create() -> dict[str, Any]:
    return {"type": "response.create"}
