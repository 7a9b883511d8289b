"""The bridge between one caller and one Realtime model session, with no I/O.

``BridgeSession`` is a state machine in the manner of the ``websockets`` protocol core:
client frames, model events and the passage of time go in; commands come out (a message
for the client, an event for the model, the end of the session). It never touches a
socket, a queue or a clock: the caller passes ``now_ms`` and acts on the commands. That is
why every adapter (SQS, ``@connections``, the Realtime socket, the local emulator, a phone
line later) shares one behaviour, and why the tests can drive it exhaustively and fast.

What it decides:
- validation of every client frame (bad input becomes an ``error`` event, never a crash);
- downlink chunking: model audio deltas are coalesced to ``chunk_bytes`` per client
  message (never above the 32 KB frame limit), the first audio of an item goes out at once;
- barge-in: on ``speech_started`` the client is told to stop playback, unsent audio is
  dropped, the response is cancelled, and the assistant item is truncated at what the
  client reports it played, never past what was sent;
- keepalive on an idle downlink;
- continuity of the model session: the uplink audio sent since the model's last turn
  boundary is kept (up to ``replay_audio_ms``) and replayed into a new model session, with
  the conversation as text, whenever one replaces another: after a drop, proactively
  before OpenAI's 60-minute limit (``ReplaceModelSession``), and in another worker after a
  handover (``hand_over`` / ``resume``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from wire import client as proto
from wire import realtime as rt
from wire.audio import BYTES_PER_MS, bytes_to_ms, ms_to_bytes
from wire.client import ErrorCode, ProtocolError
from wire.handover import CallHandover


@dataclass(frozen=True, slots=True)
class SendToClient:
    """Post this frame to the caller (in order with every other SendToClient)."""

    payload: bytes
    audio_bytes: int = 0  # PCM carried, for accounting; 0 for control events


@dataclass(frozen=True, slots=True)
class SendToModel:
    """Send this event on the Realtime socket (in order)."""

    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndSession:
    """The call is over: close the model socket and forget the session. If the caller is
    still connected, its WebSocket is closed after what was queued for it is sent."""

    reason: str

    @property
    def caller_present(self) -> bool:
        return self.reason not in CALLER_LEFT


# End reasons after which nobody is on the line to tell.
CALLER_LEFT = frozenset({"caller_gone", "caller_disconnected"})


@dataclass(frozen=True, slots=True)
class ReplaceModelSession:
    """Replace the model socket with a new one now, on purpose (no backoff), then call
    ``model_reconnected`` for it as after a drop."""


Command = SendToClient | SendToModel | EndSession | ReplaceModelSession

# Model errors that announce the end of the model session: the link replaces the session,
# so the caller is not told of them. OpenAI sends ``session_expired`` at its time limit.
_SESSION_ENDING_ERROR_CODES = frozenset({"session_expired"})
# Replay audio is trimmed in whole 10 ms frames, the unit VADs classify audio in, so the
# replayed stream keeps the frame grid of the stream it came from.
_REPLAY_FRAME_BYTES = 10 * BYTES_PER_MS


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Tunables of the core. Defaults suit a browser on a normal network."""

    # PCM per downlink message. 4,800 bytes = 100 ms: ten posts a second while the agent
    # talks. Larger chunks cost fewer messages, smaller ones start playback sooner.
    chunk_bytes: int = 4_800
    # Longest time audio waits in the coalescing buffer before it goes out anyway.
    max_hold_ms: int = 40
    # How long to wait for the client's ``interrupt`` report after barge-in before
    # truncating at our own estimate of what it played.
    interrupt_report_wait_ms: int = 400
    # A message after this long without downlink traffic keeps proxies and the API
    # Gateway idle timer (10 minutes) from closing a quiet call.
    keepalive_interval_ms: int = 300_000
    # How long an out-of-order uplink frame waits for the ones before it.
    uplink_gap_wait_ms: int = 200
    # The call ends cleanly after this long, before API Gateway's 2-hour cut would end it
    # abruptly. (OpenAI's 60-minute session limit is met by replacing the model session.)
    max_call_ms: int = 7_080_000
    # Client frames per second a caller may send (a token bucket); more are dropped with a
    # rate_limited error. 100 ms audio frames are 10 a second.
    client_messages_per_second: float = 50.0
    client_message_burst: int = 100
    # Partial transcript pieces are gathered for this long and sent as one message: a post
    # per word would cost a message each and queue ahead of the agent's audio.
    transcript_hold_ms: int = 250
    # Turns of the conversation kept (as text) to restore into a new model session after
    # the model socket is lost; older turns are forgotten first.
    history_turns: int = 50
    # Uplink audio kept since the model's last turn boundary, replayed into a new model
    # session so a turn in progress survives the swap. An utterance longer than this loses
    # its start on a swap (5 s = 240 KB a call, and it must fit a handover).
    replay_audio_ms: int = 5_000
    # A model session this old is replaced at the next turn boundary where the user is not
    # speaking; at the hard limit it is replaced even mid-turn (the replay keeps the user's
    # audio; a reply in progress is asked for again). OpenAI ends a session at 60 minutes.
    model_session_max_ms: int = 55 * 60_000
    model_session_hard_max_ms: int = 59 * 60_000

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or self.chunk_bytes % 2:
            raise ValueError(
                f"AUDIO_CHUNK_BYTES must be a positive even number, got {self.chunk_bytes}"
            )
        if self.chunk_bytes > proto.MAX_DOWNLINK_PCM_BYTES:
            raise ValueError(
                f"AUDIO_CHUNK_BYTES {self.chunk_bytes} exceeds {proto.MAX_DOWNLINK_PCM_BYTES}, the "
                "largest PCM that fits one 32 KB WebSocket frame as base64 JSON"
            )
        if self.max_call_ms <= 0:
            raise ValueError(f"MAX_CALL_SECONDS must be positive, got {self.max_call_ms // 1000}")
        if self.client_messages_per_second <= 0 or self.client_message_burst < 1:
            raise ValueError("CLIENT_MESSAGES_PER_SECOND and CLIENT_MESSAGE_BURST must be positive")
        if self.replay_audio_ms < 0:
            raise ValueError(f"replay_audio_ms must be >= 0, got {self.replay_audio_ms}")
        if not 0 < self.model_session_max_ms <= self.model_session_hard_max_ms:
            hard_s = self.model_session_hard_max_ms // 1000
            raise ValueError(
                "MODEL_SESSION_MAX_SECONDS must be positive and at most the hard limit "
                f"({hard_s} s), got {self.model_session_max_ms // 1000}"
            )


