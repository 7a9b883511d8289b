"""The client protocol: what a browser (or phone bridge) and the server say over the WebSocket.

API Gateway WebSocket APIs close on binary frames from clients (1003) and cap frames at
32 KB, so both directions are JSON text frames. Audio is base64 PCM16 LE mono 24 kHz.
docs/protocol.md is the prose version of this module; a test keeps them in step.

Client -> server: JSON objects with an ``action`` (routed by ``$request.body.action``).
Server -> client: JSON objects with a ``type``.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from wire.audio import SAMPLE_WIDTH_BYTES

# API Gateway's hard limit on one WebSocket frame, in either direction.
MAX_FRAME_BYTES = 32 * 1024
# Uplink audio per message. 16 KB of PCM is ~341 ms and ~21.9 KB as base64 JSON: well under
# the frame limit while leaving the page free to pick smaller frames for latency.
MAX_UPLINK_PCM_BYTES = 16 * 1024
# Downlink audio per message: the largest whole-sample PCM whose base64 JSON frame
# (with an item id) stays under MAX_FRAME_BYTES. 24,000 bytes = 500 ms.
MAX_DOWNLINK_PCM_BYTES = 24_000
MAX_TEXT_CHARS = 4_096


class Action(StrEnum):
    """Client -> server ``action`` values."""

    AUDIO = "audio"  # {"action": "audio", "audio": "<base64 PCM16>", "seq"?: int}
    TEXT = "text"  # {"action": "text", "text": "typed message"}
    INTERRUPT = "interrupt"  # {"action": "interrupt", "item_id"?: str, "played_ms": int}
    PING = "ping"  # {"action": "ping"} -> {"type": "pong"}


class EventType(StrEnum):
    """Server -> client ``type`` values."""

    READY = "ready"
    AUDIO = "audio"
    AUDIO_DONE = "audio_done"
    SPEECH_STARTED = "speech_started"
    SPEECH_STOPPED = "speech_stopped"
    TRANSCRIPT = "transcript"
    ERROR = "error"
    SESSION_ENDED = "session_ended"
    KEEPALIVE = "keepalive"
    PONG = "pong"


class ErrorCode(StrEnum):
    """``code`` values of ``error`` events. Every one is documented in docs/protocol.md."""

    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_ACTION = "missing_action"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_AUDIO = "invalid_audio"
    AUDIO_TOO_LARGE = "audio_too_large"
    INVALID_TEXT = "invalid_text"
    INVALID_INTERRUPT = "invalid_interrupt"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    AUDIO_GAP = "audio_gap"
    MODEL_ERROR = "model_error"
    MODEL_UNAVAILABLE = "model_unavailable"


class ProtocolError(ValueError):
    """A client frame that breaks the protocol. Becomes an ``error`` event, never a crash."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- client -> server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AudioIn:
    pcm: bytes
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class TextIn:
    text: str


@dataclass(frozen=True, slots=True)
class InterruptIn:
    played_ms: int
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class PingIn:
    pass


ClientMessage = AudioIn | TextIn | InterruptIn | PingIn


