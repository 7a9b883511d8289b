// The agent's voice on the audio thread: a queue of 24 kHz chunks played at the context's rate.
//
// Chunks arrive as Float32 samples tagged with the model's item id. Each output sample reads
// the queue at a fractional position that advances by 24000 / sampleRate, interpolating
// linearly between neighbouring input samples (across chunk boundaries too). At 48 kHz every
// other output sample is an input sample exactly.
//
// Messages from the page:
//   {type: "enqueue", itemId, samples}  append a chunk
//   {type: "flush", id, itemId}         drop everything queued now (barge-in) and reply
//                                       {type: "flushed", id, playedSamples, atFrame}: how many
//                                       24 kHz samples of `itemId` were played, and the output
//                                       frame from which the node is silent.
// Messages to the page: {type: "playing", playing} on changes, and, when the page asked for a
// tap (tests: the browser is muted), {type: "tap", samples} with every output sample in order.

const WIRE_RATE_HZ = 24000;
const TAP_BATCH_FRAMES = 1024; // ~23 ms: few messages, yet a prompt view of the output
const REMEMBERED_ITEMS = 16;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.step = WIRE_RATE_HZ / sampleRate;
    this.queue = []; // [{itemId, samples}]
    this.position = 0; // fractional read position in queue[0].samples
    this.playedByItem = new Map(); // itemId -> 24 kHz samples of finished chunks
    this.framesOut = 0;
    this.playing = false;
    this.tap = options.processorOptions.tap ? new Float32Array(TAP_BATCH_FRAMES) : null;
    this.tapFilled = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "enqueue") {
      this.queue.push({ itemId: message.itemId, samples: message.samples });
    } else if (message.type === "flush") {
      const playedSamples = this.playedSamplesOf(message.itemId);
      this.queue = [];
      this.position = 0;
      this.port.postMessage({
        type: "flushed", id: message.id, playedSamples, atFrame: this.framesOut,
      });
    }
  }

  playedSamplesOf(itemId) {
    let played = this.playedByItem.get(itemId) || 0;
    const head = this.queue[0];
    if (head && head.itemId === itemId) {
      played += Math.min(Math.floor(this.position), head.samples.length);
    }
    return played;
  }

  finishHead() {
    const head = this.queue.shift();
    this.position -= head.samples.length;
    const played = (this.playedByItem.get(head.itemId) || 0) + head.samples.length;
    this.playedByItem.set(head.itemId, played);
    if (this.playedByItem.size > REMEMBERED_ITEMS) {
      this.playedByItem.delete(this.playedByItem.keys().next().value);
    }
  }

  nextSample() {
    while (this.queue.length && this.position >= this.queue[0].samples.length) this.finishHead();
    if (!this.queue.length) {
      this.position = 0;
      return 0;
    }
    const samples = this.queue[0].samples;
    const i = Math.floor(this.position);
    const frac = this.position - i;
    const a = samples[i];
    let b = a;
    if (frac !== 0) {
      if (i + 1 < samples.length) b = samples[i + 1];
      else if (this.queue.length > 1) b = this.queue[1].samples[0];
    }
    this.position += this.step;
    return a + (b - a) * frac;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) out[i] = this.nextSample();
    this.framesOut += out.length;
    this.tapOutput(out);
    const playing = this.queue.length > 0;
    if (playing !== this.playing) {
      this.playing = playing;
      this.port.postMessage({ type: "playing", playing });
    }
    return true;
  }

  tapOutput(out) {
    if (!this.tap) return;
    for (let i = 0; i < out.length; i++) {
      this.tap[this.tapFilled++] = out[i];
      if (this.tapFilled === this.tap.length) {
        this.port.postMessage({ type: "tap", samples: this.tap }, [this.tap.buffer]);
        this.tap = new Float32Array(TAP_BATCH_FRAMES);
        this.tapFilled = 0;
      }
    }
  }
}

registerProcessor("playback", PlaybackProcessor);
