// Microphone capture on the audio thread: the context's real rate -> 24 kHz PCM16 frames.
//
// The AudioContext runs at whatever the hardware wants (44.1 or 48 kHz). We never ask for a
// 24 kHz context: Firefox refuses to connect a 24 kHz context to a 48 kHz microphone. So the
// conversion to the wire rate (wire/audio.py) happens here, in two steps:
//   1. a windowed-sinc low-pass FIR at 0.45 x 24 kHz, so nothing above the new Nyquist
//      frequency folds back into the band (skipped when the context is not faster than 24 kHz);
//   2. linear interpolation at fractional read positions that advance by fromRate / 24000 per
//      output sample, carried across render quanta, so 44.1 kHz works as well as 48 kHz.
// Then each sample is clipped to PCM16 and gathered into frames of `frameSamples` samples,
// which are posted (transferred, not copied) to the page together with their RMS level.

const WIRE_RATE_HZ = 24000;
const FILTER_TAPS = 63; // odd: a whole-sample delay (31 samples, ~0.7 ms at 44.1 kHz)

/** Blackman-windowed sinc low-pass taps, normalised to unity gain at DC. */
function lowPassTaps(cutoffHz, rateHz, count) {
  const taps = new Float32Array(count);
  const middle = (count - 1) / 2;
  const fc = cutoffHz / rateHz; // cycles per sample
  let sum = 0;
  for (let n = 0; n < count; n++) {
    const x = n - middle;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const window =
      0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (count - 1)) +
      0.08 * Math.cos((4 * Math.PI * n) / (count - 1));
    taps[n] = sinc * window;
    sum += taps[n];
  }
  for (let n = 0; n < count; n++) taps[n] /= sum;
  return taps;
}

/** Streaming sample-rate converter; keeps its state between blocks. */
class Resampler {
  constructor(fromRate, toRate) {
    this.step = fromRate / toRate; // input samples per output sample
    this.taps = this.step > 1
      ? lowPassTaps(0.45 * toRate, fromRate, FILTER_TAPS)
      : Float32Array.of(1); // upsampling or equal rates: nothing to remove
    this.history = new Float32Array(this.taps.length - 1); // last raw inputs of the previous block
    this.previous = 0; // last filtered sample of the previous block (index -1)
    this.position = 0; // where the next output falls, in input samples from this block's start
    this.allocate(128);
  }

  allocate(blockLength) {
    this.raw = new Float32Array(this.history.length + blockLength);
    this.filtered = new Float32Array(blockLength);
    this.output = new Float32Array(Math.ceil(blockLength / this.step) + 2);
  }

  /** Converts one block; returns a view of the output, valid until the next call. */
  process(block) {
    const length = block.length;
    if (length > this.filtered.length) this.allocate(length);
    const { raw, filtered, taps, history } = this;
    raw.set(history);
    raw.set(block, history.length);
    for (let i = 0; i < length; i++) {
      let acc = 0;
      for (let k = 0; k < taps.length; k++) acc += taps[k] * raw[i + k];
      filtered[i] = acc;
    }
    history.set(raw.subarray(length, length + history.length));

    let produced = 0;
    let t = this.position;
    while (t <= length - 1) {
      const i = Math.floor(t);
      const frac = t - i;
      const a = i < 0 ? this.previous : filtered[i];
      const b = frac === 0 ? a : filtered[i + 1];
      this.output[produced++] = a + (b - a) * frac;
      t += this.step;
    }
    this.position = t - length;
    this.previous = filtered[length - 1];
    return this.output.subarray(0, produced);
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.frameSamples = options.processorOptions.frameSamples;
    this.resampler = new Resampler(sampleRate, WIRE_RATE_HZ);
    this.startFrame();
  }

  startFrame() {
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumOfSquares = 0;
  }

  process(inputs) {
    // The node is set to explicit mono, so channel 0 is the browser's downmix of the mic.
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true; // no microphone connected (yet)
    for (const value of this.resampler.process(channel)) {
      const clipped = value > 1 ? 1 : value < -1 ? -1 : value;
      this.frame[this.filled++] = Math.round(clipped * 32767);
      this.sumOfSquares += clipped * clipped;
      if (this.filled === this.frameSamples) {
        const level = Math.sqrt(this.sumOfSquares / this.frameSamples);
        this.port.postMessage({ pcm: this.frame, level }, [this.frame.buffer]);
        this.startFrame();
      }
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
