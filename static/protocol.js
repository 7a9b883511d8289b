// The page's side of the client protocol. wire/client.py is the single definition of it; this
// file only builds the actions and decodes the audio the page needs, with the same limits.

export const WIRE_RATE_HZ = 24000; // PCM16 little-endian, mono (wire/audio.py)
export const MAX_UPLINK_PCM_BYTES = 16 * 1024;
export const MAX_FRAME_MS = Math.floor(MAX_UPLINK_PCM_BYTES / 2 / (WIRE_RATE_HZ / 1000)); // 341

/** `{"action": "audio"}`: one frame of Int16 samples, as base64 little-endian bytes. */
export function audioAction(samples, seq) {
  const bytes = new Uint8Array(samples.length * 2);
  const view = new DataView(bytes.buffer);
  samples.forEach((sample, i) => view.setInt16(i * 2, sample, true));
  if (bytes.length > MAX_UPLINK_PCM_BYTES) {
    throw new RangeError(`${bytes.length} bytes of PCM exceed ${MAX_UPLINK_PCM_BYTES}`);
  }
  return JSON.stringify({ action: "audio", audio: bytesToBase64(bytes), seq });
}

export function textAction(text) {
  return JSON.stringify({ action: "text", text });
}

/** Tells the server how much of the model's item the listener actually heard. */
export function interruptAction(playedMs, itemId) {
  const message = { action: "interrupt", played_ms: playedMs };
  if (itemId != null) message.item_id = itemId;
  return JSON.stringify(message);
}

/** The samples of a server `audio` event as floats in [-1, 1). */
export function decodeAudio(base64) {
  const bytes = base64ToBytes(base64);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const samples = new Float32Array(bytes.length >> 1);
  for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(i * 2, true) / 32768;
  return samples;
}

/** The WebSocket URL to dial: `wsUrl` with `?token=` added when a token is given. */
export function dialUrl(wsUrl, token) {
  const url = new URL(wsUrl);
  if (url.protocol !== "ws:" && url.protocol !== "wss:") {
    throw new TypeError(`the WebSocket URL must start with ws:// or wss://, not ${url.protocol}//`);
  }
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function bytesToBase64(bytes) {
  let binary = "";
  // Chunks keep String.fromCharCode's argument list short.
  for (let i = 0; i < bytes.length; i += 0x2000) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x2000));
  }
  return btoa(binary);
}

function base64ToBytes(base64) {
  const binary = atob(base64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}
