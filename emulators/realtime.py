"""An OpenAI Realtime GA server on localhost, with an echo "model".

The worker talks to it exactly as it talks to ``wss://api.openai.com/v1/realtime``: same
URL shape, same events, same error bodies. The "model" answers each user turn with the
PCM of that turn, bit-exact, so a test can prove that nothing along the whole path was
lost, reordered or duplicated.

Layout, after the ``websockets`` library (../shared/STYLE.md): a pure core with no I/O,

- ``TurnDetector``: energy VAD on fixed 10 ms frames at absolute stream positions, so how
  the input was chunked never changes where turns start and end;
- ``RealtimeServerSession``: one session's protocol state machine (client event text in,
  server events out, one response step at a time);

and a thin asyncio layer, ``RealtimeEmulator``, that owns sockets, pacing and fault
injection. ``speech_spans`` is the same VAD as a pure function, so any test can compute
the expected replies for an input.

Behaviour confirmed against the GA API (live frame captures and real error bodies
quoted in public code):

- event order of a response (``response.created``, ``output_item.added``,
  ``conversation.item.added``, ``content_part.added``, deltas, ``*.done``,
  ``conversation.item.done``, ``output_item.done``, ``response.done``), then
  ``rate_limits.updated``; user items get ``conversation.item.added`` and ``.done``;
- every ``error`` is non-fatal and carries ``error.event_id`` = the client's
  ``event_id`` (``null`` if it sent none); a rejected ``session.update`` is discarded
  whole; unknown type: ``invalid_value`` on ``type`` listing the supported values;
  unknown field: ``unknown_parameter``; non-JSON: ``invalid_json``; a binary frame:
  ``invalid_event``; a rate other than 24000: ``integer_below_min_value``;
- ``response.cancel`` with nothing active: ``response_cancel_not_active``,
  "Cancellation failed: no active response found";
- truncating past the item's audio: ``invalid_value`` on ``audio_end_ms``, "Audio
  content of {N}ms is already shorter than {M}ms"; an item with no model audio (a user
  item, or an assistant item before its first delta): ``unsupported_content_type``,
  "Only model output audio messages can be truncated";
- no ``model`` in the URL: 101, one ``error`` (``missing_model``), close 4000; the same
  for ``OpenAI-Beta: realtime=v1`` (``beta_api_shape_disabled``) when
  ``reject_beta_header`` is set;
- ``speech_started.audio_start_ms`` includes ``prefix_padding_ms`` and
  ``speech_stopped.audio_end_ms`` includes the silence that ended the turn (as the GA
  reference documents both). The exact spans are in ``SessionRecord.turns``.
- a session at its maximum duration (60 minutes) gets an ``error``
  (``invalid_request_error``, ``session_expired``, "Your session hit the maximum duration
  of 60 minutes.") and is closed with 1001 and that message as the reason: our best
  understanding from error bodies and close frames quoted in public issues, not a
  documented contract. ``max_session_seconds`` sets the limit (default: none).

Assumed, not confirmed: the messages for unknown item ids, bad base64 and
``conversation_already_has_active_response``; delta sizes (50-100 ms) and speed
(``Pacing``); the usage numbers. Deliberate limits: audio output only, ``audio/pcm`` at
24 kHz only (both refused with a clear error); ``turn_detection.threshold`` is echoed
but loudness is ``threshold_rms``; ``semantic_vad`` behaves as ``server_vad`` with 500 ms;
``idle_timeout_ms`` is not acted on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import copy
import math
import random
import signal
import string
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import mul
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from wire import realtime as rt
from wire.audio import BYTES_PER_MS, BYTES_PER_SECOND, SAMPLE_RATE_HZ, bytes_to_ms

Event = dict[str, Any]

PATH = "/v1/realtime"

# VAD: 10 ms frames at absolute positions of the session's input stream.
FRAME_SAMPLES = SAMPLE_RATE_HZ // 100
FRAME_BYTES = FRAME_SAMPLES * 2
# RMS of a loud frame, in PCM16 units: 500 is about -36 dBFS, above a quiet room through a
# browser's noise suppression and below any voiced speech.
DEFAULT_THRESHOLD_RMS = 500
DEFAULT_SILENCE_MS = 500
DEFAULT_PREFIX_PADDING_MS = 300
# OpenAI refuses to commit less than this.
MIN_COMMIT_MS = 100

# The reply to a text turn: a 300 ms square wave at 400 Hz (integers only, so the bytes
# are the same on every platform).
TEXT_REPLY_MS = 300
_SQUARE_HALF_PERIOD = SAMPLE_RATE_HZ // 800
_SQUARE_AMPLITUDE = 6000

_NEEDS_BYTESWAP = sys.byteorder == "big"  # array('h') is native-endian; the wire is LE
_ID_ALPHABET = string.ascii_letters + string.digits
_SESSION_LIFETIME_S = 3600
# What ``rate_limits.updated`` carries after each response (GA shows only "tokens").
_RATE_LIMITS = [
    {"name": "tokens", "limit": 15_000_000, "remaining": 14_999_000, "reset_seconds": 0.004}
]


# ---------------------------------------------------------------------------------------
# The "model": VAD, and what it answers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStart:
    """Speech began in the frame starting at ``start_byte`` (absolute stream position)."""

    start_byte: int


@dataclass(frozen=True, slots=True)
class SpeechEnd:
    """A turn ended: loud audio spans ``[start_byte, end_byte)``; the silence that ended it
    was complete at ``detected_byte``."""

    start_byte: int
    end_byte: int
    detected_byte: int


def silence_frames_for(silence_ms: int) -> int:
    """Consecutive quiet frames that end a turn (at least one)."""
    return max(1, -(-silence_ms // 10))


class TurnDetector:
    """Energy VAD over fixed 10 ms frames at absolute positions of one input stream.

    A frame is loud when its RMS is above the threshold. The first loud frame starts a
    turn; ``silence_frames`` consecutive quiet frames after the last loud one end it. The
    frame grid is fixed to the start of the stream and a partial frame waits for the rest
    of its bytes, so the result never depends on how the stream was chunked.
    """

    def __init__(
        self, *, threshold_rms: int = DEFAULT_THRESHOLD_RMS, silence_ms: int = DEFAULT_SILENCE_MS
    ) -> None:
        # Compare sums of squares, not RMS: integers only, no sqrt per frame.
        self._loud_above = threshold_rms * threshold_rms * FRAME_SAMPLES
        self.silence_frames = silence_frames_for(silence_ms)
        self._partial = b""
        self._next_frame = 0
        self._onset_frame: int | None = None
        self._last_loud_frame = 0

    @property
    def in_speech(self) -> bool:
        return self._onset_frame is not None

    @property
    def classified_bytes(self) -> int:
        """Bytes of the stream already classified (a whole number of frames)."""
        return self._next_frame * FRAME_BYTES

    @property
    def onset_byte(self) -> int | None:
        return None if self._onset_frame is None else self._onset_frame * FRAME_BYTES

    def set_silence_ms(self, silence_ms: int) -> None:
        self.silence_frames = silence_frames_for(silence_ms)

    def feed(self, pcm: bytes) -> list[SpeechStart | SpeechEnd]:
        """Classify every whole frame now available; return the turn boundaries found."""
        data = self._partial + pcm if self._partial else pcm
        whole = len(data) - len(data) % FRAME_BYTES
        self._partial = data[whole:]
        if not whole:
            return []
        samples = array("h")
        samples.frombytes(data[:whole])
        if _NEEDS_BYTESWAP:
            samples.byteswap()
        boundaries: list[SpeechStart | SpeechEnd] = []
        loud_above = self._loud_above
        for offset in range(0, len(samples), FRAME_SAMPLES):
            frame = samples[offset : offset + FRAME_SAMPLES]
            boundary = self._classify(sum(map(mul, frame, frame)) > loud_above)
            if boundary is not None:
                boundaries.append(boundary)
        return boundaries

    def _classify(self, loud: bool) -> SpeechStart | SpeechEnd | None:
        index = self._next_frame
        self._next_frame += 1
        if self._onset_frame is None:
            if not loud:
                return None
            self._onset_frame = self._last_loud_frame = index
            return SpeechStart(index * FRAME_BYTES)
        if loud:
            self._last_loud_frame = index
            return None
        if index - self._last_loud_frame < self.silence_frames:
            return None
        return self._end_turn(detected_byte=(index + 1) * FRAME_BYTES)

    def end_turn_now(self) -> SpeechEnd | None:
        """End the turn in progress at the audio seen so far (a manual commit)."""
        if self._onset_frame is None:
            return None
        return self._end_turn(detected_byte=self.classified_bytes)

    def abandon_turn(self) -> None:
        """Forget a turn in progress (the buffer was cleared); the frame grid stays."""
        self._onset_frame = None

    def _end_turn(self, *, detected_byte: int) -> SpeechEnd:
        assert self._onset_frame is not None
        end = SpeechEnd(
            start_byte=self._onset_frame * FRAME_BYTES,
            end_byte=(self._last_loud_frame + 1) * FRAME_BYTES,
            detected_byte=detected_byte,
        )
        self._onset_frame = None
        return end


def speech_spans(
    pcm: bytes,
    *,
    silence_ms: int = DEFAULT_SILENCE_MS,
    threshold_rms: int = DEFAULT_THRESHOLD_RMS,
    flush: bool = False,
) -> list[tuple[int, int]]:
    """Byte spans ``[start, end)`` of the user turns the emulator hears in ``pcm``.

    Each span runs from the first sample of a turn's first loud frame to the last sample
    of its last loud frame; the emulator's reply to that turn is exactly ``pcm[start:end]``.
    Only turns already ended by ``silence_ms`` of quiet are returned, unless ``flush``
    (then a turn still open at the end of ``pcm`` counts too). Assumes the session saw
    ``pcm`` from its start and never cleared or committed its buffer by hand.
    """
    detector = TurnDetector(threshold_rms=threshold_rms, silence_ms=silence_ms)
    spans = [(b.start_byte, b.end_byte) for b in detector.feed(pcm) if isinstance(b, SpeechEnd)]
    if flush and (open_turn := detector.end_turn_now()) is not None:
        spans.append((open_turn.start_byte, open_turn.end_byte))
    return spans


def expected_replies(pcm: bytes, **vad: Any) -> list[bytes]:
    """The reply audio the emulator sends for each turn in ``pcm`` (see ``speech_spans``)."""
    return [pcm[start:end] for start, end in speech_spans(pcm, **vad)]


def text_reply_pcm() -> bytes:
    """The reply audio to a text turn: 300 ms of a 400 Hz square wave."""
    samples = array("h")
    for index in range(TEXT_REPLY_MS * SAMPLE_RATE_HZ // 1000):
        high = (index // _SQUARE_HALF_PERIOD) % 2 == 0
        samples.append(_SQUARE_AMPLITUDE if high else -_SQUARE_AMPLITUDE)
    if _NEEDS_BYTESWAP:
        samples.byteswap()
    return samples.tobytes()


TEXT_REPLY_PCM = text_reply_pcm()


def user_transcript(audio_bytes: int) -> str:
    """What the emulator's "transcription" hears in a user turn of that many bytes."""
    return f"speech of {bytes_to_ms(audio_bytes)} ms"


