// The microphone side of a call: getUserMedia -> capture worklet -> 24 kHz PCM16 frames.

/**
 * Opens the microphone and starts the capture worklet on `context`.
 * `onFrame(samples: Int16Array, level: number)` is called for every frame of `frameSamples`
 * samples at 24 kHz; `level` is the frame's RMS in [0, 1].
 * `processing: false` turns noise suppression and automatic gain off (echo cancellation stays
 * on: the agent's voice must not be sent back to it), which keeps test waveforms intact.
 */
export async function openMicrophone(context, { frameSamples, processing, onFrame }) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {
      channelCount: 1,
      echoCancellation: true,
      noiseSuppression: processing,
      autoGainControl: processing,
    },
  });
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "capture", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    channelCount: 1,
    channelCountMode: "explicit", // the browser downmixes a stereo mic for us
    processorOptions: { frameSamples },
  });
  node.port.onmessage = (event) => onFrame(event.data.pcm, event.data.level);
  source.connect(node);
  const [track] = stream.getAudioTracks();
  return {
    /** A disabled track yields silence, so the uplink keeps its clock while muted. */
    setMuted(muted) {
      track.enabled = !muted;
    },
    settings: () => track.getSettings(),
    get live() {
      return track.readyState === "live";
    },
    close() {
      node.port.onmessage = null;
      source.disconnect();
      node.disconnect();
      for (const t of stream.getTracks()) t.stop();
    },
  };
}