@dataclass(slots=True)
class AssistantAudio:
    """Downlink state of one assistant audio item."""

    item_id: str
    content_index: int = 0
    pending: bytearray = field(default_factory=bytearray)
    pending_since_ms: int | None = None
    sent_bytes: int = 0
    first_sent_ms: int | None = None
    generation_done: bool = False
    interrupted: bool = False  # barge-in happened: drop further deltas for this item

    @property
    def sent_ms(self) -> int:
        return bytes_to_ms(self.sent_bytes)

    def estimated_played_ms(self, now_ms: int) -> int:
        """What the client has played if it started on the first chunk and never stalled."""
        if self.first_sent_ms is None:
            return 0
        return max(0, min(self.sent_ms, now_ms - self.first_sent_ms))


class UplinkSequencer:
    """Puts sequenced uplink audio back in the caller's order.

    API Gateway may run a connection's ``$default`` invocations in parallel and SQS may
    deliver a message twice, so frames can reach the worker out of order or repeated. With
    ``seq`` (0, 1, 2, ... per call) a repeat is dropped, an early frame is held until the
    gap fills, and a gap that stays open for ``gap_wait_ms`` is skipped and reported.
    """

    def __init__(self, gap_wait_ms: int, max_held: int = 64) -> None:
        self.gap_wait_ms = gap_wait_ms
        self.max_held = max_held
        self.next_seq = 0
        self.held: dict[int, bytes] = {}
        self.gap_deadline_ms: int | None = None
        self.duplicates = 0
        self.skipped = 0

    def push(self, seq: int, pcm: bytes, now_ms: int) -> tuple[list[bytes], range | None]:
        """Frames now in order, and the range of seqs given up on (if any)."""
        if seq < self.next_seq or seq in self.held:
            self.duplicates += 1
            return [], None
        self.held[seq] = pcm
        if seq != self.next_seq and self.gap_deadline_ms is None:
            self.gap_deadline_ms = now_ms + self.gap_wait_ms
        if len(self.held) > self.max_held:
            return self._skip_gap(now_ms)
        return self._release(), None

    def expire(self, now_ms: int) -> tuple[list[bytes], range | None]:
        if self.gap_deadline_ms is None or now_ms < self.gap_deadline_ms:
            return [], None
        return self._skip_gap(now_ms)

    def _skip_gap(self, now_ms: int) -> tuple[list[bytes], range | None]:
        first_held = min(self.held)
        missing = range(self.next_seq, first_held)
        self.skipped += len(missing)
        self.next_seq = first_held
        released = self._release()
        if self.held:  # another gap behind this one gets its own wait
            self.gap_deadline_ms = now_ms + self.gap_wait_ms
        return released, missing

    def _release(self) -> list[bytes]:
        out = []
        while self.next_seq in self.held:
            out.append(self.held.pop(self.next_seq))
            self.next_seq += 1
        if not self.held:
            self.gap_deadline_ms = None
        return out