def reply_transcript(audio_bytes: int) -> str:
    """The transcript of the reply to a user audio turn."""
    return f"echo of {bytes_to_ms(audio_bytes)} ms of audio"


def text_reply_transcript(text: str) -> str:
    """The transcript of the reply to a user text turn."""
    return f"echo of text: {text}"


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a response streams: delta sizes, speed, and a pause before the first delta.

    ``speed`` is seconds of audio per second of wall time (OpenAI generates faster than
    real time); ``math.inf`` streams as fast as the socket takes it.
    """

    min_delta_ms: int = 50
    max_delta_ms: int = 100
    speed: float = 4.0
    think_delay_s: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_delta_ms <= self.max_delta_ms:
            raise ValueError("need 1 <= min_delta_ms <= max_delta_ms")
        if self.speed <= 0 or self.think_delay_s < 0:
            raise ValueError("speed must be > 0 and think_delay_s >= 0")


# ---------------------------------------------------------------------------------------
# What a test can inspect about a session
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """A user audio turn the VAD found (byte positions in the session's input stream)."""

    item_id: str
    start_byte: int
    end_byte: int
    audio_start_ms: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class Truncation:
    """A ``conversation.item.truncate`` the client sent, and whether it was applied."""

    item_id: str
    content_index: int
    audio_end_ms: int
    available_ms: int | None
    accepted: bool


@dataclass(slots=True)
class ResponseRecord:
    """One response: what it was to say, how much it said, how it ended."""

    id: str
    item_id: str
    reply_bytes: int
    sent_bytes: int = 0
    status: str = "in_progress"
    reason: str | None = None


@dataclass(slots=True)
class SessionRecord:
    """Everything observable about one session, for assertions.

    ``client_events`` holds every client event as received (parsed, or the raw text if it
    was not JSON); ``errors`` the ``error`` objects sent back.
    """

    index: int
    model: str | None
    path: str
    headers: list[tuple[str, str]]
    client_events: list[Any] = field(default_factory=list)
    truncations: list[Truncation] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    responses: list[ResponseRecord] = field(default_factory=list)
    errors: list[Event] = field(default_factory=list)
    sent_event_types: list[str] = field(default_factory=list)
    input_audio_bytes: int = 0
    session: Event = field(default_factory=dict)
    closed: bool = False
    close_code: int | None = None
    expired: bool = False  # ended by ``max_session_seconds``

    def header(self, name: str) -> str | None:
        """The first value of a handshake header (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    @property
    def beta_header(self) -> str | None:
        """The ``OpenAI-Beta`` header, which a GA client must not send."""
        return self.header("OpenAI-Beta")


# ---------------------------------------------------------------------------------------
# Client event validation (error bodies shaped as the GA API shapes them)
# ---------------------------------------------------------------------------------------


class ClientEventError(Exception):
    """A client event the server refuses; becomes one ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a decimal",
    bool: "a boolean",
    dict: "an object",
    list: "an array",
}


def _json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return _TYPE_NAMES.get(type(value), "a value")


