// The page: settings from the query string, the controls, and the view a call reports to.
//
// Query parameters (all optional):
//   ws=wss://...      WebSocket URL (fills the field)      token=...   sent as ?token= on dial
//   frame_ms=100      uplink frame length, 10..341 ms (341 ms is the 16 KB PCM limit)
//   processing=off    noise suppression and auto gain off (echo cancellation stays on)
//   sample_rate=N     AudioContext rate (tests; normally the device's own rate)
//   test_tap=1        keep every sample the playback node outputs (tests; the browser is muted)

import { VoiceCall } from "./call.js";
import { MAX_FRAME_MS, dialUrl } from "./protocol.js";
import { installTestHook } from "./test-hook.js";

// Each uplink frame is a billed message (and a queue send): 100 ms keeps turn-taking snappy at
// half the cost of 40 ms (docs/cost.md); a frame delays the end of speech by up to its length.
const DEFAULT_FRAME_MS = 100;
const SHOWN_ERRORS = 5;

function readSettings(search) {
  const query = new URLSearchParams(search);
  const frameMs = Number(query.get("frame_ms")) || DEFAULT_FRAME_MS;
  return {
    wsUrl: query.get("ws") || "",
    token: query.get("token") || "",
    frameMs: Math.min(Math.max(Math.round(frameMs), 10), MAX_FRAME_MS),
    processing: query.get("processing") !== "off",
    sampleRate: Number(query.get("sample_rate")) || undefined,
    tap: query.get("test_tap") === "1",
  };
}

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  form: $("connect-form"),
  wsUrl: $("ws-url"),
  token: $("token"),
  connect: $("connect"),
  hangUp: $("hang-up"),
  mute: $("mute"),
  stopAgent: $("stop-agent"),
  level: $("level"),
  levelFill: document.querySelector("#level .meter-fill"),
  userSpeaking: $("user-speaking"),
  agentSpeaking: $("agent-speaking"),
  latency: $("latency"),
  latencyDetail: $("latency-detail"),
  errorsCard: $("errors-card"),
  errors: $("errors"),
  transcript: $("transcript"),
  textForm: $("text-form"),
  text: $("text"),
  sendText: $("send-text"),
};

const settings = readSettings(location.search);
let call = null;

/** What a call reports to; every method only touches the DOM. */
const view = {
  onState(state, detail) {
    const live = state === "live";
    ui.connect.disabled = state !== "idle";
    ui.wsUrl.disabled = ui.token.disabled = state !== "idle";
    ui.hangUp.disabled = state === "idle";
    ui.text.disabled = ui.sendText.disabled = !live;
    document.body.dataset.state = state;
    setStatus(detail);
  },
  onReady(event) {
    const about = [event.model, event.voice].filter(Boolean).join(", ");
    setStatus(`Live: speak any time.${about ? ` (${about})` : ""}`);
  },
  onLevel(level) {
    // RMS to a 60 dB scale: speech sits in the middle, silence at the left.
    const db = 20 * Math.log10(Math.max(level, 1e-6));
    const percent = Math.round(Math.min(Math.max((db + 60) / 60, 0), 1) * 100);
    ui.levelFill.style.width = `${percent}%`;
    ui.level.setAttribute("aria-valuenow", String(percent));
  },
  onSpeaking(who, active) {
    (who === "user" ? ui.userSpeaking : ui.agentSpeaking).hidden = !active;
    if (who === "agent") ui.stopAgent.disabled = !active;
  },
  onTranscript(event) {
    showTranscript(event.role, event.text ?? "", Boolean(event.final), event.item_id ?? null);
  },
  onError(code, message) {
    showError(code, message);
  },
  onLatency(ms, turns) {
    ui.latency.textContent = `${Math.round(ms)} ms`;
    const count = turns.samples.length;
    ui.latencyDetail.textContent =
      `Median ${Math.round(turns.median)} ms over ${count} turn${count === 1 ? "" : "s"}.`;
  },
};

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(code, message) {
  const item = document.createElement("li");
  const codeText = document.createElement("strong");
  codeText.textContent = code || "error";
  item.append(codeText, ` ${message || "(no details)"}`);
  ui.errors.prepend(item);
  while (ui.errors.children.length > SHOWN_ERRORS) ui.errors.lastElementChild.remove();
  ui.errorsCard.hidden = false;
}

// Transcript lines by "role:item_id". Partial events carry the next piece of text (as the
// model's deltas do); the final event carries the whole text and replaces the pieces.
const transcriptLines = new Map();

function showTranscript(role, text, final, itemId) {
  const key = itemId === null ? null : `${role}:${itemId}`;
  let line = key === null ? null : transcriptLines.get(key);
  if (!line && itemId === null) {
    // No item id: continue the last unfinished line of this role.
    const open = ui.transcript.querySelectorAll(`li.${role}.partial`);
    line = open[open.length - 1] || null;
  }
  if (!line) {
    line = document.createElement("li");
    line.className = role === "user" ? "user" : "assistant";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Agent";
    const words = document.createElement("span");
    words.className = "words";
    line.append(who, words);
    ui.transcript.querySelector(".empty")?.remove();
    ui.transcript.append(line);
    if (key !== null) transcriptLines.set(key, line);
  }
  const words = line.querySelector(".words");
  words.textContent = final ? text : words.textContent + text;
  line.classList.toggle("partial", !final);
  line.scrollIntoView({ block: "nearest" });
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  let url;
  try {
    url = dialUrl(ui.wsUrl.value.trim(), ui.token.value.trim());
  } catch (error) {
    showError("bad_url", error.message);
    return;
  }
  call = new VoiceCall({ ...settings, url }, view);
  call.setMuted(ui.mute.getAttribute("aria-pressed") === "true");
  call.start();
});

ui.hangUp.addEventListener("click", () => call?.end("you hung up"));

ui.stopAgent.addEventListener("click", () => call?.stopAgent());

// Mute works before a call too: the next call then starts muted.
ui.mute.addEventListener("click", () => {
  const muted = ui.mute.getAttribute("aria-pressed") !== "true";
  ui.mute.setAttribute("aria-pressed", String(muted)); // the label stays "Mute" (ARIA toggle)
  call?.setMuted(muted);
});

ui.textForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.text.value.trim();
  if (!text || !call?.sendText(text)) return;
  showTranscript("user", text, true, `typed-${Date.now()}`);
  ui.text.value = "";
});

ui.wsUrl.value = settings.wsUrl;
ui.token.value = settings.token;
view.onState("idle", settings.wsUrl
  ? "Not connected. Press Connect to start a call."
  : "Not connected. Enter the WebSocket URL and press Connect.");
if (!window.isSecureContext) {
  // Browsers offer neither the microphone nor AudioWorklet to plain-HTTP pages off localhost.
  showError("insecure_page", "Open this page over HTTPS (or from localhost) for the microphone.");
  ui.connect.disabled = true;
}
installTestHook(() => call);
