"""The state of a call in progress, as one worker hands it to another.

When a worker drains (a deploy, a scale-in), its calls stay connected: the caller's
WebSocket belongs to API Gateway, not to the worker. The worker saves each call's
``CallHandover`` on the call's session row; the worker that next gets a frame for the call
reads it back and continues where the first left off (the conversation, the uplink
sequence, the audio the model had not yet turned into a turn, the call's age).

Defined once, here, with the standard library only: the worker writes it and any reader of
the session row (a Lambda handler, a tool) can decode it.

On the row it is one Binary attribute, ``handover``::

    version (1 byte) | header length (4 bytes, big-endian) | JSON header | raw PCM

The header holds everything but the audio; the audio (held uplink frames, then the replay
audio) follows raw, its lengths in the header, so 5 s of audio costs 240 KB and not the
320 KB it would as base64. DynamoDB items are capped at 400 KB: an encoding stays under
``MAX_HANDOVER_BYTES`` by dropping the oldest history turns first, then the oldest replay
audio (see ``CallHandover.fitted``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from wire.audio import BYTES_PER_MS

# The session-row attribute that holds the encoded handover.
ATTR_HANDOVER = "handover"
FORMAT_VERSION = 1
# Under DynamoDB's 400 KB item limit with room for the row's other attributes.
MAX_HANDOVER_BYTES = 350_000

_HEADER_LENGTH_BYTES = 4
_PREFIX_BYTES = 1 + _HEADER_LENGTH_BYTES
# Replay audio is dropped in whole 10 ms frames, the unit VADs classify audio in, so what
# is left starts on the same frame grid as the stream it came from.
_AUDIO_DROP_UNIT = 10 * BYTES_PER_MS


class HandoverError(ValueError):
    """A stored handover that cannot be decoded (corrupt, truncated, or a newer version)."""


@dataclass(frozen=True, slots=True)
class CallHandover:
    """A call's state between two workers. See the module docstring."""

    # The conversation as text, (role, text) per finished turn, oldest first.
    history: tuple[tuple[str, str], ...]
    # The uplink sequencer: the next seq expected, and early frames held for a gap.
    next_seq: int
    held: tuple[tuple[int, bytes], ...]
    # Uplink PCM the model had not yet ended a turn on: the next model session hears it.
    replay_audio: bytes
    # A reply was being generated (or requested) when the state was saved: the next model
    # session is asked for one again.
    response_interrupted: bool
    # How long the call has lasted, so the call-duration limit keeps counting.
    call_elapsed_ms: int
    # Epoch ms when saved; a reader may ignore a handover older than the call could be.
    saved_at_ms: int
    # PCM forwarded to the model since the call began: the origin of the positions the
    # caller is told (speech_stopped) stays the start of the call's uplink.
    uplink_bytes: int = 0
    # The caller was sent ``ready``; the next worker does not send it again.
    client_ready: bool = True

    # --- DynamoDB ---------------------------------------------------------------------------

    def to_attributes(self) -> dict[str, dict[str, bytes]]:
        """Low-level DynamoDB attribute values to SET on the session row."""
        return {ATTR_HANDOVER: {"B": self.fitted().to_bytes()}}

    @classmethod
    def from_attributes(cls, item: Mapping[str, Any]) -> CallHandover | None:
        """The handover on a session row (low-level attribute values), or None if it has
        none. ``B`` may be bytes (boto3) or base64 text (DynamoDB JSON, stream records)."""
        attribute = item.get(ATTR_HANDOVER)
        if attribute is None:
            return None
        if not isinstance(attribute, Mapping) or "B" not in attribute:
            raise HandoverError(f"attribute {ATTR_HANDOVER!r} is not a Binary value")
        value = attribute["B"]
        if isinstance(value, str):
            try:
                value = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise HandoverError(f"attribute {ATTR_HANDOVER!r} is not valid base64") from exc
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        if not isinstance(value, bytes):
            raise HandoverError(f"attribute {ATTR_HANDOVER!r} holds {type(value).__name__}")
        return cls.from_bytes(value)

    # --- encoding ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The encoding, whatever its size (``fitted`` first to respect the cap)."""
        header = self._header_bytes()
        blob = b"".join(pcm for _, pcm in self.held) + self.replay_audio
        return (
            bytes([FORMAT_VERSION])
            + len(header).to_bytes(_HEADER_LENGTH_BYTES, "big")
            + header
            + blob
        )

    def encoded_size(self) -> int:
        audio = sum(len(pcm) for _, pcm in self.held) + len(self.replay_audio)
        return _PREFIX_BYTES + len(self._header_bytes()) + audio

    def fitted(self, limit: int = MAX_HANDOVER_BYTES) -> CallHandover:
        """This handover, made to encode in at most ``limit`` bytes: the oldest history
        turns go first (the newest matter most to the next reply), then the oldest replay
        audio (an utterance loses its start rather than the whole call its context)."""
        fitted = self
        if fitted.encoded_size() <= limit:
            return fitted
        # Fewest turns dropped that fit, found by bisection (each try encodes the header).
        low, high = 0, len(fitted.history)
        while low < high:
            middle = (low + high) // 2
            if replace(fitted, history=fitted.history[middle:]).encoded_size() <= limit:
                high = middle
            else:
                low = middle + 1
        fitted = replace(fitted, history=fitted.history[low:])
        excess = fitted.encoded_size() - limit
        if excess > 0:
            drop = -(-excess // _AUDIO_DROP_UNIT) * _AUDIO_DROP_UNIT
            fitted = replace(fitted, replay_audio=fitted.replay_audio[drop:])
        if fitted.encoded_size() > limit:
            # Only held frames are left, at most 64 of at most 16 KB: not a normal drain.
            raise HandoverError(
                f"a handover with {len(fitted.held)} held uplink frames cannot fit {limit} bytes"
            )
        return fitted

    @classmethod
    def from_bytes(cls, data: bytes) -> CallHandover:
        """Decode ``to_bytes``'s output; ``HandoverError`` if it is not one."""
        if len(data) < _PREFIX_BYTES:
            raise HandoverError(f"a handover of {len(data)} bytes is too short")
        if data[0] != FORMAT_VERSION:
            raise HandoverError(f"handover format version {data[0]} is not {FORMAT_VERSION}")
        header_length = int.from_bytes(data[1:_PREFIX_BYTES], "big")
        header_end = _PREFIX_BYTES + header_length
        if header_end > len(data):
            raise HandoverError("the handover's header runs past its end")
        try:
            header = json.loads(data[_PREFIX_BYTES:header_end].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise HandoverError("the handover's header is not JSON") from exc
        return cls._from_header(header, data[header_end:])

    def _header_bytes(self) -> bytes:
        header = {
            "history": [list(turn) for turn in self.history],
            "next_seq": self.next_seq,
            "held": [[seq, len(pcm)] for seq, pcm in self.held],
            "replay_bytes": len(self.replay_audio),
            "response_interrupted": self.response_interrupted,
            "call_elapsed_ms": self.call_elapsed_ms,
            "saved_at_ms": self.saved_at_ms,
            "uplink_bytes": self.uplink_bytes,
            "client_ready": self.client_ready,
        }
        return json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def _from_header(cls, header: Any, blob: bytes) -> CallHandover:
        if not isinstance(header, dict):
            raise HandoverError("the handover's header is not an object")
        history_field = _field(header, "history", list)
        history = []
        for turn in history_field:
            if not (
                isinstance(turn, list)
                and len(turn) == 2
                and all(isinstance(part, str) for part in turn)
            ):
                raise HandoverError("a history turn is not a [role, text] pair")
            history.append((turn[0], turn[1]))
        held_lengths = []
        for entry in _field(header, "held", list):
            if not (
                isinstance(entry, list) and len(entry) == 2 and all(_is_count(v) for v in entry)
            ):
                raise HandoverError("a held frame is not a [seq, length] pair")
            held_lengths.append((entry[0], entry[1]))
        replay_bytes = _count(header, "replay_bytes")
        if sum(length for _, length in held_lengths) + replay_bytes != len(blob):
            raise HandoverError("the handover's audio does not match the lengths in its header")
        held = []
        offset = 0
        for seq, length in held_lengths:
            held.append((seq, blob[offset : offset + length]))
            offset += length
        return cls(
            history=tuple(history),
            next_seq=_count(header, "next_seq"),
            held=tuple(held),
            replay_audio=blob[offset:],
            response_interrupted=_field(header, "response_interrupted", bool),
            call_elapsed_ms=_count(header, "call_elapsed_ms"),
            saved_at_ms=_count(header, "saved_at_ms"),
            uplink_bytes=_count(header, "uplink_bytes"),
            client_ready=_field(header, "client_ready", bool),
        )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(header: dict[str, Any], key: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or not _is_count(value):
        raise HandoverError(f"handover field {key!r} is not a non-negative integer")
    return value


def _field(header: dict[str, Any], key: str, kind: type) -> Any:
    value = header.get(key)
    if not isinstance(value, kind):
        raise HandoverError(f"handover field {key!r} is missing or not a {kind.__name__}")
    return value
