// End of user speech -> first agent audio, measured on the page's own clock.
//
// The server reports the end of speech as `speech_end_ms`: a position in the uplink audio
// stream, not a time. The page remembers when it captured each frame it sent, so it can say
// when that position was spoken; the latency is the arrival of the first agent audio after
// `speech_stopped` minus that moment.

import { WIRE_RATE_HZ } from "./protocol.js";

const REMEMBERED_FRAMES = 3000; // minutes of frames: far more than a turn can span

export class UplinkClock {
  constructor() {
    this.sentSamples = 0;
    this.frames = []; // [{endMs, capturedAt}] in sending order
  }

  /**
   * Records a frame of `samples` samples about to be sent. `capturedAt` (performance.now())
   * is when its last sample reached the page: the worklet posts a frame the moment it fills.
   */
  recordFrame(samples, capturedAt) {
    this.sentSamples += samples;
    this.frames.push({ endMs: (this.sentSamples * 1000) / WIRE_RATE_HZ, capturedAt });
    if (this.frames.length > REMEMBERED_FRAMES) this.frames.splice(0, this.frames.length >> 1);
  }

  get sentMs() {
    return (this.sentSamples * 1000) / WIRE_RATE_HZ;
  }

  /** When the page captured uplink position `uplinkMs`, or null if it is not remembered. */
  captureTimeOf(uplinkMs) {
    // Newest first: `speech_end_ms` is at most a few seconds old.
    for (let i = this.frames.length - 1; i >= 0; i--) {
      const frame = this.frames[i];
      const startMs = i > 0 ? this.frames[i - 1].endMs : 0;
      if (uplinkMs >= startMs && uplinkMs <= frame.endMs) {
        return frame.capturedAt - (frame.endMs - uplinkMs);
      }
    }
    return null;
  }
}

export class TurnLatency {
  constructor() {
    this.endOfSpeechAt = null;
    this.samples = []; // ms, one per turn
  }

  endOfSpeech(capturedAt) {
    this.endOfSpeechAt = capturedAt;
  }

  /** Called for every agent audio event; returns the turn's latency on its first one. */
  agentAudio(arrivedAt) {
    if (this.endOfSpeechAt === null) return null;
    const latency = arrivedAt - this.endOfSpeechAt;
    this.endOfSpeechAt = null;
    this.samples.push(latency);
    return latency;
  }

  get median() {
    if (!this.samples.length) return null;
    const sorted = [...this.samples].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }
}