def parse_client_frame(frame: str | bytes) -> ClientMessage:
    """Decode and validate one client frame. Raises ``ProtocolError`` with a clear message."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(
            ErrorCode.MESSAGE_TOO_LARGE, f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}"
        )
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            ErrorCode.NOT_AN_OBJECT, f"frame must be a JSON object, got {type(obj).__name__}"
        )
    action = obj.get("action")
    if action is None:
        raise ProtocolError(ErrorCode.MISSING_ACTION, 'frame has no "action"')
    if action == Action.AUDIO:
        return _parse_audio(obj)
    if action == Action.TEXT:
        text = obj.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(
                ErrorCode.INVALID_TEXT,
                f'"text" must be a non-empty string of at most {MAX_TEXT_CHARS} characters',
            )
        return TextIn(text=text)
    if action == Action.INTERRUPT:
        played = obj.get("played_ms", 0)
        item_id = obj.get("item_id")
        if not _is_int(played) or played < 0 or not (item_id is None or isinstance(item_id, str)):
            raise ProtocolError(
                ErrorCode.INVALID_INTERRUPT,
                '"played_ms" must be a non-negative integer and "item_id" a string if given',
            )
        return InterruptIn(played_ms=played, item_id=item_id)
    if action == Action.PING:
        return PingIn()
    shown = action if isinstance(action, str) else type(action).__name__
    raise ProtocolError(
        ErrorCode.UNKNOWN_ACTION,
        f"unknown action {str(shown)[:64]!r}; expected one of {[a.value for a in Action]}",
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_audio(obj: dict[str, Any]) -> AudioIn:
    encoded = obj.get("audio")
    if not isinstance(encoded, str):
        raise ProtocolError(ErrorCode.INVALID_AUDIO, '"audio" must be a base64 string')
    try:
        pcm = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorCode.INVALID_AUDIO, '"audio" is not valid base64') from None
    if not pcm:
        raise ProtocolError(ErrorCode.INVALID_AUDIO, '"audio" is empty')
    if len(pcm) % SAMPLE_WIDTH_BYTES:
        raise ProtocolError(
            ErrorCode.INVALID_AUDIO,
            f"audio has {len(pcm)} bytes; PCM16 needs an even byte count",
        )
    if len(pcm) > MAX_UPLINK_PCM_BYTES:
        raise ProtocolError(
            ErrorCode.AUDIO_TOO_LARGE,
            f"audio message carries {len(pcm)} bytes of PCM; the limit is {MAX_UPLINK_PCM_BYTES}",
        )
    seq = obj.get("seq")
    if seq is not None and (not _is_int(seq) or seq < 0):
        raise ProtocolError(ErrorCode.INVALID_AUDIO, '"seq" must be a non-negative integer')
    return AudioIn(pcm=pcm, seq=seq)


def audio_action(pcm: bytes, seq: int | None = None) -> str:
    """Client -> server audio frame (used by the caller, the tests and the bench)."""
    msg: dict[str, Any] = {"action": Action.AUDIO.value, "audio": base64.b64encode(pcm).decode()}
    if seq is not None:
        msg["seq"] = seq
    return orjson.dumps(msg).decode()


def text_action(text: str) -> str:
    return orjson.dumps({"action": Action.TEXT.value, "text": text}).decode()


def interrupt_action(played_ms: int, item_id: str | None = None) -> str:
    msg: dict[str, Any] = {"action": Action.INTERRUPT.value, "played_ms": played_ms}
    if item_id is not None:
        msg["item_id"] = item_id
    return orjson.dumps(msg).decode()


# --- server -> client -------------------------------------------------------------------


def _event(type_: EventType, **fields: Any) -> bytes:
    return orjson.dumps({"type": type_.value, **fields})


def audio_event(pcm: bytes, item_id: str) -> bytes:
    """Downlink audio. ``item_id`` lets the client say how much of that item it played."""
    if len(pcm) > MAX_DOWNLINK_PCM_BYTES:
        raise ValueError(f"{len(pcm)} bytes of PCM exceed {MAX_DOWNLINK_PCM_BYTES} per message")
    return _event(EventType.AUDIO, audio=base64.b64encode(pcm).decode(), item_id=item_id)


def audio_done_event(item_id: str) -> bytes:
    """All audio of this item has been sent (not sent after a barge-in)."""
    return _event(EventType.AUDIO_DONE, item_id=item_id)


def ready_event(model: str, voice: str) -> bytes:
    return _event(EventType.READY, model=model, voice=voice)


def speech_started_event(item_id: str | None = None) -> bytes:
    """The user began talking: the client stops playback now."""
    return _event(EventType.SPEECH_STARTED, item_id=item_id)


def speech_stopped_event(audio_end_ms: int, speech_end_ms: int) -> bytes:
    """The model's VAD ended the user's turn.

    ``audio_end_ms`` is the model's own figure: the uplink position where the turn ended,
    which includes the VAD's silence window. ``speech_end_ms`` is where the speech itself
    ended (``audio_end_ms`` less that window): latency is measured from it.
    """
    return _event(EventType.SPEECH_STOPPED, audio_end_ms=audio_end_ms, speech_end_ms=speech_end_ms)


def transcript_event(role: str, text: str, final: bool, item_id: str | None = None) -> bytes:
    return _event(EventType.TRANSCRIPT, role=role, text=text, final=final, item_id=item_id)


def error_event(code: ErrorCode | str, message: str) -> bytes:
    return _event(EventType.ERROR, code=str(code), message=message)


def session_ended_event(reason: str) -> bytes:
    return _event(EventType.SESSION_ENDED, reason=reason)


def keepalive_event() -> bytes:
    return _event(EventType.KEEPALIVE)


def pong_event() -> bytes:
    return _event(EventType.PONG)


def parse_server_event(frame: str | bytes) -> dict[str, Any]:
    """Decode one server -> client frame (for callers and tests)."""
    obj = orjson.loads(frame)
    if not isinstance(obj, dict) or "type" not in obj:
        raise ValueError("server event must be a JSON object with a type")
    return obj


def decode_audio(event: dict[str, Any]) -> bytes:
    """PCM of a server ``audio`` event."""
    return base64.b64decode(event["audio"])
