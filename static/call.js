// One call: the WebSocket to the server, the microphone, the speaker, barge-in and latency.
// It knows nothing of the DOM; it reports to a `view` object (see app.js).

import { openMicrophone } from "./microphone.js";
import { Speaker } from "./speaker.js";
import { TurnLatency, UplinkClock } from "./latency.js";
import { WIRE_RATE_HZ, audioAction, decodeAudio, interruptAction, textAction } from "./protocol.js";

const CLOSE_REASONS = {
  1000: "closed normally",
  1001: "the server went away",
  1003: "the server refused a frame",
  1006: "connection refused or lost",
  1008: "refused by the server (policy)",
  1009: "a message was too big",
  1011: "server error",
};

// getUserMedia's failures: the microphone is refused, missing or busy.
const MICROPHONE_ERRORS = new Set([
  "NotAllowedError", "NotFoundError", "NotReadableError", "OverconstrainedError", "SecurityError",
]);

export class VoiceCall {
  /**
   * `settings`: {url, frameMs, processing, sampleRate?, tap}. `view` receives
   * onState(state, detail), onReady(event), onLevel(level), onTranscript(event),
   * onError(code, message), onLatency(ms, turnLatency), onSpeaking(who, active).
   */
  constructor(settings, view) {
    this.settings = settings;
    this.view = view;
    this.state = "idle";
    this.muted = false;
    this.seq = 0;
    this.uplinkClock = new UplinkClock();
    this.turnLatency = new TurnLatency();
    this.lastItemId = null; // the model item whose audio arrived last
    this.interruptedItems = new Set(); // their late audio must not play
    this.receivedSamples = new Map(); // itemId -> 24 kHz samples received
    this.finishedItems = new Set(); // items whose audio_done arrived
    this.lastFlush = null;
    this.readyEvent = null;
    this.counters = {
      framesSent: 0, pcmBytesSent: 0, largestFramePcmBytes: 0,
      audioEvents: 0, pcmBytesReceived: 0, staleAudioDropped: 0, interruptsSent: 0,
      textsSent: 0, events: {},
    };
  }

  /** Starts the call. Call it from a click: browsers start audio only on a user gesture. */
  async start() {
    this.setState("connecting", "Connecting…");
    // Created before any await, so it is still inside the user gesture. Never ask for 24 kHz:
    // Firefox cannot connect a 24 kHz context to a 48 kHz microphone; the worklet resamples.
    const { sampleRate } = this.settings;
    this.context = new AudioContext(sampleRate ? { sampleRate } : {});
    try {
      // Dial first: the server opens the model session on connect, in parallel with our setup.
      this.openSocket();
      const worklet = (name) => this.context.audioWorklet.addModule(new URL(name, import.meta.url));
      await Promise.all([worklet("capture-worklet.js"), worklet("playback-worklet.js")]);
      if (this.state === "idle") return;
      this.speaker = new Speaker(this.context, {
        tap: this.settings.tap,
        onPlaying: (playing) => this.view.onSpeaking("agent", playing),
      });
      this.microphone = await openMicrophone(this.context, {
        frameSamples: Math.round((this.settings.frameMs * WIRE_RATE_HZ) / 1000),
        processing: this.settings.processing,
        onFrame: (samples, level) => this.onMicrophoneFrame(samples, level),
      });
      if (this.state === "idle") return this.microphone.close();
      this.microphone.setMuted(this.muted);
      await this.context.resume();
      this.goLiveIfReady();
    } catch (error) {
      if (this.state === "idle") return; // already ended (e.g. the socket was refused)
      const code = MICROPHONE_ERRORS.has(error.name) ? "microphone" : "setup";
      this.view.onError(code, `${error.name}: ${error.message}`);
      this.end(`could not start (${code})`);
    }
  }