def _check_type(value: Any, kind: type, path: str) -> None:
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float:
        ok = ok or (isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ClientEventError(
            "invalid_type",
            f"Invalid type for '{path}': expected {_TYPE_NAMES[kind]}, "
            f"but got {_json_type_name(value)} instead.",
            path,
        )


def _required(obj: Event, key: str, kind: type, prefix: str = "") -> Any:
    path = f"{prefix}{key}"
    if key not in obj:
        raise ClientEventError(
            "missing_required_parameter", f"Missing required parameter: '{path}'.", path
        )
    _check_type(obj[key], kind, path)
    return obj[key]


def _no_unknown_keys(obj: Event, allowed: frozenset[str], prefix: str) -> None:
    for key in obj:
        if key not in allowed:
            raise ClientEventError(
                "unknown_parameter", f"Unknown parameter: '{prefix}{key}'.", f"{prefix}{key}"
            )


def _in_range(value: float, low: float | None, high: float | None, path: str) -> None:
    kind = "integer" if isinstance(value, int) else "decimal"
    if low is not None and value < low:
        raise ClientEventError(
            f"{kind}_below_min_value",
            f"Invalid '{path}': {kind} below minimum value. "
            f"Expected a value >= {low}, but got {value} instead.",
            path,
        )
    if high is not None and value > high:
        raise ClientEventError(
            f"{kind}_above_max_value",
            f"Invalid '{path}': {kind} above maximum value. "
            f"Expected a value <= {high}, but got {value} instead.",
            path,
        )


def _one_of(value: Any, supported: tuple[str, ...], path: str) -> None:
    if value not in supported:
        listed = ", ".join(f"'{s}'" for s in supported[:-1])
        listed = f"{listed}, and '{supported[-1]}'" if listed else f"'{supported[-1]}'"
        raise ClientEventError(
            "invalid_value", f"Invalid value: '{value}'. Supported values are: {listed}.", path
        )


# ---------------------------------------------------------------------------------------
# The session object: defaults, and session.update applied to it
# ---------------------------------------------------------------------------------------

_PCM_FORMAT: Event = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
_SERVER_VAD_DEFAULTS: Event = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": DEFAULT_PREFIX_PADDING_MS,
    "silence_duration_ms": DEFAULT_SILENCE_MS,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
_SEMANTIC_VAD_DEFAULTS: Event = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
_SESSION_KEYS = frozenset(
    {
        "type", "audio", "include", "instructions", "max_output_tokens", "model",
        "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice",
        "tools", "tracing", "truncation",
    }
)  # fmt: skip
_AUDIO_KEYS = frozenset({"input", "output"})
_INPUT_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
_OUTPUT_KEYS = frozenset({"format", "speed", "voice"})
_FORMAT_KEYS = frozenset({"type", "rate"})
_TRANSCRIPTION_KEYS = frozenset({"delay", "keywords", "language", "languages", "model", "prompt"})
_SERVER_VAD_KEYS = frozenset(_SERVER_VAD_DEFAULTS)
_SEMANTIC_VAD_KEYS = frozenset(_SEMANTIC_VAD_DEFAULTS)


def default_session(session_id: str, model: str, expires_at: int) -> Event:
    """The session object a new connection starts with (as ``session.created`` shows it)."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": session_id,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are an echo: you repeat what the user said, exactly.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": dict(_PCM_FORMAT),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(_SERVER_VAD_DEFAULTS),
            },
            "output": {"format": dict(_PCM_FORMAT), "voice": "alloy", "speed": 1.0},
        },
        "include": None,
    }


def updated_session(current: Event, update: Any) -> Event:
    """``current`` with ``session.update``'s ``session`` applied, or ClientEventError.

    Validation comes first and is complete, so a rejected update changes nothing (as the
    GA API discards a rejected update whole).
    """
    _check_type(update, dict, "session")
    session_type = _required(update, "type", str, "session.")
    if session_type == "transcription":
        raise ClientEventError(
            "invalid_value",
            "Passing a transcription session update event to a realtime session is not allowed.",
            "session.type",
        )
    _one_of(session_type, ("realtime", "transcription"), "session.type")
    _no_unknown_keys(update, _SESSION_KEYS, "session.")
    result = copy.deepcopy(current)
    _apply_top_level(result, update)
    if "audio" in update:
        _apply_audio(result["audio"], update["audio"])
    return result


def _apply_top_level(result: Event, update: Event) -> None:
    if "instructions" in update:
        _check_type(update["instructions"], str, "session.instructions")
    if "output_modalities" in update:
        modalities = update["output_modalities"]
        _check_type(modalities, list, "session.output_modalities")
        for index, modality in enumerate(modalities):
            _one_of(modality, ("text", "audio"), f"session.output_modalities[{index}]")
        if modalities != ["audio"]:
            # The echo model only speaks; a worker on this path never asks for text.
            raise ClientEventError(
                "invalid_value",
                "The Realtime emulator supports output_modalities ['audio'] only.",
                "session.output_modalities",
            )
    if "max_output_tokens" in update and update["max_output_tokens"] != "inf":
        _check_type(update["max_output_tokens"], int, "session.max_output_tokens")
        _in_range(update["max_output_tokens"], 1, 4096, "session.max_output_tokens")
    for key, value in update.items():
        if key not in ("type", "audio"):
            result[key] = value


def _apply_audio(audio: Event, update: Any) -> None:
    _check_type(update, dict, "session.audio")
    _no_unknown_keys(update, _AUDIO_KEYS, "session.audio.")
    if "input" in update:
        _apply_audio_input(audio["input"], update["input"])
    if "output" in update:
        _apply_audio_output(audio["output"], update["output"])


def _apply_audio_input(audio_input: Event, update: Any) -> None:
    prefix = "session.audio.input."
    _check_type(update, dict, prefix[:-1])
    _no_unknown_keys(update, _INPUT_KEYS, prefix)
    if "format" in update:
        audio_input["format"] = _audio_format(update["format"], f"{prefix}format")
    if "transcription" in update:
        audio_input["transcription"] = _transcription(update["transcription"])
    if "noise_reduction" in update:
        if update["noise_reduction"] is not None:
            _check_type(update["noise_reduction"], dict, f"{prefix}noise_reduction")
        audio_input["noise_reduction"] = update["noise_reduction"]
    if "turn_detection" in update:
        audio_input["turn_detection"] = _turn_detection(update["turn_detection"])


def _apply_audio_output(audio_output: Event, update: Any) -> None:
    prefix = "session.audio.output."
    _check_type(update, dict, prefix[:-1])
    _no_unknown_keys(update, _OUTPUT_KEYS, prefix)
    if "format" in update:
        audio_output["format"] = _audio_format(update["format"], f"{prefix}format")
    if "voice" in update:
        voice = update["voice"]
        if not isinstance(voice, dict):
            _check_type(voice, str, f"{prefix}voice")
        audio_output["voice"] = voice
    if "speed" in update:
        _check_type(update["speed"], float, f"{prefix}speed")
        _in_range(update["speed"], 0.25, 1.5, f"{prefix}speed")
        audio_output["speed"] = update["speed"]


def _audio_format(update: Any, path: str) -> Event:
    _check_type(update, dict, path)
    _no_unknown_keys(update, _FORMAT_KEYS, f"{path}.")
    format_type = update.get("type", "audio/pcm")
    _one_of(format_type, ("audio/pcm", "audio/pcmu", "audio/pcma"), f"{path}.type")
    if format_type != "audio/pcm":
        # G.711 is valid for OpenAI; the emulator only speaks the project's one format.
        raise ClientEventError(
            "invalid_value",
            f"The Realtime emulator supports 'audio/pcm' only, not '{format_type}'.",
            f"{path}.type",
        )
    rate = update.get("rate", SAMPLE_RATE_HZ)
    _check_type(rate, int, f"{path}.rate")
    _in_range(rate, SAMPLE_RATE_HZ, SAMPLE_RATE_HZ, f"{path}.rate")
    return {"type": "audio/pcm", "rate": rate}


def _transcription(update: Any) -> Event | None:
    path = "session.audio.input.transcription"
    if update is None:
        return None
    _check_type(update, dict, path)
    _no_unknown_keys(update, _TRANSCRIPTION_KEYS, f"{path}.")
    if "model" in update:
        _check_type(update["model"], str, f"{path}.model")
    return {"model": None, "language": None, "prompt": None, **update}


def _turn_detection(update: Any) -> Event | None:
    path = "session.audio.input.turn_detection"
    if update is None:
        return None
    _check_type(update, dict, path)
    kind = _required(update, "type", str, f"{path}.")
    _one_of(kind, ("server_vad", "semantic_vad"), f"{path}.type")
    allowed, defaults = (
        (_SERVER_VAD_KEYS, _SERVER_VAD_DEFAULTS)
        if kind == "server_vad"
        else (_SEMANTIC_VAD_KEYS, _SEMANTIC_VAD_DEFAULTS)
    )
    _no_unknown_keys(update, allowed, f"{path}.")
    _check_vad_numbers(update, path)
    for flag in ("create_response", "interrupt_response"):
        if flag in update:
            _check_type(update[flag], bool, f"{path}.{flag}")
    if "eagerness" in update:
        _one_of(update["eagerness"], ("low", "medium", "high", "auto"), f"{path}.eagerness")
    return {**defaults, **update}


def _check_vad_numbers(update: Event, path: str) -> None:
    if "threshold" in update:
        _check_type(update["threshold"], float, f"{path}.threshold")
        _in_range(update["threshold"], 0.0, 1.0, f"{path}.threshold")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in update:
            _check_type(update[key], int, f"{path}.{key}")
            _in_range(update[key], 0, None, f"{path}.{key}")
    if update.get("idle_timeout_ms") is not None:
        _check_type(update["idle_timeout_ms"], int, f"{path}.idle_timeout_ms")


# ---------------------------------------------------------------------------------------
# The protocol core: one session, no I/O
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class ConversationEntry:
    """An item of the conversation, with what the echo model needs to answer it."""

    id: str
    role: str
    content_type: str  # input_audio, input_text, output_audio, or the client's own
    item: Event  # as the server shows it (no audio)
    audio: bytes = b""  # a user turn's speech, or an assistant reply's full audio
    text: str | None = None
    generated_bytes: int = 0  # assistant audio produced so far


@dataclass(slots=True)
class PendingTranscription:
    item_id: str
    transcript: str
    audio_bytes: int


@dataclass(slots=True)
class ActiveResponse:
    """The response being streamed: its audio, and how far it has got."""

    record: ResponseRecord
    entry: ConversationEntry
    reply: bytes
    words: list[str]
    source_bytes: int
    started: bool = False
    sent_bytes: int = 0
    sent_words: int = 0
    transcriptions: list[PendingTranscription] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.record.id


class RealtimeServerSession:
    """The server side of one Realtime session as a pure state machine.

    Feed it what the client sent (``receive_text`` / ``receive_binary``) and take the
    server events it produced (``events_to_send``). A response streams one step at a
    time: ``response_step`` emits the next step's events and says how much audio it
    carried, so the I/O layer can pace it; a barge-in or ``response.cancel`` ends the
    response synchronously, and the next ``response_step`` for it returns None.
    """

    def __init__(
        self,
        record: SessionRecord,
        *,
        pacing: Pacing = Pacing(),
        threshold_rms: int = DEFAULT_THRESHOLD_RMS,
        rng: random.Random | None = None,
        now: float = 0.0,
        keep_audio_in_records: bool = True,
        lifetime_s: float = _SESSION_LIFETIME_S,
    ) -> None:
        self.record = record
        self._pacing = pacing
        self._rng = rng or random.Random(record.index)
        self._keep_audio = keep_audio_in_records
        self._outbox: list[Event] = []
        self._session = default_session(
            self._new_id("sess"), record.model or "", math.ceil(now + lifetime_s)
        )
        self._lifetime_s = lifetime_s
        self._conversation_id = self._new_id("conv")
        self._detector = TurnDetector(threshold_rms=threshold_rms)
        self._items: dict[str, ConversationEntry] = {}
        self._active: ActiveResponse | None = None
        # Input stream: total bytes seen, where the uncommitted buffer starts, and the
        # audio kept to answer with (only from a turn's onset while VAD is on).
        self._stream_bytes = 0
        self._buffer_from = 0
        self._kept = bytearray()
        self._kept_from = 0
        self._speech_item_id: str | None = None
        self._handlers: dict[str, Callable[[Event], None]] = {
            rt.SESSION_UPDATE: self._on_session_update,
            rt.INPUT_AUDIO_APPEND: self._on_audio_append,
            rt.INPUT_AUDIO_COMMIT: self._on_audio_commit,
            rt.INPUT_AUDIO_CLEAR: self._on_audio_clear,
            rt.ITEM_CREATE: self._on_item_create,
            rt.ITEM_TRUNCATE: self._on_item_truncate,
            rt.ITEM_DELETE: self._on_item_delete,
            rt.ITEM_RETRIEVE: self._on_item_retrieve,
            rt.RESPONSE_CREATE: self._on_response_create,
            rt.RESPONSE_CANCEL: self._on_response_cancel,
        }
        self.record.session = self._session

    # -- public surface -----------------------------------------------------------------

    def open(self) -> None:
        """The first server event of every session."""
        self._emit(rt.SESSION_CREATED, session=copy.deepcopy(self._session))

    def fail_handshake(self, code: str, message: str) -> None:
        """An error the real API sends right after the handshake, before closing 4000."""
        self._send_error(ClientEventError(code, message), client_event_id=None)

    def receive_text(self, text: str) -> None:
        """Handle one text frame from the client."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            self.record.client_events.append(text)
            self._send_error(
                ClientEventError(
                    "invalid_json",
                    "Invalid event: failed to parse JSON value. Expected an event object.",
                ),
                client_event_id=None,
            )
            return
        self._record_client_event(event)
        if not isinstance(event, dict):
            self._send_error(
                ClientEventError(
                    "invalid_type",
                    f"Invalid type for 'event': expected an object, "
                    f"but got {_json_type_name(event)} instead.",
                ),
                client_event_id=None,
            )
            return
        self._dispatch(event)

    def receive_binary(self, data: bytes) -> None:
        """Handle one binary frame: the API accepts text frames only."""
        self.record.client_events.append(data)
        self._send_error(
            ClientEventError(
                "invalid_event",
                "Expected a text WebSocket message; binary frames are not supported.",
            ),
            client_event_id=None,
        )

    def expire(self) -> str:
        """The session hit its maximum duration: the error the API sends then. Returns the
        message, which the API also gives as the reason of its 1001 close."""
        seconds = self._lifetime_s
        duration = f"{int(seconds // 60)} minutes" if seconds % 60 == 0 else f"{seconds:g} seconds"
        message = f"Your session hit the maximum duration of {duration}."
        self._send_error(ClientEventError("session_expired", message), client_event_id=None)
        self.record.expired = True
        return message

    def events_to_send(self) -> list[Event]:
        """Take the server events produced so far, in order."""
        events, self._outbox = self._outbox, []
        return events

    @property
    def streaming_response_id(self) -> str | None:
        """The response still to be streamed, if any."""
        return None if self._active is None else self._active.id

    def response_step(self, response_id: str) -> int | None:
        """Emit the next step of ``response_id``: the bytes of audio it carried, or None
        when the response is over (finished now, or already finished or cancelled)."""
        response = self._active
        if response is None or response.id != response_id:
            return None
        if not response.started:
            self._start_output(response)
            return 0
        if response.sent_bytes < len(response.reply):
            return self._send_audio_delta(response)
        self._finish(response, status="completed")
        return None

    # -- dispatch -----------------------------------------------------------------------

    def _dispatch(self, event: Event) -> None:
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            event_type = _required(event, "type", str)
            handler = self._handlers.get(event_type)
            if handler is None:
                _one_of(event_type, tuple(self._handlers), "type")
                return
            handler(event)
        except ClientEventError as error:
            self._send_error(error, client_event_id)

    def _record_client_event(self, event: Any) -> None:
        if (
            not self._keep_audio
            and isinstance(event, dict)
            and event.get("type") == rt.INPUT_AUDIO_APPEND
        ):
            event = {**event, "audio": ""}
        self.record.client_events.append(event)

    # -- session.update -----------------------------------------------------------------

    def _on_session_update(self, event: Event) -> None:
        session = updated_session(self._session, _required(event, "session", dict))
        self._session = session
        self.record.session = session
        self._detector.set_silence_ms(self._silence_ms())
        self._emit(rt.SESSION_UPDATED, session=copy.deepcopy(session))

    def _turn_detection(self) -> Event | None:
        detection: Event | None = self._session["audio"]["input"]["turn_detection"]
        return detection

    def _silence_ms(self) -> int:
        detection = self._turn_detection()
        if detection is None or detection["type"] != "server_vad":
            return DEFAULT_SILENCE_MS
        return int(detection["silence_duration_ms"])

    def _transcribing(self) -> bool:
        return self._session["audio"]["input"]["transcription"] is not None

    # -- input audio ----------------------------------------------------------------------

    def _on_audio_append(self, event: Event) -> None:
        encoded = _required(event, "audio", str)
        try:
            pcm = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientEventError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio data.", "audio"
            ) from exc
        self._stream_bytes += len(pcm)
        self.record.input_audio_bytes += len(pcm)
        self._kept += pcm
        # The detector sees every byte, even with turn detection off, so its frame grid
        # stays on absolute stream positions if the session turns VAD back on.
        boundaries = self._detector.feed(pcm)
        if self._turn_detection() is None:
            self._detector.abandon_turn()
            return  # manual turns: everything is kept until commit or clear
        for boundary in boundaries:
            if isinstance(boundary, SpeechStart):
                self._on_speech_start(boundary)
            else:
                self._on_speech_end(boundary)
        self._forget_audio_before(
            self._detector.onset_byte
            if self._detector.in_speech
            else self._detector.classified_bytes
        )

    def _forget_audio_before(self, position: int | None) -> None:
        # Between turns nothing needs keeping: memory stays flat however long the silence.
        # A frame not yet classified stays whole: it may turn out to be a turn's onset.
        if position is None:
            return
        position = min(position, self._detector.classified_bytes)
        if position <= self._kept_from:
            return
        del self._kept[: position - self._kept_from]
        self._kept_from = position

    def _kept_audio(self, start: int, end: int) -> bytes:
        return bytes(self._kept[start - self._kept_from : end - self._kept_from])

    def _on_speech_start(self, start: SpeechStart) -> None:
        self._speech_item_id = item_id = self._new_id("item")
        padding = int(self._turn_detection_value("prefix_padding_ms", DEFAULT_PREFIX_PADDING_MS))
        audio_start_ms = max(0, bytes_to_ms(start.start_byte) - padding)
        self._emit(rt.SPEECH_STARTED, audio_start_ms=audio_start_ms, item_id=item_id)
        if self._active is not None and self._turn_detection_value("interrupt_response", True):
            self._finish(self._active, status="cancelled", reason="turn_detected")

    def _on_speech_end(self, end: SpeechEnd) -> None:
        item_id = self._speech_item_id or self._new_id("item")
        self._speech_item_id = None
        padding = int(self._turn_detection_value("prefix_padding_ms", DEFAULT_PREFIX_PADDING_MS))
        audio_end_ms = bytes_to_ms(end.detected_byte)
        self._emit(rt.SPEECH_STOPPED, audio_end_ms=audio_end_ms, item_id=item_id)
        self.record.turns.append(
            Turn(
                item_id=item_id,
                start_byte=end.start_byte,
                end_byte=end.end_byte,
                audio_start_ms=max(0, bytes_to_ms(end.start_byte) - padding),
                audio_end_ms=audio_end_ms,
            )
        )
        speech = self._kept_audio(end.start_byte, end.end_byte)
        self._buffer_from = end.detected_byte
        entry = self._commit_user_audio(item_id, speech)
        if self._turn_detection_value("create_response", True) and self._active is None:
            self._create_response(entry)
        else:
            self._flush_transcriptions([self._pending_transcription(entry)])

    def _turn_detection_value(self, key: str, default: Any) -> Any:
        detection = self._turn_detection()
        return default if detection is None else detection.get(key, default)

    def _on_audio_commit(self, event: Event) -> None:
        buffered = self._stream_bytes - self._buffer_from
        if buffered < MIN_COMMIT_MS * BYTES_PER_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{buffered / BYTES_PER_MS:.2f}ms of audio.",
            )
        if self._turn_detection() is None:
            speech = self._kept_audio(max(self._buffer_from, self._kept_from), self._stream_bytes)
            self._forget_audio_before(self._stream_bytes)
        else:
            # A commit during speech ends the turn at what was heard; between turns the
            # buffer holds no speech, so the item's reply would be silent.
            end = self._detector.end_turn_now()
            speech = b"" if end is None else self._kept_audio(end.start_byte, end.end_byte)
            self._speech_item_id = None
        self._buffer_from = self._stream_bytes
        entry = self._commit_user_audio(self._new_id("item"), speech)
        self._flush_transcriptions([self._pending_transcription(entry)])

    def _on_audio_clear(self, event: Event) -> None:
        self._detector.abandon_turn()
        self._speech_item_id = None
        self._buffer_from = self._stream_bytes
        self._forget_audio_before(self._detector.classified_bytes)
        if self._turn_detection() is None:
            self._forget_audio_before(self._stream_bytes)
        self._emit(rt.INPUT_AUDIO_CLEARED)

    def _commit_user_audio(self, item_id: str, speech: bytes) -> ConversationEntry:
        previous_item_id = self._last_item_id()
        self._emit(rt.COMMITTED, previous_item_id=previous_item_id, item_id=item_id)
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        entry = ConversationEntry(item_id, "user", "input_audio", item, audio=speech)
        self._add_item(entry, previous_item_id)
        return entry

    def _pending_transcription(self, entry: ConversationEntry) -> PendingTranscription | None:
        if not self._transcribing():
            return None
        return PendingTranscription(entry.id, user_transcript(len(entry.audio)), len(entry.audio))

    # -- conversation items -------------------------------------------------------------

    def _last_item_id(self) -> str | None:
        return next(reversed(self._items), None)

    def _add_item(self, entry: ConversationEntry, previous_item_id: str | None) -> None:
        self._items[entry.id] = entry
        self._emit(rt.ITEM_ADDED, previous_item_id=previous_item_id, item=copy.deepcopy(entry.item))
        self._emit(rt.ITEM_DONE, previous_item_id=previous_item_id, item=copy.deepcopy(entry.item))

    def _on_item_create(self, event: Event) -> None:
        item = _required(event, "item", dict)
        item_type = _required(item, "type", str, "item.")
        item_id = item.get("id") or self._new_id("item")
        _check_type(item_id, str, "item.id")
        if item_id in self._items:
            raise ClientEventError(
                "invalid_value", f"Item with id '{item_id}' already exists.", "item.id"
            )
        role, content_type, text, audio = "", item_type, None, b""
        if item_type == "message":
            role = _required(item, "role", str, "item.")
            _one_of(role, ("user", "assistant", "system"), "item.role")
            content = _required(item, "content", list, "item.")
            content_type, text, audio = _first_content(content)
        shown = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        if "content" in shown:
            # As the API shows items: everything but the audio bytes.
            shown["content"] = [_without_audio(part) for part in shown["content"]]
        entry = ConversationEntry(item_id, role, content_type, shown, audio=audio, text=text)
        self._add_item(entry, self._last_item_id())

    def _on_item_truncate(self, event: Event) -> None:
        item_id = _required(event, "item_id", str)
        content_index = _required(event, "content_index", int)
        audio_end_ms = _required(event, "audio_end_ms", int)
        entry = self._items.get(item_id)
        available_ms = None if entry is None else bytes_to_ms(entry.generated_bytes)
        refusal = _truncation_refusal(entry, item_id, content_index, audio_end_ms)
        self.record.truncations.append(
            Truncation(item_id, content_index, audio_end_ms, available_ms, refusal is None)
        )
        if refusal is not None:
            raise refusal
        assert entry is not None
        # As the API does: the transcript goes, so no unheard text stays in the context.
        entry.item["content"] = [{"type": "output_audio", "transcript": ""}]
        self._emit(
            rt.ITEM_TRUNCATED,
            item_id=item_id,
            content_index=content_index,
            audio_end_ms=audio_end_ms,
        )

    def _on_item_delete(self, event: Event) -> None:
        item_id = _required(event, "item_id", str)
        if self._items.pop(item_id, None) is None:
            raise ClientEventError(
                "item_delete_invalid_item_id",
                f"Error deleting item: the item with id '{item_id}' does not exist.",
                "item_id",
            )
        self._emit(rt.ITEM_DELETED, item_id=item_id)

    def _on_item_retrieve(self, event: Event) -> None:
        item_id = _required(event, "item_id", str)
        entry = self._items.get(item_id)
        if entry is None:
            raise ClientEventError(
                "item_retrieve_invalid_item_id",
                f"Error retrieving item: the item with id '{item_id}' does not exist.",
                "item_id",
            )
        self._emit(rt.ITEM_RETRIEVED, item=copy.deepcopy(entry.item))

    # -- responses ------------------------------------------------------------------------

    def _on_response_create(self, event: Event) -> None:
        if "response" in event and event["response"] is not None:
            _check_type(event["response"], dict, "response")
        if self._active is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        source = next(
            (e for e in reversed(self._items.values()) if e.role == "user"),
            None,
        )
        self._create_response(source)

    def _on_response_cancel(self, event: Event) -> None:
        response_id = event.get("response_id")
        if response_id is not None:
            _check_type(response_id, str, "response_id")
        if self._active is None or response_id not in (None, self._active.id):
            raise ClientEventError(
                "response_cancel_not_active", "Cancellation failed: no active response found"
            )
        self._finish(self._active, status="cancelled", reason="client_cancelled")

    def _create_response(self, source: ConversationEntry | None) -> None:
        reply, transcript = _reply_to(source)
        item_id = self._new_id("item")
        record = ResponseRecord(id=self._new_id("resp"), item_id=item_id, reply_bytes=len(reply))
        self.record.responses.append(record)
        entry = ConversationEntry(
            item_id,
            "assistant",
            "output_audio",
            _assistant_item(item_id, "in_progress", None),
            audio=reply,
        )
        words = transcript.split(" ")
        words = [words[0]] + [f" {word}" for word in words[1:]]
        response = ActiveResponse(
            record, entry, reply, words, source_bytes=len(source.audio) if source else 0
        )
        if source is not None and source.content_type == "input_audio":
            pending = self._pending_transcription(source)
            response.transcriptions = [pending] if pending else []
        self._active = response
        self._emit(rt.RESPONSE_CREATED, response=self._response_object(response, "in_progress"))

    def _start_output(self, response: ActiveResponse) -> None:
        response.started = True
        entry = response.entry
        previous_item_id = self._last_item_id()
        self._items[entry.id] = entry
        common = {"response_id": response.id, "output_index": 0}
        self._emit(rt.OUTPUT_ITEM_ADDED, **common, item=copy.deepcopy(entry.item))
        self._emit(rt.ITEM_ADDED, previous_item_id=previous_item_id, item=copy.deepcopy(entry.item))
        self._emit(
            rt.CONTENT_PART_ADDED,
            **common,
            item_id=entry.id,
            content_index=0,
            part={"type": "audio", "transcript": ""},
        )

    def _send_audio_delta(self, response: ActiveResponse) -> int:
        delta_ms = self._rng.randint(self._pacing.min_delta_ms, self._pacing.max_delta_ms)
        start = response.sent_bytes
        chunk = response.reply[start : start + delta_ms * BYTES_PER_MS]
        if response.sent_words < len(response.words):
            # The transcript runs a little ahead of the audio, as OpenAI's does.
            self._send_transcript_delta(response)
        self._emit(
            rt.OUTPUT_AUDIO_DELTA,
            **self._part_ids(response),
            delta=base64.b64encode(chunk).decode("ascii"),
        )
        response.sent_bytes += len(chunk)
        response.entry.generated_bytes = response.record.sent_bytes = response.sent_bytes
        if start == 0:
            self._flush_transcriptions(response.transcriptions)
            response.transcriptions = []
        return len(chunk)

    def _send_transcript_delta(self, response: ActiveResponse) -> None:
        word = response.words[response.sent_words]
        response.sent_words += 1
        self._emit(rt.OUTPUT_TRANSCRIPT_DELTA, **self._part_ids(response), delta=word)

    def _part_ids(self, response: ActiveResponse) -> Event:
        return {
            "response_id": response.id,
            "item_id": response.entry.id,
            "output_index": 0,
            "content_index": 0,
        }

    def _finish(self, response: ActiveResponse, *, status: str, reason: str | None = None) -> None:
        """End a response, completed or cancelled, with the events the API sends for it."""
        self._active = None
        self._flush_transcriptions(response.transcriptions)
        response.transcriptions = []
        if response.started:
            if status == "completed":
                while response.sent_words < len(response.words):
                    self._send_transcript_delta(response)
            item_status = "completed" if status == "completed" else "incomplete"
            self._close_output(response, item_status=item_status)
        response.record.status = status
        response.record.reason = reason
        self._emit(rt.RESPONSE_DONE, response=self._response_object(response, status, reason))
        self._emit(rt.RATE_LIMITS_UPDATED, rate_limits=copy.deepcopy(_RATE_LIMITS))

    def _close_output(self, response: ActiveResponse, *, item_status: str) -> None:
        transcript = "".join(response.words[: response.sent_words])
        entry = response.entry
        entry.item = _assistant_item(entry.id, item_status, transcript)
        ids = self._part_ids(response)
        self._emit(rt.OUTPUT_AUDIO_DONE, **ids)
        self._emit(rt.OUTPUT_TRANSCRIPT_DONE, **ids, transcript=transcript)
        self._emit(rt.CONTENT_PART_DONE, **ids, part={"type": "audio", "transcript": transcript})
        previous_item_id = self._previous_item_id(entry.id)
        self._emit(rt.ITEM_DONE, previous_item_id=previous_item_id, item=copy.deepcopy(entry.item))
        self._emit(
            rt.OUTPUT_ITEM_DONE,
            response_id=response.id,
            output_index=0,
            item=copy.deepcopy(entry.item),
        )

    def _previous_item_id(self, item_id: str) -> str | None:
        previous = None
        for key in self._items:
            if key == item_id:
                return previous
            previous = key
        return previous

    def _response_object(
        self, response: ActiveResponse, status: str, reason: str | None = None
    ) -> Event:
        done = status != "in_progress"
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None if reason is None else {"type": status, "reason": reason},
            "output": [copy.deepcopy(response.entry.item)] if done and response.started else [],
            "conversation_id": self._conversation_id,
            "output_modalities": ["audio"],
            "max_output_tokens": self._session["max_output_tokens"],
            "audio": {
                "output": {
                    "format": dict(self._session["audio"]["output"]["format"]),
                    "voice": self._session["audio"]["output"]["voice"],
                }
            },
            "usage": _usage(response) if done else None,
            "metadata": None,
        }

    def _flush_transcriptions(self, pending: Sequence[PendingTranscription | None]) -> None:
        for transcription in pending:
            if transcription is not None:
                self._send_transcription(transcription)

    def _send_transcription(self, transcription: PendingTranscription) -> None:
        words = transcription.transcript.split(" ")
        for index, word in enumerate(words):
            self._emit(
                rt.INPUT_TRANSCRIPT_DELTA,
                item_id=transcription.item_id,
                content_index=0,
                delta=word if index == 0 else f" {word}",
            )
        audio_tokens = bytes_to_ms(transcription.audio_bytes) // 100
        self._emit(
            rt.INPUT_TRANSCRIPT_COMPLETED,
            item_id=transcription.item_id,
            content_index=0,
            transcript=transcription.transcript,
            usage={
                "type": "tokens",
                "total_tokens": audio_tokens + len(words),
                "input_tokens": audio_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
                "output_tokens": len(words),
            },
        )

    # -- output -------------------------------------------------------------------------

    def _emit(self, event_type: str, **fields: Any) -> None:
        self._outbox.append({"type": event_type, "event_id": self._new_id("event"), **fields})
        self.record.sent_event_types.append(event_type)

    def _send_error(self, error: ClientEventError, client_event_id: str | None) -> None:
        body = {
            "type": "invalid_request_error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        }
        self.record.errors.append(body)
        self._emit(rt.ERROR, error=body)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{''.join(self._rng.choices(_ID_ALPHABET, k=21))}"


def _first_content(content: list[Any]) -> tuple[str, str | None, bytes]:
    """An item's first content part: its type, its text, and its audio (for an echo)."""
    for index, part in enumerate(content):
        _check_type(part, dict, f"item.content[{index}]")
    if not content:
        return "", None, b""
    first = content[0]
    part_type = first.get("type", "")
    text, audio = first.get("text"), b""
    if part_type == "input_text":
        text = _required(first, "text", str, "item.content[0].")
    if part_type == "input_audio" and "audio" in first:
        encoded = _required(first, "audio", str, "item.content[0].")
        try:
            audio = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ClientEventError(
                "invalid_value",
                "Invalid 'item.content[0].audio': expected base64-encoded audio data.",
                "item.content[0].audio",
            ) from exc
    return part_type, text if isinstance(text, str) else None, audio


def _without_audio(part: Any) -> Any:
    return {k: v for k, v in part.items() if k != "audio"} if isinstance(part, dict) else part


def _truncation_refusal(
    entry: ConversationEntry | None, item_id: str, content_index: int, audio_end_ms: int
) -> ClientEventError | None:
    """Why the API would refuse this truncate, or None if it applies."""
    if entry is None:
        return ClientEventError(
            "item_truncate_invalid_item_id",
            f"Error truncating item: the item with id '{item_id}' does not exist.",
            "item_id",
        )
    if entry.content_type != "output_audio" or entry.generated_bytes == 0:
        return ClientEventError(
            "unsupported_content_type", "Only model output audio messages can be truncated"
        )
    for value, low, high, path in (
        (content_index, 0, 0, "content_index"),
        (audio_end_ms, 0, None, "audio_end_ms"),
    ):
        try:
            _in_range(value, low, high, path)
        except ClientEventError as error:
            return error
    if audio_end_ms * BYTES_PER_MS > entry.generated_bytes:
        available_ms = bytes_to_ms(entry.generated_bytes)
        return ClientEventError(
            "invalid_value",
            f"Audio content of {available_ms}ms is already shorter than {audio_end_ms}ms",
            "audio_end_ms",
        )
    return None


def _reply_to(source: ConversationEntry | None) -> tuple[bytes, str]:
    """What the echo model says to the latest user item: its audio, or a tone for text."""
    if source is None:
        return TEXT_REPLY_PCM, "echo of nothing"
    if source.content_type == "input_audio":
        return source.audio, reply_transcript(len(source.audio))
    return TEXT_REPLY_PCM, text_reply_transcript(source.text or "")


def _assistant_item(item_id: str, status: str, transcript: str | None) -> Event:
    content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _usage(response: ActiveResponse) -> Event:
    input_audio = bytes_to_ms(response.source_bytes) // 100
    output_audio = bytes_to_ms(response.sent_bytes) // 50
    output_text = response.sent_words
    return {
        "total_tokens": input_audio + output_audio + output_text,
        "input_tokens": input_audio,
        "output_tokens": output_audio + output_text,
        "input_token_details": {
            "text_tokens": 0,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


# ---------------------------------------------------------------------------------------
# The I/O layer: sockets, pacing, fault injection
# ---------------------------------------------------------------------------------------

# OpenAI accepts large events (a long append); 16 MiB is well above anything we send.
MAX_MESSAGE_BYTES = 16 * 2**20


class _SessionConnection:
    """One client socket driving one ``RealtimeServerSession``."""

    def __init__(
        self,
        websocket: ServerConnection,
        core: RealtimeServerSession,
        pacing: Pacing,
        max_session_seconds: float | None = None,
    ) -> None:
        self.websocket = websocket
        self.core = core
        self._pacing = pacing
        self._max_session_seconds = max_session_seconds
        # One sender at a time, so events leave in the order the core produced them.
        self._send_lock = asyncio.Lock()
        self._streamers: set[asyncio.Task[None]] = set()
        self._streaming_id: str | None = None
        self._deltas_until_drop: int | None = None
        self._drop_close_code: int | None = None

    async def run(self, refusal: tuple[str, str] | None) -> None:
        record = self.core.record
        expiry: asyncio.Task[None] | None = None
        try:
            if refusal is not None:
                await self._refuse(*refusal)
                return
            self.core.open()
            await self._flush()
            if self._max_session_seconds is not None:
                expiry = asyncio.create_task(self._expire_after(self._max_session_seconds))
            async for message in self.websocket:
                if isinstance(message, str):
                    self.core.receive_text(message)
                else:
                    self.core.receive_binary(message)
                self._follow_response()
                await self._flush()
                # Let a response stream while input floods in, as OpenAI generates
                # concurrently with what it hears.
                await asyncio.sleep(0)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            for streamer in self._streamers:
                streamer.cancel()
            record.closed = True
            record.close_code = self.websocket.close_code

    async def _expire_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        for streamer in self._streamers:
            streamer.cancel()  # nothing more of a reply follows the error
        message = self.core.expire()
        try:
            await self._flush()
            await self.websocket.close(1001, message)
        except ConnectionClosed:
            pass

    async def _refuse(self, code: str, message: str) -> None:
        # As the API does for a bad handshake: a 101, one error, then close 4000.
        self.core.fail_handshake(code, message)
        await self._flush()
        await self.websocket.close(4000, f"invalid_request_error.{code}")

    def _follow_response(self) -> None:
        response_id = self.core.streaming_response_id
        if response_id is None or response_id == self._streaming_id:
            return
        self._streaming_id = response_id
        streamer = asyncio.create_task(self._stream(response_id))
        self._streamers.add(streamer)
        streamer.add_done_callback(self._streamers.discard)

    async def _stream(self, response_id: str) -> None:
        """Send one response step by step, paced faster than real time."""
        loop = asyncio.get_running_loop()
        try:
            if self._pacing.think_delay_s:
                await asyncio.sleep(self._pacing.think_delay_s)
            started = loop.time()
            audio_seconds = 0.0
            while (carried := self.core.response_step(response_id)) is not None:
                await self._flush()
                audio_seconds += carried / BYTES_PER_SECOND
                due = started + audio_seconds / self._pacing.speed
                await asyncio.sleep(max(0.0, due - loop.time()))
            await self._flush()
        except ConnectionClosed:
            pass

    async def _flush(self) -> None:
        async with self._send_lock:
            for event in self.core.events_to_send():
                await self.websocket.send(orjson.dumps(event).decode())
                if self._deltas_until_drop is not None and event["type"] == rt.OUTPUT_AUDIO_DELTA:
                    self._deltas_until_drop -= 1
                    if self._deltas_until_drop <= 0:
                        await self._drop_now()
                        return

    async def drop(self, *, after_audio_deltas: int, close_code: int | None) -> None:
        self._drop_close_code = close_code
        if after_audio_deltas <= 0:
            await self._drop_now()
        else:
            self._deltas_until_drop = after_audio_deltas

    async def _drop_now(self) -> None:
        self._deltas_until_drop = None
        if self._drop_close_code is None:
            self.websocket.transport.abort()  # like a network failure: no close frame
        else:
            await self.websocket.close(self._drop_close_code, "dropped by the emulator")


class RealtimeEmulator:
    """The OpenAI Realtime GA API at ``ws://host:port/v1/realtime?model=...``.

    Any bearer token (or none) is accepted; handshake headers are recorded in
    ``sessions[i].headers``. Fault injection: ``drop`` a session's socket (now, or after
    some more audio deltas, i.e. mid-response), ``refuse_connections`` to answer new
    handshakes with ``refusal_status``, and ``max_session_seconds`` to end every session
    that long after it opened, as OpenAI does at 60 minutes.
    """

    def __init__(
        self,
        *,
        pacing: Pacing = Pacing(),
        threshold_rms: int = DEFAULT_THRESHOLD_RMS,
        keep_audio_in_records: bool = True,
        reject_beta_header: bool = False,
        compression: str | None = "deflate",
        seed: int = 0,
        max_session_seconds: float | None = None,
    ) -> None:
        if max_session_seconds is not None and max_session_seconds <= 0:
            raise ValueError("max_session_seconds must be positive (or None for no limit)")
        self.pacing = pacing
        self.max_session_seconds = max_session_seconds
        self.threshold_rms = threshold_rms
        self.keep_audio_in_records = keep_audio_in_records
        # The real API closes 4000 on ``OpenAI-Beta: realtime=v1``; off by default so a
        # test can connect and then assert on ``sessions[i].beta_header``.
        self.reject_beta_header = reject_beta_header
        self.refuse_connections = False
        self.refusal_status = 503
        self.sessions: list[SessionRecord] = []
        self._compression = compression
        self._seed = seed
        self._server: Server | None = None
        self._connections: dict[int, _SessionConnection] = {}
        self._url: str | None = None

    @property
    def url(self) -> str:
        """The base URL (``ws://127.0.0.1:PORT/v1/realtime``); set by ``start``."""
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    @property
    def open_sessions(self) -> int:
        """Sessions whose socket is open now (a leak check: none after the calls end)."""
        return len(self._connections)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (``port=0``: any free port) and return the base URL."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._screen_handshake,
            compression=self._compression,
            max_size=MAX_MESSAGE_BYTES,
        )
        bound_port = self._server.sockets[0].getsockname()[1]
        url_host = f"[{host}]" if ":" in host else host
        self._url = f"ws://{url_host}:{bound_port}{PATH}"
        return self._url

    async def stop(self) -> None:
        """Close every session (1001) and stop listening."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> RealtimeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def drop(
        self,
        session: int | SessionRecord,
        *,
        after_audio_deltas: int = 0,
        close_code: int | None = None,
    ) -> bool:
        """Drop a session's socket: abruptly (no close frame) unless ``close_code``.

        With ``after_audio_deltas=n`` the drop happens right after the n-th audio delta
        sent from now on, i.e. in the middle of a response. False if already closed.
        """
        index = session if isinstance(session, int) else session.index
        connection = self._connections.get(index)
        if connection is None:
            return False
        await connection.drop(after_audio_deltas=after_audio_deltas, close_code=close_code)
        return True

    async def wait_for_sessions(self, count: int, timeout: float = 5.0) -> list[SessionRecord]:
        """Wait until at least ``count`` sessions have connected."""
        async with asyncio.timeout(timeout):
            while len(self.sessions) < count:
                await asyncio.sleep(0.005)
        return self.sessions

    def _screen_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_connections:
            return connection.respond(self.refusal_status, "Refused by the emulator.\n")
        if urlsplit(request.path).path != PATH:
            return connection.respond(404, "Not found.\n")
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        request = websocket.request
        assert request is not None  # set once the handshake succeeded
        model = parse_qs(urlsplit(request.path).query).get("model", [None])[0]
        record = SessionRecord(
            index=len(self.sessions),
            model=model,
            path=request.path,
            headers=list(request.headers.raw_items()),
        )
        self.sessions.append(record)
        core = RealtimeServerSession(
            record,
            pacing=self.pacing,
            threshold_rms=self.threshold_rms,
            rng=random.Random(f"{self._seed}:{record.index}"),
            now=time.time(),
            keep_audio_in_records=self.keep_audio_in_records,
            lifetime_s=self.max_session_seconds or _SESSION_LIFETIME_S,
        )
        connection = _SessionConnection(websocket, core, self.pacing, self.max_session_seconds)
        self._connections[record.index] = connection
        try:
            await connection.run(self._handshake_refusal(record))
        finally:
            del self._connections[record.index]

    def _handshake_refusal(self, record: SessionRecord) -> tuple[str, str] | None:
        if not record.model:
            return (
                "missing_model",
                "You must provide a model parameter, for example "
                "wss://api.openai.com/v1/realtime?model=gpt-realtime",
            )
        if self.reject_beta_header and record.beta_header is not None:
            return (
                "beta_api_shape_disabled",
                "The Realtime API beta shape is disabled; remove the OpenAI-Beta header.",
            )
        return None


# ---------------------------------------------------------------------------------------
# python -m emulators.realtime
# ---------------------------------------------------------------------------------------


_DEFAULT_PACING = Pacing()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulators.realtime",
        description="An OpenAI Realtime GA server whose model echoes each user turn.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--speed",
        type=float,
        default=_DEFAULT_PACING.speed,
        help="seconds of audio streamed per second (default %(default)s)",
    )
    parser.add_argument(
        "--think-ms", type=int, default=0, help="pause before a response's first audio"
    )
    parser.add_argument("--min-delta-ms", type=int, default=_DEFAULT_PACING.min_delta_ms)
    parser.add_argument("--max-delta-ms", type=int, default=_DEFAULT_PACING.max_delta_ms)
    parser.add_argument(
        "--threshold-rms",
        type=int,
        default=DEFAULT_THRESHOLD_RMS,
        help="RMS (PCM16 units) above which a 10 ms frame is speech",
    )
    return parser.parse_args(argv)


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    pacing = Pacing(
        min_delta_ms=args.min_delta_ms,
        max_delta_ms=args.max_delta_ms,
        speed=args.speed,
        think_delay_s=args.think_ms / 1000,
    )
    emulator = RealtimeEmulator(pacing=pacing, threshold_rms=args.threshold_rms)
    url = await emulator.start(args.host, args.port)
    print(f"Realtime emulator listening on {url}", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the emulator until Ctrl-C or SIGTERM."""
    asyncio.run(_serve_until_signalled(_parse_args(argv)))


if __name__ == "__main__":
    main()