@dataclass(slots=True)
class PendingTruncation:
    item: AssistantAudio
    deadline_ms: int


class BridgeSession:
    """One call: the caller on one side, one Realtime model session on the other."""

    def __init__(
        self,
        connection_id: str,
        session_config: rt.SessionConfig,
        settings: BridgeSettings | None = None,
        *,
        now_ms: int,
    ) -> None:
        self.connection_id = connection_id
        self.session_config = session_config
        self.settings = settings or BridgeSettings()
        self.ended = False
        self.ready = False
        self.response_active = False
        self.uplink_bytes = 0
        self.uplink = UplinkSequencer(self.settings.uplink_gap_wait_ms)
        self._assistant: AssistantAudio | None = None
        self._pending_truncation: PendingTruncation | None = None
        self._last_downlink_ms = now_ms
        self._started_ms = now_ms
        self._rate_tokens = float(self.settings.client_message_burst)
        self._rate_checked_ms = now_ms
        self._rate_error_sent_ms: int | None = None
        self.dropped_for_rate = 0
        # The conversation as text, (role, text) per finished turn: what a new model session
        # is given when the old one is lost (audio cannot be restored; the words can).
        self.history: list[tuple[str, str]] = []
        # Partial transcript text waiting to go out: (role, item_id) -> text, and since when.
        self._partial_text: dict[tuple[str, str | None], str] = {}
        self._partial_since_ms: int | None = None
        # The current model session's input stream: bytes appended to it, and the tail not
        # yet behind a turn boundary (``_replay``, starting at stream byte ``_replay_from``).
        self._model_stream_bytes = 0
        self._replay = bytearray()
        self._replay_from = 0
        # Where the current model session's stream starts in the call's uplink: the model
        # counts from its own start, the caller from the call's.
        self._stream_origin_bytes = 0
        # Between the model's speech_started and speech_stopped.
        self._user_speaking = False
        # Where the model's VAD last ended a turn (stream byte), while that turn's audio is
        # still kept: until its reply is secured (the user's words are in the history, or
        # the reply was given), a new session must hear the turn again to answer it.
        self._unsecured_turn_end: int | None = None
        self._unsecured_turn_reply_started = False
        # A response is on its way and has not started: we sent response.create, or the
        # model's VAD ended a user turn (server VAD creates the reply). Until it starts, a
        # lost model session would leave the caller unanswered.
        self._response_expected = False
        # A response.cancel sent for the active response (barge-in, a typed message).
        self._response_cancelled = False
        # Model session age, and the proactive replacement's progress.
        self._model_started_ms = now_ms
        self._replace_when_idle = False
        self._replacement_pending = False
        # Set by ``resume``: open() restores this state into the first model session.
        self._resumed_response_owed: bool | None = None

    @classmethod
    def resume(
        cls,
        connection_id: str,
        session_config: rt.SessionConfig,
        settings: BridgeSettings | None,
        handover: CallHandover,
        *,
        now_ms: int,
    ) -> BridgeSession:
        """Continue a call another worker handed over (see ``hand_over``).

        ``open()`` then gives the new model session the conversation and the replay audio
        as after a reconnect. The caller is not sent ``ready`` again if it had it: the page
        and ``voice-agent call`` take ``ready`` as "the call is up", once per call, and for
        the caller nothing changed.
        """
        session = cls(connection_id, session_config, settings, now_ms=now_ms)
        session.history = list(handover.history)
        del session.history[: -session.settings.history_turns]
        session.uplink.next_seq = handover.next_seq
        session.uplink.held = dict(handover.held)
        if session.uplink.held:
            session.uplink.gap_deadline_ms = now_ms + session.settings.uplink_gap_wait_ms
        session._started_ms = now_ms - handover.call_elapsed_ms
        session._replay = bytearray(handover.replay_audio)
        session._model_stream_bytes = len(handover.replay_audio)
        session.uplink_bytes = max(handover.uplink_bytes, len(handover.replay_audio))
        session.ready = handover.client_ready
        session._resumed_response_owed = handover.response_interrupted
        return session

    # --- inputs ---------------------------------------------------------------------------

    def open(self) -> list[Command]:
        """Commands that start the model session; the first thing sent on the socket."""
        if self._resumed_response_owed is not None:
            owed, self._resumed_response_owed = self._resumed_response_owed, None
            return self._restore_into_new_model_session(self._model_started_ms, owed)
        return [SendToModel(rt.session_update(self.session_config))]

    def model_reconnected(self, now_ms: int) -> list[Command]:
        """A new model session replaces a lost (or retired) one: configure it, restore the
        conversation so far as text, so the agent remembers what was said, and replay the
        uplink audio the old session had not made a turn of, so a turn in progress is
        heard whole."""
        return self._restore_into_new_model_session(now_ms, self._response_owed())

    @property
    def at_turn_boundary(self) -> bool:
        """Nothing is in flight between the model and the caller: no response active or
        asked for, no assistant audio waiting to go out, no truncation waiting. The state
        can move to another model session (or another worker) without losing a word."""
        if self.response_active or self._response_expected:
            return False
        if self._pending_truncation is not None:
            return False
        item = self._assistant
        return item is None or not item.pending

    def hand_over(self, now_ms: int, *, saved_at_ms: int = 0) -> tuple[CallHandover, list[Command]]:
        """Stop serving this call here so another worker can ``resume`` it: what is ready
        for the caller goes out now (the commands), the rest is in the handover, and the
        session produces nothing more. No EndSession and no session_ended: the caller stays
        connected. ``saved_at_ms`` is wall-clock epoch ms, which the core has no clock for:
        pass it, or stamp the handover after (``dataclasses.replace``). Best called
        ``at_turn_boundary``; otherwise a reply in progress is asked for again in the next
        worker, from its start."""
        if self.ended:
            raise RuntimeError("hand_over on an ended session")
        out: list[Command] = []
        item = self._assistant
        if item is not None and not item.interrupted:
            out.extend(self._flush(item, now_ms, everything=True))
        out.extend(self._flush_partial_transcripts(now_ms))
        handover = CallHandover(
            history=tuple(self.history),
            next_seq=self.uplink.next_seq,
            held=tuple(sorted(self.uplink.held.items())),
            replay_audio=bytes(self._replay),
            response_interrupted=self._response_owed(),
            call_elapsed_ms=max(0, now_ms - self._started_ms),
            saved_at_ms=saved_at_ms,
            uplink_bytes=self.uplink_bytes,
            client_ready=self.ready,
        )
        self.ended = True
        return handover, out

    def receive_client_frame(self, frame: str | bytes, now_ms: int) -> list[Command]:
        """One frame from the caller, exactly as the WebSocket delivered it."""
        if self.ended:
            return []
        if not self._take_rate_token(now_ms):
            return self._rate_limited(now_ms)
        try:
            message = proto.parse_client_frame(frame)
        except ProtocolError as exc:
            return [self._to_client(proto.error_event(exc.code, exc.message), now_ms)]
        if isinstance(message, proto.AudioIn):
            return self._on_audio(message, now_ms)
        if isinstance(message, proto.TextIn):
            return self._on_text(message)
        if isinstance(message, proto.InterruptIn):
            out = self._on_client_interrupt(message, now_ms)
            return out + self._replacement_due(now_ms)
        return [self._to_client(proto.pong_event(), now_ms)]

    def receive_model_event(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        """One event from the Realtime socket, already decoded from JSON."""
        if self.ended:
            return []
        kind = event.get("type")
        handler = _MODEL_HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            return []  # events the bridge has no use for (rate limits, item bookkeeping, ...)
        out = handler(self, event, now_ms)
        return out + self._replacement_due(now_ms)

    def tick(self, now_ms: int) -> list[Command]:
        """Let time pass: flush held audio, time out barge-in reports, keep the line alive."""
        if self.ended:
            return []
        out: list[Command] = []
        item = self._assistant
        if (
            item is not None
            and item.pending_since_ms is not None
            and now_ms - item.pending_since_ms >= self.settings.max_hold_ms
        ):
            out.extend(self._flush(item, now_ms, everything=True))
        pending = self._pending_truncation
        if pending is not None and now_ms >= pending.deadline_ms:
            out.extend(self._truncate(pending.item.estimated_played_ms(now_ms)))
        out.extend(self._to_model_audio(*self.uplink.expire(now_ms), now_ms))
        since = self._partial_since_ms
        if since is not None and now_ms - since >= self.settings.transcript_hold_ms:
            out.extend(self._flush_partial_transcripts(now_ms))
        if now_ms - self._started_ms >= self.settings.max_call_ms:
            return [*out, *self.end("max_duration", now_ms)]
        if now_ms - self._last_downlink_ms >= self.settings.keepalive_interval_ms:
            out.append(self._to_client(proto.keepalive_event(), now_ms))
        out.extend(self._replacement_due(now_ms))
        return out

    def next_deadline_ms(self) -> int | None:
        """When ``tick`` next has something to do; None if nothing is scheduled."""
        deadlines = [
            self._last_downlink_ms + self.settings.keepalive_interval_ms,
            self._started_ms + self.settings.max_call_ms,
        ]
        item = self._assistant
        if item is not None and item.pending_since_ms is not None:
            deadlines.append(item.pending_since_ms + self.settings.max_hold_ms)
        if self._pending_truncation is not None:
            deadlines.append(self._pending_truncation.deadline_ms)
        if self.uplink.gap_deadline_ms is not None:
            deadlines.append(self.uplink.gap_deadline_ms)
        if self._partial_since_ms is not None:
            deadlines.append(self._partial_since_ms + self.settings.transcript_hold_ms)
        if not self._replacement_pending:
            # Past the soft limit the boundary itself triggers the replacement (an event
            # or a tick already due); only the hard limit still needs a tick of its own.
            limit = (
                self.settings.model_session_hard_max_ms
                if self._replace_when_idle
                else self.settings.model_session_max_ms
            )
            deadlines.append(self._model_started_ms + limit)
            if (
                self._replace_when_idle
                and self.at_turn_boundary
                and not self._user_speaking
                and item is not None
                and item.first_sent_ms is not None
                and not item.interrupted
            ):
                # Only the caller's playback holds the replacement up (else it would have
                # happened): tick when they will have heard the reply out.
                deadlines.append(item.first_sent_ms + item.sent_ms)
        return min(deadlines) if not self.ended else None

    def end(self, reason: str, now_ms: int = 0) -> list[Command]:
        """End the call (caller gone, shutdown, limits), telling the caller why if it is
        still there."""
        if self.ended:
            return []
        out: list[Command] = []
        command = EndSession(reason)
        if command.caller_present:
            out.append(self._to_client(proto.session_ended_event(reason), now_ms))
        self.ended = True
        return [*out, command]

    # --- client messages ------------------------------------------------------------------

    def _take_rate_token(self, now_ms: int) -> bool:
        rate = self.settings.client_messages_per_second
        elapsed_s = max(0, now_ms - self._rate_checked_ms) / 1000
        self._rate_checked_ms = now_ms
        self._rate_tokens = min(
            float(self.settings.client_message_burst), self._rate_tokens + elapsed_s * rate
        )
        if self._rate_tokens < 1:
            return False
        self._rate_tokens -= 1
        return True

    def _rate_limited(self, now_ms: int) -> list[Command]:
        self.dropped_for_rate += 1
        # One error a second at most: a flood must not become a downlink flood.
        last = self._rate_error_sent_ms
        if last is not None and now_ms - last < 1000:
            return []
        self._rate_error_sent_ms = now_ms
        limit = self.settings.client_messages_per_second
        message = f"more than {limit:g} messages a second; excess messages are dropped"
        return [self._to_client(proto.error_event(ErrorCode.RATE_LIMITED, message), now_ms)]

    def _on_audio(self, message: proto.AudioIn, now_ms: int) -> list[Command]:
        if message.seq is None:
            return self._to_model_audio([message.pcm], None, now_ms)
        return self._to_model_audio(*self.uplink.push(message.seq, message.pcm, now_ms), now_ms)

    def _to_model_audio(
        self, frames: list[bytes], missing: range | None, now_ms: int
    ) -> list[Command]:
        out: list[Command] = []
        if missing:
            text = f"audio frames {missing.start}..{missing.stop - 1} never arrived; skipped"
            out.append(self._to_client(proto.error_event(ErrorCode.AUDIO_GAP, text), now_ms))
        for pcm in frames:
            self.uplink_bytes += len(pcm)
            self._keep_for_replay(pcm)
            out.append(SendToModel(rt.input_audio_append(pcm)))
        return out

    def _on_text(self, message: proto.TextIn) -> list[Command]:
        self._remember("user", message.text)
        out: list[Command] = []
        if self.response_active:
            self._response_cancelled = True
            out.append(SendToModel(rt.response_cancel()))
        out.append(SendToModel(rt.user_text_item(message.text)))
        out.append(SendToModel(rt.response_create()))
        self._response_expected = True
        return out

    def _on_client_interrupt(self, message: proto.InterruptIn, now_ms: int) -> list[Command]:
        """The client stopped playback and says how much of the item it played."""
        pending = self._pending_truncation
        if pending is not None and message.item_id in (None, pending.item.item_id):
            return self._truncate(message.played_ms)
        item = self._assistant
        if item is None or item.interrupted or (message.item_id not in (None, item.item_id)):
            return []  # nothing playing, or a report for an item already settled
        # The caller interrupted on its own (a button, not the model's VAD).
        out = self._interrupt(item, now_ms)
        out.extend(self._truncate(message.played_ms))
        return out

    # --- model events ---------------------------------------------------------------------

    def _on_session_updated(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        if self.ready:
            return []
        self.ready = True
        cfg = self.session_config
        return [self._to_client(proto.ready_event(cfg.model, cfg.voice), now_ms)]

    def _on_error(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        # A response.create refused (e.g. one already active) is never answered: do not
        # wait for it, or the call would never reach a turn boundary.
        self._response_expected = False
        error = event.get("error") or {}
        code = error.get("code")
        if code in rt.BENIGN_ERROR_CODES or code in _SESSION_ENDING_ERROR_CODES:
            return []
        message = str(error.get("message") or "the model reported an error")
        return [self._to_client(proto.error_event(ErrorCode.MODEL_ERROR, message), now_ms)]

    def _on_speech_started(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self._user_speaking = True
        # Whatever reply was on its way, the user's new turn takes over.
        self._response_expected = False
        out: list[Command] = [
            self._to_client(proto.speech_started_event(event.get("item_id")), now_ms)
        ]
        item = self._assistant
        if item is not None and not item.interrupted and self._may_still_be_playing(item, now_ms):
            out.extend(self._interrupt(item, now_ms))
            self._pending_truncation = PendingTruncation(
                item, now_ms + self.settings.interrupt_report_wait_ms
            )
        return out

    def _on_speech_stopped(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self._user_speaking = False
        # Server VAD (create_response, as session_update asks) replies to the turn just
        # ended: not a turn boundary until that reply has come and gone.
        self._response_expected = True
        end_ms = event.get("audio_end_ms")
        if not isinstance(end_ms, int) or isinstance(end_ms, bool):
            return []
        # The model has made a turn of everything up to here; it stops being replayed
        # once that turn is answered or its words are history (``_secure_turn``).
        self._unsecured_turn_end = ms_to_bytes(max(0, end_ms))
        self._unsecured_turn_reply_started = False
        # The caller counts from the start of the call's uplink, the model from the start
        # of its own session.
        end_ms += bytes_to_ms(self._stream_origin_bytes)
        speech_end_ms = max(0, end_ms - self.session_config.vad_silence_ms)
        return [self._to_client(proto.speech_stopped_event(end_ms, speech_end_ms), now_ms)]

    def _on_response_created(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self.response_active = True
        if self._unsecured_turn_end is not None:
            self._unsecured_turn_reply_started = True
        self._response_expected = False
        self._response_cancelled = False
        return []

    def _on_response_done(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self.response_active = False
        self._response_expected = False
        if self._unsecured_turn_reply_started:
            self._secure_turn()
        item = self._assistant
        if item is None or item.interrupted:
            return []
        item.generation_done = True
        return self._flush(item, now_ms, everything=True)

    def _on_audio_delta(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        item_id = event.get("item_id")
        delta = event.get("delta")
        if not isinstance(item_id, str) or not isinstance(delta, str):
            return []
        item = self._assistant
        if item is None or item.item_id != item_id:
            out = self._flush(item, now_ms, everything=True) if item else []
            item = AssistantAudio(item_id, content_index=int(event.get("content_index") or 0))
            self._assistant = item
        else:
            out = []
        if item.interrupted:
            return out  # generated before the cancel took effect: the caller must not hear it
        try:
            pcm = _b64decode(delta)
        except ValueError:
            return out
        item.pending += pcm
        if item.pending_since_ms is None:
            item.pending_since_ms = now_ms
        # The first audio of an item goes out at once: it decides how fast the agent
        # seems to answer. The rest is coalesced into chunk_bytes messages.
        out.extend(self._flush(item, now_ms, everything=item.sent_bytes == 0))
        return out

    def _on_audio_done(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        item = self._assistant
        if item is None or item.item_id != event.get("item_id") or item.interrupted:
            return []
        item.generation_done = True
        out = self._flush(item, now_ms, everything=True)
        out.append(self._to_client(proto.audio_done_event(item.item_id), now_ms))
        return out

    def _on_output_transcript_delta(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        return self._transcript("assistant", event, "delta", final=False, now_ms=now_ms)

    def _on_output_transcript_done(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self._remember("assistant", event.get("transcript"))
        return self._transcript("assistant", event, "transcript", final=True, now_ms=now_ms)

    def _on_input_transcript_delta(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        return self._transcript("user", event, "delta", final=False, now_ms=now_ms)

    def _on_input_transcript_completed(self, event: dict[str, Any], now_ms: int) -> list[Command]:
        self._remember("user", event.get("transcript"))
        self._secure_turn()
        return self._transcript("user", event, "transcript", final=True, now_ms=now_ms)

    def _remember(self, role: str, text: Any) -> None:
        if isinstance(text, str) and text.strip():
            self.history.append((role, text))
            del self.history[: -self.settings.history_turns]

    # --- mechanics ------------------------------------------------------------------------

    def _transcript(
        self, role: str, event: dict[str, Any], key: str, *, final: bool, now_ms: int
    ) -> list[Command]:
        text = event.get(key)
        if not isinstance(text, str) or (not text and not final):
            return []
        item_id = event.get("item_id")
        if not final:
            # Gathered and sent in one message (see transcript_hold_ms).
            slot = (role, item_id)
            self._partial_text[slot] = self._partial_text.get(slot, "") + text
            if self._partial_since_ms is None:
                self._partial_since_ms = now_ms
            return []
        # The final text replaces the pieces: pieces not yet sent need not go at all.
        self._partial_text.pop((role, item_id), None)
        if not self._partial_text:
            self._partial_since_ms = None
        return [self._to_client(proto.transcript_event(role, text, True, item_id), now_ms)]

    def _flush_partial_transcripts(self, now_ms: int) -> list[Command]:
        out: list[Command] = [
            self._to_client(proto.transcript_event(role, text, False, item_id), now_ms)
            for (role, item_id), text in self._partial_text.items()
        ]
        self._partial_text.clear()
        self._partial_since_ms = None
        return out

    def _may_still_be_playing(self, item: AssistantAudio, now_ms: int) -> bool:
        if not item.generation_done or item.pending:
            return True
        return item.estimated_played_ms(now_ms) < item.sent_ms

    def _interrupt(self, item: AssistantAudio, now_ms: int) -> list[Command]:
        """Stop the assistant's audio: drop what was not sent, cancel generation."""
        item.interrupted = True
        item.pending.clear()
        item.pending_since_ms = None
        if self.response_active:
            self._response_cancelled = True
            return [SendToModel(rt.response_cancel())]
        return []

    def _truncate(self, played_ms: int) -> list[Command]:
        """Tell the model what the caller heard. Never past what was sent: a too-large
        ``audio_end_ms`` is rejected and the model then stays silent for good."""
        pending = self._pending_truncation
        self._pending_truncation = None
        item = pending.item if pending else self._assistant
        if item is None:
            return []
        end_ms = max(0, min(played_ms, item.sent_ms))
        return [SendToModel(rt.item_truncate(item.item_id, end_ms, item.content_index))]

    def _flush(
        self, item: AssistantAudio | None, now_ms: int, *, everything: bool
    ) -> list[Command]:
        if item is None or not item.pending:
            return []
        out: list[Command] = []
        chunk = self.settings.chunk_bytes
        pending = item.pending
        start = 0
        while len(pending) - start >= chunk:
            out.append(self._audio_to_client(item, bytes(pending[start : start + chunk]), now_ms))
            start += chunk
        if everything and start < len(pending):
            out.append(self._audio_to_client(item, bytes(pending[start:]), now_ms))
            start = len(pending)
        del pending[:start]
        if not pending:
            item.pending_since_ms = None
        elif out:
            item.pending_since_ms = now_ms  # the remainder starts its own hold
        return out

    def _audio_to_client(self, item: AssistantAudio, pcm: bytes, now_ms: int) -> SendToClient:
        if item.first_sent_ms is None:
            item.first_sent_ms = now_ms
        item.sent_bytes += len(pcm)
        self._last_downlink_ms = now_ms
        return SendToClient(proto.audio_event(pcm, item.item_id), audio_bytes=len(pcm))

    def _to_client(self, payload: bytes, now_ms: int) -> SendToClient:
        self._last_downlink_ms = now_ms
        return SendToClient(payload)

    # --- model session continuity ---------------------------------------------------------

    def _keep_for_replay(self, pcm: bytes) -> None:
        self._model_stream_bytes += len(pcm)
        self._replay += pcm
        # The cap drops whole frames from the front, so the tail stays on the frame grid.
        cap = ms_to_bytes(self.settings.replay_audio_ms)
        if len(self._replay) > cap:
            keep_from = -(-(self._model_stream_bytes - cap) // _REPLAY_FRAME_BYTES)
            self._forget_replay_before(keep_from * _REPLAY_FRAME_BYTES)

    def _secure_turn(self) -> None:
        """The last turn is answered, or its words are in the history (a lost reply can
        then be asked for again): its audio need not be heard again."""
        if self._unsecured_turn_end is not None:
            self._forget_replay_before(self._unsecured_turn_end)
            self._unsecured_turn_end = None
            self._unsecured_turn_reply_started = False

    def _forget_replay_before(self, stream_byte: int) -> None:
        position = min(stream_byte, self._model_stream_bytes)
        if position > self._replay_from:
            del self._replay[: position - self._replay_from]
            self._replay_from = position

    def _response_owed(self) -> bool:
        """Would the caller, but for the loss of the model session now, get a reply it
        has not had in full? A reply asked for, or one being generated and not cancelled;
        never while the user speaks (their turn, replayed, gets its own reply)."""
        if self._user_speaking or self._unsecured_turn_end is not None:
            # The replay holds the user's turn: the new session's VAD answers it.
            return False
        if self._response_expected:
            return True
        return self.response_active and not self._response_cancelled

    def _restore_into_new_model_session(self, now_ms: int, response_owed: bool) -> list[Command]:
        out: list[Command] = [SendToModel(rt.session_update(self.session_config))]
        for role, text in self.history:
            item = rt.user_text_item(text) if role == "user" else rt.assistant_text_item(text)
            out.append(SendToModel(item))
        # A reply lost with the old session is asked for again, from its start: the caller
        # heard part of it at most, and silence would leave them waiting for the rest. Only
        # when the last turn in the history is the user's (the new session then answers
        # it; otherwise it has not got the question and would answer something else). It
        # goes before the replay: if the replay holds speech the old session had not yet
        # reported, server VAD interrupts this reply for that speech, as a barge-in would,
        # and answers the speech; after the replay it could start while the user talks.
        self._response_expected = False
        if response_owed and self.history and self.history[-1][0] == "user":
            out.append(SendToModel(rt.response_create()))
            self._response_expected = True
        # The audio the old session had not made a turn of becomes the new session's
        # stream from byte 0; the pieces stay within the uplink frame size.
        piece = proto.MAX_UPLINK_PCM_BYTES
        replay = bytes(self._replay)
        for start in range(0, len(replay), piece):
            out.append(SendToModel(rt.input_audio_append(replay[start : start + piece])))
        self._stream_origin_bytes = self.uplink_bytes - len(replay)
        self._model_stream_bytes = len(replay)
        self._replay_from = 0
        self._user_speaking = False
        self._unsecured_turn_end = None
        self._unsecured_turn_reply_started = False
        self._response_cancelled = False
        self._model_started_ms = now_ms
        self._replace_when_idle = False
        self._replacement_pending = False
        # Whatever the old session was saying is gone: stop waiting on it, and never name
        # its item to the new session (a truncate of an unknown item is an error).
        self.response_active = False
        self._pending_truncation = None
        item_state = self._assistant
        if item_state is not None:
            item_state.interrupted = True
            item_state.pending.clear()
            item_state.pending_since_ms = None
        return out

    def _caller_may_be_listening(self, now_ms: int) -> bool:
        # Once the session is replaced, a barge-in can no longer truncate the old reply (the
        # new session does not know its item): wait until the caller has heard it out.
        item = self._assistant
        return (
            item is not None and not item.interrupted and self._may_still_be_playing(item, now_ms)
        )

    def _replacement_due(self, now_ms: int) -> list[Command]:
        """ReplaceModelSession once the model session is old: at a turn boundary where the
        user is not speaking, or at the hard limit whatever is going on."""
        if self.ended or self._replacement_pending:
            return []
        age_ms = now_ms - self._model_started_ms
        if age_ms >= self.settings.model_session_max_ms:
            self._replace_when_idle = True
        hard = age_ms >= self.settings.model_session_hard_max_ms
        idle = (
            self._replace_when_idle
            and self.at_turn_boundary
            and not self._user_speaking
            and not self._caller_may_be_listening(now_ms)
        )
        if not (hard or idle):
            return []
        self._replacement_pending = True
        return [ReplaceModelSession()]


def _b64decode(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("bad base64 audio from the model") from exc


_MODEL_HANDLERS = {
    rt.SESSION_UPDATED: BridgeSession._on_session_updated,
    rt.ERROR: BridgeSession._on_error,
    rt.SPEECH_STARTED: BridgeSession._on_speech_started,
    rt.SPEECH_STOPPED: BridgeSession._on_speech_stopped,
    rt.RESPONSE_CREATED: BridgeSession._on_response_created,
    rt.RESPONSE_DONE: BridgeSession._on_response_done,
    rt.OUTPUT_AUDIO_DELTA: BridgeSession._on_audio_delta,
    rt.OUTPUT_AUDIO_DONE: BridgeSession._on_audio_done,
    rt.OUTPUT_TRANSCRIPT_DELTA: BridgeSession._on_output_transcript_delta,
    rt.OUTPUT_TRANSCRIPT_DONE: BridgeSession._on_output_transcript_done,
    rt.INPUT_TRANSCRIPT_DELTA: BridgeSession._on_input_transcript_delta,
    rt.INPUT_TRANSCRIPT_COMPLETED: BridgeSession._on_input_transcript_completed,
}