  openSocket() {
    const socket = new WebSocket(this.settings.url);
    this.socket = socket;
    socket.onopen = () => this.goLiveIfReady();
    socket.onmessage = (message) => this.onServerFrame(message.data);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      const reason = event.reason || CLOSE_REASONS[event.code] || "closed";
      if (event.code !== 1000) this.view.onError("connection", `${reason} (code ${event.code})`);
      this.end(`${reason} (code ${event.code})`);
    };
  }

  goLiveIfReady() {
    const socketOpen = this.socket?.readyState === WebSocket.OPEN;
    if (this.state === "connecting" && this.microphone && socketOpen) {
      this.setState("live", "Connected. Waiting for the agent…");
      if (this.readyEvent) this.view.onReady(this.readyEvent);
    }
  }

  /** Ends the call and releases the microphone; safe to call more than once. */
  end(detail = "hung up") {
    if (this.state === "idle") return;
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close(1000, "hung up");
    this.microphone?.close();
    this.speaker?.close();
    this.context?.close();
    this.view.onSpeaking("agent", false);
    this.view.onSpeaking("user", false);
    this.view.onLevel(0);
    this.setState("idle", `Call ended: ${detail}.`);
  }

  setMuted(muted) {
    this.muted = muted;
    this.microphone?.setMuted(muted);
  }

  /** Sends a typed message; false if the call is not connected. */
  sendText(text) {
    const sent = this.send(textAction(text));
    if (sent) this.counters.textsSent++;
    return sent;
  }

  send(message) {
    if (this.socket?.readyState !== WebSocket.OPEN) return false;
    this.socket.send(message);
    return true;
  }

  setState(state, detail) {
    this.state = state;
    this.view.onState(state, detail);
  }

  onMicrophoneFrame(samples, level) {
    this.view.onLevel(this.muted ? 0 : level);
    if (this.state !== "live") return; // the uplink clock starts with the first frame sent
    const message = audioAction(samples, this.seq++);
    this.uplinkClock.recordFrame(samples.length, performance.now());
    this.send(message);
    const bytes = samples.length * 2;
    this.counters.framesSent++;
    this.counters.pcmBytesSent += bytes;
    this.counters.largestFramePcmBytes = Math.max(this.counters.largestFramePcmBytes, bytes);
  }

  onServerFrame(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return this.view.onError("bad_frame", "the server sent a frame that is not JSON");
    }
    const events = this.counters.events;
    events[event.type] = (events[event.type] || 0) + 1;
    switch (event.type) {
      case "ready":
        this.readyEvent = event;
        return this.state === "live" ? this.view.onReady(event) : undefined;
      case "audio":
        return this.onAgentAudio(event);
      case "audio_done":
        this.finishedItems.add(event.item_id);
        return undefined;
      case "speech_started":
        return this.onUserSpeechStarted();
      case "speech_stopped":
        // speech_end_ms: where speech ended, without the VAD's silence window.
        return this.onUserSpeechStopped(event.speech_end_ms ?? event.audio_end_ms);
      case "transcript":
        return this.view.onTranscript(event);
      case "error":
        return this.view.onError(event.code, event.message);
      case "session_ended":
        return this.end(`the server ended the session (${event.reason})`);
      default:
        return undefined; // keepalive, pong, and types added later
    }
  }

  onAgentAudio(event) {
    const itemId = event.item_id ?? null;
    if (itemId !== null && this.interruptedItems.has(itemId)) {
      this.counters.staleAudioDropped++; // sent before the server heard the barge-in
      return;
    }
    const latency = this.turnLatency.agentAudio(performance.now());
    if (latency !== null) this.view.onLatency(latency, this.turnLatency);
    const samples = decodeAudio(event.audio);
    this.counters.audioEvents++;
    this.counters.pcmBytesReceived += samples.length * 2;
    this.lastItemId = itemId;
    this.receivedSamples.set(itemId, (this.receivedSamples.get(itemId) ?? 0) + samples.length);
    this.speaker?.enqueue(itemId, samples);
  }

  /** Barge-in: the user talks over the agent. */
  onUserSpeechStarted() {
    this.view.onSpeaking("user", true);
    this.turnLatency.endOfSpeech(null); // a new turn begins; the old end of speech is moot
    return this.stopAgent();
  }

  /** Silences the agent at once, then tells the server how much of its item was heard. */
  async stopAgent() {
    if (!this.speaker) return;
    const itemId = this.lastItemId;
    const open = itemId !== null && !this.interruptedItems.has(itemId);
    if (open) this.interruptedItems.add(itemId); // before the await: its later audio is stale
    const askedAt = performance.now();
    const { playedMs, playedSamples, atFrame } = await this.speaker.flush(itemId);
    this.lastFlush = { itemId, playedMs, atFrame, delayMs: performance.now() - askedAt };
    // An item that was sent completely and played completely has nothing to truncate.
    const heardAll = this.finishedItems.has(itemId)
      && playedSamples >= (this.receivedSamples.get(itemId) ?? 0);
    if (open && !heardAll && this.send(interruptAction(playedMs, itemId))) {
      this.counters.interruptsSent++;
    }
  }

  onUserSpeechStopped(audioEndMs) {
    this.view.onSpeaking("user", false);
    if (typeof audioEndMs !== "number") return;
    const spokenAt = this.uplinkClock.captureTimeOf(audioEndMs);
    if (spokenAt !== null) this.turnLatency.endOfSpeech(spokenAt);
  }
}
