// window.__voiceAgentTest: read-only numbers for the browser tests. It holds no secrets and
// changes nothing; the playback tap it reads is only filled when the page has ?test_tap=1.

export function installTestHook(currentCall) {
  window.__voiceAgentTest = {
    /** A JSON-friendly picture of the current (or last) call. */
    snapshot() {
      const call = currentCall();
      if (!call) return { state: "idle" };
      return {
        state: call.state,
        muted: call.muted,
        contextRate: call.context?.sampleRate ?? null,
        microphone: call.microphone?.settings() ?? null,
        microphoneLive: call.microphone?.live ?? false,
        counters: structuredClone(call.counters),
        uplinkMs: call.uplinkClock.sentMs,
        latenciesMs: [...call.turnLatency.samples],
        lastFlush: call.lastFlush,
        tappedFrames: (call.speaker?.tapped ?? []).reduce((n, batch) => n + batch.length, 0),
      };
    },

    /** Every sample the playback node output so far: Float32 little-endian, base64. */
    tapBase64() {
      const batches = currentCall()?.speaker?.tapped ?? [];
      const total = batches.reduce((n, batch) => n + batch.length, 0);
      const bytes = new Uint8Array(total * 4);
      const view = new DataView(bytes.buffer);
      let offset = 0;
      for (const batch of batches) {
        for (const sample of batch) {
          view.setFloat32(offset, sample, true);
          offset += 4;
        }
      }
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x2000) {
        binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x2000));
      }
      return btoa(binary);
    },
  };
}
