"""The one audio format of the whole path: PCM16 little-endian, mono, 24 kHz."""

from __future__ import annotations

SAMPLE_RATE_HZ = 24_000
SAMPLE_WIDTH_BYTES = 2
CHANNELS = 1
BYTES_PER_SECOND = SAMPLE_RATE_HZ * SAMPLE_WIDTH_BYTES * CHANNELS
BYTES_PER_MS = BYTES_PER_SECOND // 1000  # 48: every millisecond is a whole number of bytes


def bytes_to_ms(byte_count: int) -> int:
    """Whole milliseconds of audio in ``byte_count`` bytes (rounded down)."""
    return byte_count // BYTES_PER_MS


def ms_to_bytes(ms: int) -> int:
    """Bytes of PCM for ``ms`` milliseconds."""
    return ms * BYTES_PER_MS
