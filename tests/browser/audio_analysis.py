"""Small signal measurements for the browser tests (pure Python: no numpy in the project)."""

from __future__ import annotations

import math
import struct
import wave
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MicrophoneSignal:
    """What the fake microphone plays: silence, a speech-band tone, silence, a tone above
    12 kHz (which must not reach the 24 kHz uplink, not even folded down), silence."""

    rate_hz: int = 48_000
    amplitude: float = 0.5  # of full scale, both tones
    lead_s: float = 0.6
    tone_hz: float = 1_000.0
    tone_s: float = 1.0
    gap_s: float = 0.3
    high_tone_hz: float = 15_000.0  # above the uplink's Nyquist frequency of 12 kHz
    high_tone_s: float = 0.5
    tail_s: float = 0.5

    @property
    def tone_rms(self) -> float:
        return self.amplitude / math.sqrt(2)

    @property
    def duration_s(self) -> float:
        return self.lead_s + self.tone_s + self.gap_s + self.high_tone_s + self.tail_s

    def samples(self) -> array:
        pcm = array("h")
        for frequency, seconds in [
            (0.0, self.lead_s),
            (self.tone_hz, self.tone_s),
            (0.0, self.gap_s),
            (self.high_tone_hz, self.high_tone_s),
            (0.0, self.tail_s),
        ]:
            peak = self.amplitude * 32767 if frequency else 0.0
            step = 2 * math.pi * frequency / self.rate_hz
            pcm.extend(round(peak * math.sin(step * i)) for i in range(int(seconds * self.rate_hz)))
        return pcm


def write_wav(path: Path, samples: Sequence[int], rate_hz: int) -> Path:
    """A mono 16-bit PCM WAV, the only kind Chromium's fake audio capture reads."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def tone_pcm16(
    frequency_hz: float, seconds: float, amplitude: float, rate_hz: int = 24_000
) -> bytes:
    """PCM16 LE of a sine tone that starts at its peak (a non-zero first sample)."""
    peak = amplitude * 32767
    step = 2 * math.pi * frequency_hz / rate_hz
    count = round(seconds * rate_hz)
    return struct.pack(f"<{count}h", *(round(peak * math.cos(step * i)) for i in range(count)))


def pcm16_to_floats(pcm: bytes) -> list[float]:
    return [s / 32768 for s in struct.unpack(f"<{len(pcm) // 2}h", pcm)]


def float32_le(data: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(data) // 4}f", data))


def active_span(samples: Sequence[float], threshold: float) -> tuple[int, int] | None:
    """Index of the first sample above ``threshold`` in magnitude, and one past the last."""
    loud = [i for i, s in enumerate(samples) if abs(s) > threshold]
    return (loud[0], loud[-1] + 1) if loud else None


def rms(samples: Sequence[float]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


def zero_crossing_frequency(samples: Sequence[float], rate_hz: float) -> float:
    """The frequency of a clean tone from its sign changes (two per cycle)."""
    crossings = sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / rate_hz)


def worst_tone_purity(
    samples: Sequence[float], rate_hz: float, frequency_hz: float, window_s: float = 0.02
) -> float:
    """The lowest, over short windows, of the share of power that is the tone itself.

    A least-squares fit of a sine and cosine at ``frequency_hz`` per window: a click, a dropped
    or repeated block, or aliasing shows up as a window whose power is not all tone.
    """
    size = int(window_s * rate_hz)
    step = 2 * math.pi * frequency_hz / rate_hz
    worst = 1.0
    for start in range(0, len(samples) - size + 1, size):
        window = samples[start : start + size]
        c = sum(s * math.cos(step * (start + i)) for i, s in enumerate(window)) * 2 / size
        s_ = sum(s * math.sin(step * (start + i)) for i, s in enumerate(window)) * 2 / size
        power = sum(s * s for s in window) / size
        if power > 0:
            worst = min(worst, ((c * c + s_ * s_) / 2) / power)
    return worst


def db(ratio: float) -> float:
    return 20 * math.log10(ratio)
