"""Reading and writing the WAV files the caller and the tests use, in the wire's PCM format."""

from __future__ import annotations

import array
import sys
import wave
from pathlib import Path

from wire.audio import CHANNELS, SAMPLE_RATE_HZ, SAMPLE_WIDTH_BYTES


class WavError(ValueError):
    """The file is not a WAV we can use; the message says why."""


def read_pcm24k(path: str | Path) -> bytes:
    """PCM16 LE mono 24 kHz from a 16-bit PCM WAV of any rate and channel count."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != SAMPLE_WIDTH_BYTES:
        raise WavError(f"{path}: {8 * width}-bit samples; 16-bit PCM is required")
    samples = array.array("h", frames)
    if sys.byteorder == "big":
        samples.byteswap()
    if channels > 1:
        mono = array.array(
            "h",
            (sum(samples[i : i + channels]) // channels for i in range(0, len(samples), channels)),
        )
        samples = mono
    if rate != SAMPLE_RATE_HZ:
        samples = _resample_linear(samples, rate, SAMPLE_RATE_HZ)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes()


def write_pcm24k(path: str | Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(CHANNELS)
        wav.setsampwidth(SAMPLE_WIDTH_BYTES)
        wav.setframerate(SAMPLE_RATE_HZ)
        wav.writeframes(pcm)


def _resample_linear(samples: array.array, src_hz: int, dst_hz: int) -> array.array:
    """Linear interpolation: plenty for speech into a model that resamples anyway."""
    if not samples:
        return samples
    count = int(len(samples) * dst_hz / src_hz)
    step = src_hz / dst_hz
    last = len(samples) - 1
    out = array.array("h", bytes(2 * count))
    for i in range(count):
        pos = i * step
        j = int(pos)
        frac = pos - j
        a = samples[j]
        b = samples[j + 1] if j < last else a
        out[i] = int(a + (b - a) * frac)
    return out
