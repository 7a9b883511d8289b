// The agent's side of a call: decoded 24 kHz chunks -> playback worklet -> speakers.

import { WIRE_RATE_HZ } from "./protocol.js";

export class Speaker {
  /**
   * `onPlaying(playing)` reports when the queue starts or stops sounding. With `tap` on, the
   * worklet sends back every sample it outputs (kept in `tapped`), for tests in a muted browser.
   */
  constructor(context, { tap = false, onPlaying = () => {} } = {}) {
    this.node = new AudioWorkletNode(context, "playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { tap },
    });
    this.node.connect(context.destination);
    this.tapped = [];
    this.pendingFlushes = new Map();
    this.nextFlushId = 0;
    this.node.port.onmessage = ({ data }) => {
      if (data.type === "playing") onPlaying(data.playing);
      else if (data.type === "tap") this.tapped.push(data.samples);
      else if (data.type === "flushed") {
        this.pendingFlushes.get(data.id)?.(data);
        this.pendingFlushes.delete(data.id);
      }
    };
  }

  /** Queues `samples` (Float32, 24 kHz) of the model's item `itemId`. */
  enqueue(itemId, samples) {
    this.node.port.postMessage({ type: "enqueue", itemId, samples }, [samples.buffer]);
  }

  /**
   * Silences the queue at once. Resolves to `{playedSamples, playedMs, atFrame}`: how much of
   * `itemId` was played (24 kHz samples; whole ms), and the output frame from which the node
   * is silent.
   */
  flush(itemId) {
    const id = this.nextFlushId++;
    return new Promise((resolve) => {
      this.pendingFlushes.set(id, ({ playedSamples, atFrame }) =>
        resolve({
          playedSamples,
          playedMs: Math.floor((playedSamples * 1000) / WIRE_RATE_HZ),
          atFrame,
        }),
      );
      this.node.port.postMessage({ type: "flush", id, itemId });
    });
  }

  close() {
    this.node.port.onmessage = null;
    this.node.disconnect();
    const nothing = { playedSamples: 0, playedMs: 0, atFrame: -1 };
    for (const resolve of this.pendingFlushes.values()) resolve(nothing);
  }
}
