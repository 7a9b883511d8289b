"""The session core driven directly by scripted events: no sockets, no clock."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent
from pydantic import TypeAdapter

from wire import client as proto
from wire import realtime as rt
from wire.audio import ms_to_bytes
from wire.handover import CallHandover
from worker.core import (
    BridgeSession,
    BridgeSettings,
    EndSession,
    ReplaceModelSession,
    SendToClient,
    SendToModel,
)

CLIENT_EVENT = TypeAdapter(RealtimeClientEvent)
CONFIG = rt.SessionConfig(model="gpt-realtime-mini", voice="marin", instructions="be brief")


def new_session(**settings_kw: int) -> BridgeSession:
    return BridgeSession("conn-1", CONFIG, BridgeSettings(**settings_kw), now_ms=0)


def client_events(commands: list) -> list[dict]:
    return [orjson.loads(c.payload) for c in commands if isinstance(c, SendToClient)]


def model_events(commands: list) -> list[dict]:
    return [c.event for c in commands if isinstance(c, SendToModel)]


def delta(item_id: str, pcm: bytes) -> dict:
    return {
        "type": rt.OUTPUT_AUDIO_DELTA,
        "event_id": "e",
        "response_id": "resp_1",
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "delta": base64.b64encode(pcm).decode(),
    }


def pcm_of(n: int, seed: int = 1) -> bytes:
    return bytes((seed * 7 + i * 13) % 256 for i in range(n))


def downlink_pcm(events: list[dict]) -> bytes:
    return b"".join(proto.decode_audio(e) for e in events if e["type"] == "audio")


def test_open_sends_a_valid_ga_session_update_first() -> None:
    session = new_session()
    (command,) = session.open()
    assert isinstance(command, SendToModel)
    event = command.event
    CLIENT_EVENT.validate_python(event)
    assert event["type"] == "session.update"
    assert event["session"]["type"] == "realtime"
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert event["session"]["audio"]["output"]["voice"] == "marin"
    assert event["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_ready_is_sent_once_when_the_model_confirms_the_session() -> None:
    session = new_session()
    updated = {"type": rt.SESSION_UPDATED, "event_id": "e", "session": {}}
    first = client_events(session.receive_model_event(updated, 1))
    again = client_events(session.receive_model_event(updated, 2))
    assert first == [{"type": "ready", "model": "gpt-realtime-mini", "voice": "marin"}]
    assert again == []


def test_client_audio_reaches_the_model_unchanged() -> None:
    session = new_session()
    pcm = pcm_of(4800)
    (event,) = model_events(session.receive_client_frame(proto.audio_action(pcm), 0))
    CLIENT_EVENT.validate_python(event)
    assert event["type"] == "input_audio_buffer.append"
    assert base64.b64decode(event["audio"]) == pcm
    assert session.uplink_bytes == 4800


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1,2]", "not_an_object"),
        ('{"audio": "AAAA"}', "missing_action"),
        ('{"action": "dance"}', "unknown_action"),
        ('{"action": "audio"}', "invalid_audio"),
        ('{"action": "audio", "audio": 5}', "invalid_audio"),
        ('{"action": "audio", "audio": "!!!"}', "invalid_audio"),
        ('{"action": "audio", "audio": "AA=="}', "invalid_audio"),  # one byte: odd count
        ('{"action": "text", "text": ""}', "invalid_text"),
        ('{"action": "interrupt", "played_ms": -1}', "invalid_interrupt"),
        ('{"action": "interrupt", "played_ms": true}', "invalid_interrupt"),
    ],
)
def test_bad_frames_get_an_error_event_and_the_next_good_frame_still_works(
    frame: str, code: str
) -> None:
    session = new_session()
    commands = session.receive_client_frame(frame, 0)
    (error,) = client_events(commands)
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert model_events(commands) == []
    good = session.receive_client_frame(proto.audio_action(b"\x01\x00" * 10), 1)
    assert model_events(good)[0]["type"] == "input_audio_buffer.append"


def test_oversized_audio_and_frames_are_refused_with_their_own_codes() -> None:
    session = new_session()
    too_much_pcm = proto.audio_action(b"\x00\x00" * (proto.MAX_UPLINK_PCM_BYTES // 2 + 1))
    assert client_events(session.receive_client_frame(too_much_pcm, 0))[0]["code"] == (
        "audio_too_large"
    )
    huge = '{"action":"text","text":"' + "x" * proto.MAX_FRAME_BYTES + '"}'
    assert client_events(session.receive_client_frame(huge, 0))[0]["code"] == "message_too_large"


def test_duplicate_sequence_numbers_are_dropped() -> None:
    session = new_session()
    frames = [proto.audio_action(pcm_of(100, s), seq=s) for s in (0, 1, 1, 2, 0, 3)]
    sent = [e for f in frames for e in model_events(session.receive_client_frame(f, 0))]
    assert [base64.b64decode(e["audio"]) for e in sent] == [pcm_of(100, s) for s in (0, 1, 2, 3)]
    assert session.uplink.duplicates == 2


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(list(range(12))), repeats=st.lists(st.integers(0, 11), max_size=6))
def test_reordered_and_repeated_frames_reach_the_model_once_in_order(
    order: list[int], repeats: list[int]
) -> None:
    session = new_session()
    sent: list[dict] = []
    for seq in order + repeats:
        frame = proto.audio_action(pcm_of(64, seq), seq=seq)
        sent += model_events(session.receive_client_frame(frame, 0))
    assert [base64.b64decode(e["audio"]) for e in sent] == [pcm_of(64, s) for s in range(12)]


def test_a_gap_is_waited_for_then_skipped_and_reported() -> None:
    session = new_session(uplink_gap_wait_ms=200)
    session.receive_client_frame(proto.audio_action(pcm_of(64, 0), seq=0), 0)
    held = session.receive_client_frame(proto.audio_action(pcm_of(64, 2), seq=2), 10)
    assert held == [] and session.next_deadline_ms() == 210
    assert session.tick(209) == []
    commands = session.tick(210)
    (error,) = client_events(commands)
    assert error["code"] == "audio_gap" and "1..1" in error["message"]
    (append,) = model_events(commands)
    assert base64.b64decode(append["audio"]) == pcm_of(64, 2)
    # The late frame, arriving after all, is a duplicate of a settled position.
    assert session.receive_client_frame(proto.audio_action(pcm_of(64, 1), seq=1), 300) == []


def test_ping_gets_pong() -> None:
    assert client_events(new_session().receive_client_frame('{"action":"ping"}', 0)) == [
        {"type": "pong"}
    ]


def test_text_creates_a_user_item_and_asks_for_a_response() -> None:
    session = new_session()
    events = model_events(session.receive_client_frame(proto.text_action("hello"), 0))
    for event in events:
        CLIENT_EVENT.validate_python(event)
    assert [e["type"] for e in events] == ["conversation.item.create", "response.create"]
    assert events[0]["item"]["content"][0]["text"] == "hello"


def test_first_audio_goes_out_at_once_then_deltas_are_coalesced() -> None:
    session = new_session(chunk_bytes=4800, max_hold_ms=40)
    session.receive_model_event({"type": rt.RESPONSE_CREATED, "response": {}}, 0)
    first = client_events(session.receive_model_event(delta("item_a", pcm_of(960)), 10))
    assert len(first) == 1 and len(proto.decode_audio(first[0])) == 960
    assert first[0]["item_id"] == "item_a"
    held = client_events(session.receive_model_event(delta("item_a", pcm_of(2400, 2)), 11))
    assert held == []  # below one chunk: held for coalescing
    assert session.next_deadline_ms() == 11 + 40
    flushed = client_events(session.tick(51))
    assert len(proto.decode_audio(flushed[0])) == 2400


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=20_000).map(lambda n: n * 2), max_size=30),
    chunk=st.sampled_from([480, 4800, 9600, proto.MAX_DOWNLINK_PCM_BYTES]),
)
def test_downlink_is_lossless_ordered_and_within_the_frame_limit(
    sizes: list[int], chunk: int
) -> None:
    session = new_session(chunk_bytes=chunk)
    session.receive_model_event({"type": rt.RESPONSE_CREATED, "response": {}}, 0)
    produced = b""
    events: list[dict] = []
    for i, size in enumerate(sizes):
        pcm = pcm_of(size, i)
        produced += pcm
        commands = session.receive_model_event(delta("item_a", pcm), i)
        for command in commands:
            assert isinstance(command, SendToClient)
            assert len(command.payload) <= proto.MAX_FRAME_BYTES
        events += client_events(commands)
    events += client_events(session.receive_model_event({"type": rt.RESPONSE_DONE}, 99))
    assert downlink_pcm(events) == produced
    assert all(len(proto.decode_audio(e)) <= chunk for e in events)


def play_item(session: BridgeSession, item: str, ms: int, now: int) -> None:
    session.receive_model_event({"type": rt.RESPONSE_CREATED, "response": {}}, now)
    session.receive_model_event(delta(item, pcm_of(ms_to_bytes(ms))), now)


def speech_started(item_id: str = "user_1") -> dict:
    return {"type": rt.SPEECH_STARTED, "event_id": "e", "audio_start_ms": 0, "item_id": item_id}


def test_barge_in_stops_playback_cancels_and_truncates_at_what_was_played() -> None:
    session = new_session(chunk_bytes=24000)
    play_item(session, "item_a", 2000, now=0)  # 2 s sent at t=0 (first audio goes at once)
    commands = session.receive_model_event(speech_started(), 700)
    assert client_events(commands)[0]["type"] == "speech_started"
    assert [e["type"] for e in model_events(commands)] == ["response.cancel"]
    # Audio generated before the cancel took effect never reaches the caller.
    late = session.receive_model_event(delta("item_a", pcm_of(4800)), 710)
    assert client_events(late) == []
    report = session.receive_client_frame(proto.interrupt_action(650, "item_a"), 720)
    (truncate,) = model_events(report)
    CLIENT_EVENT.validate_python(truncate)
    assert truncate == rt.item_truncate("item_a", 650)
    assert model_events(session.tick(5000)) == []  # no second truncate on timeout


def test_truncation_never_goes_past_what_was_sent() -> None:
    session = new_session(chunk_bytes=24000)
    play_item(session, "item_a", 300, now=0)
    session.receive_model_event(speech_started(), 100)
    (truncate,) = model_events(session.receive_client_frame(proto.interrupt_action(99_999), 110))
    assert truncate["audio_end_ms"] == 300


def test_without_a_report_the_core_truncates_at_its_estimate_after_the_wait() -> None:
    session = new_session(chunk_bytes=24000, interrupt_report_wait_ms=400)
    play_item(session, "item_a", 3000, now=1000)
    session.receive_model_event(speech_started(), 1500)
    assert model_events(session.tick(1899)) == []
    (truncate,) = model_events(session.tick(1900))
    assert truncate["audio_end_ms"] == 900  # played from t=1000 until now, capped by sent


def test_speech_with_nothing_playing_neither_cancels_nor_truncates() -> None:
    session = new_session()
    commands = session.receive_model_event(speech_started(), 0)
    assert model_events(commands) == [] and session.next_deadline_ms() == 300_000
    play_item(session, "item_a", 100, now=10)
    session.receive_model_event({"type": rt.RESPONSE_DONE}, 20)
    # long after the 100 ms were played out:
    assert model_events(session.receive_model_event(speech_started("user_2"), 5000)) == []


def test_client_initiated_interrupt_cancels_and_truncates() -> None:
    session = new_session(chunk_bytes=24000)
    play_item(session, "item_a", 1000, now=0)
    events = model_events(session.receive_client_frame(proto.interrupt_action(250, "item_a"), 300))
    assert [e["type"] for e in events] == ["response.cancel", "conversation.item.truncate"]
    assert events[1]["audio_end_ms"] == 250


def test_transcripts_of_both_sides_reach_the_client() -> None:
    session = new_session(transcript_hold_ms=250)
    events = []
    for event in (
        {"type": rt.INPUT_TRANSCRIPT_DELTA, "item_id": "u", "delta": "hel"},
        {"type": rt.INPUT_TRANSCRIPT_DELTA, "item_id": "u", "delta": "lo"},
        {"type": rt.INPUT_TRANSCRIPT_COMPLETED, "item_id": "u", "transcript": "hello"},
        {"type": rt.OUTPUT_TRANSCRIPT_DELTA, "item_id": "a", "delta": "hi "},
        {"type": rt.OUTPUT_TRANSCRIPT_DELTA, "item_id": "a", "delta": "the"},
    ):
        events += client_events(session.receive_model_event(event, 100))
    assert session.next_deadline_ms() == 350
    events += client_events(session.tick(350))  # the gathered pieces go out as one
    done = {"type": rt.OUTPUT_TRANSCRIPT_DONE, "item_id": "a", "transcript": "hi there"}
    events += client_events(session.receive_model_event(done, 400))
    assert [(e["role"], e["text"], e["final"]) for e in events] == [
        ("user", "hello", True),  # its pieces were still gathering: only the final goes
        ("assistant", "hi the", False),
        ("assistant", "hi there", True),
    ]


def test_model_errors_reach_the_client_except_benign_races() -> None:
    session = new_session()
    benign = {"type": "error", "error": {"code": "response_cancel_not_active", "message": "x"}}
    real = {"type": "error", "error": {"code": "invalid_value", "message": "bad thing"}}
    assert session.receive_model_event(benign, 0) == []
    (event,) = client_events(session.receive_model_event(real, 0))
    assert event == {"type": "error", "code": "model_error", "message": "bad thing"}


def test_speech_stopped_carries_the_end_of_speech_position() -> None:
    session = new_session()
    stopped = {"type": rt.SPEECH_STOPPED, "audio_end_ms": 1234, "item_id": "u"}
    assert client_events(session.receive_model_event(stopped, 0)) == [
        {"type": "speech_stopped", "audio_end_ms": 1234, "speech_end_ms": 734}
    ]


def test_keepalive_after_a_quiet_interval() -> None:
    session = new_session(keepalive_interval_ms=1000)
    assert session.tick(999) == []
    assert client_events(session.tick(1000)) == [{"type": "keepalive"}]
    assert session.next_deadline_ms() == 2000


def test_an_ended_session_ignores_everything() -> None:
    session = new_session()
    assert session.end("caller_gone") == [EndSession("caller_gone")]
    assert session.end("again") == []
    assert session.receive_client_frame(proto.audio_action(b"\x00\x00"), 0) == []
    assert session.receive_model_event(delta("a", b"\x00\x00"), 0) == []
    assert session.tick(10**9) == [] and session.next_deadline_ms() is None


def test_settings_refuse_chunks_that_cannot_fit_a_frame() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        BridgeSettings(chunk_bytes=proto.MAX_DOWNLINK_PCM_BYTES + 2)
    with pytest.raises(ValueError, match="even"):
        BridgeSettings(chunk_bytes=4801)


def test_largest_downlink_message_fits_one_frame() -> None:
    payload = proto.audio_event(b"\xff" * proto.MAX_DOWNLINK_PCM_BYTES, "item_" + "x" * 40)
    assert len(payload) <= proto.MAX_FRAME_BYTES


def test_audio_done_follows_the_last_audio_of_an_item() -> None:
    session = new_session(chunk_bytes=4800)
    play_item(session, "item_a", 50, now=0)
    session.receive_model_event(delta("item_a", pcm_of(1000)), 1)
    done = {"type": rt.OUTPUT_AUDIO_DONE, "item_id": "item_a", "response_id": "r"}
    events = client_events(session.receive_model_event(done, 2))
    assert [e["type"] for e in events] == ["audio", "audio_done"]
    assert events[1]["item_id"] == "item_a"


def test_a_flood_is_dropped_with_one_rate_limited_error_a_second() -> None:
    session = new_session(client_messages_per_second=10, client_message_burst=5)
    frame = proto.audio_action(b"\x00\x00" * 10)
    results = [session.receive_client_frame(frame, 0) for _ in range(20)]
    assert sum(1 for r in results if model_events(r)) == 5  # the burst
    errors = [e for r in results for e in client_events(r)]
    assert [e["code"] for e in errors] == ["rate_limited"]
    assert session.dropped_for_rate == 15
    # Tokens come back at the configured rate: 100 ms later, one more frame goes through.
    assert model_events(session.receive_client_frame(frame, 100))
    assert session.receive_client_frame(frame, 101) == []  # dropped, error already sent


def test_the_call_ends_cleanly_at_the_duration_limit() -> None:
    session = new_session(max_call_ms=60_000, keepalive_interval_ms=10**9)
    assert session.next_deadline_ms() == 60_000
    assert session.tick(59_999) == []
    commands = session.tick(60_000)
    assert client_events(commands) == [{"type": "session_ended", "reason": "max_duration"}]
    assert commands[-1] == EndSession("max_duration") and session.ended


def test_ending_tells_a_caller_who_is_still_there() -> None:
    session = new_session()
    commands = session.end("worker_shutdown", 5)
    assert client_events(commands) == [{"type": "session_ended", "reason": "worker_shutdown"}]
    assert isinstance(commands[-1], EndSession) and commands[-1].caller_present


def test_settings_refuse_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="MAX_CALL_SECONDS"):
        BridgeSettings(max_call_ms=0)
    with pytest.raises(ValueError, match="CLIENT_MESSAGES_PER_SECOND"):
        BridgeSettings(client_messages_per_second=0)


_FRAME_PARTS = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["action", "audio", "text", "played_ms", "item_id", "seq", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=40),
            st.sampled_from(["audio", "text", "interrupt", "ping", "AAAA", "AA==", "!!"]),
            st.lists(st.integers(), max_size=3),
        ),
        max_size=5,
    ).map(json.dumps),  # the stdlib: big integers and NaN, which a client may well send
)


@settings(max_examples=400, deadline=None)
@given(frames=st.lists(_FRAME_PARTS, max_size=12))
def test_fuzzed_frames_never_crash_and_never_stop_good_audio(frames: list) -> None:
    session = new_session()
    for i, frame in enumerate(frames):
        for command in session.receive_client_frame(frame, i):
            if isinstance(command, SendToClient):
                event = orjson.loads(command.payload)
                assert event["type"] in {"error", "pong"} or event["type"] == "session_ended"
            else:
                assert isinstance(command, SendToModel)
                CLIENT_EVENT.validate_python(command.event)
    pcm = pcm_of(480)
    good = session.receive_client_frame(proto.audio_action(pcm), 10_000)
    assert [base64.b64decode(e["audio"]) for e in model_events(good)][-1:] == [pcm] or any(
        e.get("code") == "audio_gap" for e in client_events(good)
    )


def test_a_new_model_session_is_given_the_conversation_so_far() -> None:
    session = new_session(history_turns=3)
    session.receive_model_event(
        {"type": rt.INPUT_TRANSCRIPT_COMPLETED, "item_id": "u1", "transcript": "book a table"}, 0
    )
    session.receive_model_event(
        {"type": rt.OUTPUT_TRANSCRIPT_DONE, "item_id": "a1", "transcript": "for how many?"}, 0
    )
    session.receive_client_frame(proto.text_action("two"), 0)
    session.receive_client_frame(proto.text_action("at eight"), 0)  # pushes out the oldest
    play_item(session, "a2", 1000, now=10)  # a reply in progress when the socket drops
    events = model_events(session.model_reconnected(20))
    for event in events:
        CLIENT_EVENT.validate_python(event)
    assert events[0]["type"] == "session.update"
    restored = [(e["item"]["role"], e["item"]["content"][0]["text"]) for e in events[1:-1]]
    assert restored == [("assistant", "for how many?"), ("user", "two"), ("user", "at eight")]
    assert events[-1] == rt.response_create()  # the reply that was lost is asked for again
    # The old session's reply will never finish: its late audio is dropped, nothing waits.
    assert client_events(session.receive_model_event(delta("a2", pcm_of(960)), 30)) == []
    assert not session.response_active


# --- model session continuity: replay, handover, proactive replacement -----------------

QUIET = {"keepalive_interval_ms": 10**9, "max_call_ms": 10**9}


def send_audio(session: BridgeSession, pcm: bytes, now: int, first_seq: int = 0) -> int:
    """Send ``pcm`` as 100 ms sequenced frames; the next seq."""
    seq = first_seq
    for start in range(0, len(pcm), ms_to_bytes(100)):
        frame = proto.audio_action(pcm[start : start + ms_to_bytes(100)], seq=seq)
        session.receive_client_frame(frame, now)
        seq += 1
    return seq


def appended(events: list[dict]) -> bytes:
    return b"".join(
        base64.b64decode(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append"
    )


def speech_stopped(audio_end_ms: int) -> dict:
    return {"type": rt.SPEECH_STOPPED, "event_id": "e", "audio_end_ms": audio_end_ms}


def test_a_new_model_session_hears_exactly_the_audio_after_the_last_turn_end() -> None:
    session = new_session(**QUIET)
    pcm = pcm_of(ms_to_bytes(1500))
    send_audio(session, pcm, 0)
    session.receive_model_event(speech_started(), 10)
    session.receive_model_event(speech_stopped(600), 20)
    session.receive_model_event({"type": rt.RESPONSE_CREATED, "response": {}}, 21)
    session.receive_model_event({"type": rt.RESPONSE_DONE, "response": {}}, 22)
    events = model_events(session.model_reconnected(30))
    for event in events:
        CLIENT_EVENT.validate_python(event)
    assert appended(events) == pcm[ms_to_bytes(600) :]
    assert all(
        len(base64.b64decode(e["audio"])) <= proto.MAX_UPLINK_PCM_BYTES
        for e in events
        if e["type"] == "input_audio_buffer.append"
    )
    assert "response.create" not in [e["type"] for e in events]  # nothing was owed


def test_the_replayed_audio_is_the_new_sessions_stream_from_zero() -> None:
    session = new_session(**QUIET)
    pcm = pcm_of(ms_to_bytes(2000))
    seq = send_audio(session, pcm[: ms_to_bytes(1000)], 0)
    session.receive_model_event(speech_stopped(400), 10)
    answered(session, 11)
    session.model_reconnected(20)  # the new session's stream: call audio from 400 ms on
    send_audio(session, pcm[ms_to_bytes(1000) :], 30, first_seq=seq)
    # 1,000 ms into the new session's stream is 1,400 ms into the call's uplink: the
    # caller is told the call's position, and the replay keeps what follows.
    (stopped,) = client_events(session.receive_model_event(speech_stopped(1000), 40))
    assert stopped["audio_end_ms"] == 1400
    answered(session, 41)
    assert appended(model_events(session.model_reconnected(50))) == pcm[ms_to_bytes(1400) :]


def answered(session: BridgeSession, now: int) -> None:
    session.receive_model_event({"type": rt.RESPONSE_CREATED, "response": {}}, now)
    session.receive_model_event({"type": rt.RESPONSE_DONE, "response": {}}, now)


def test_a_turn_lost_before_its_reply_is_secured_is_heard_again_whole() -> None:
    # Between the end of a turn and its reply (or its transcript) the model session is
    # the only holder of that turn: it stays in the replay, and the new session's VAD
    # answers it (no response.create, which would answer the previous turn).
    session = new_session(**QUIET)
    pcm = pcm_of(ms_to_bytes(1500))
    send_audio(session, pcm, 0)
    session.receive_model_event(speech_started(), 5)
    session.receive_model_event(speech_stopped(1200), 10)
    play_item(session, "a1", 300, now=12)  # the reply has started; no transcript yet
    events = model_events(session.model_reconnected(20))
    assert appended(events) == pcm
    assert "response.create" not in [e["type"] for e in events]
    # Once the user's words are history, the turn's audio goes.
    session.receive_model_event(speech_stopped(1200), 30)
    session.receive_model_event(
        {"type": rt.INPUT_TRANSCRIPT_COMPLETED, "item_id": "u", "transcript": "hi"}, 31
    )
    assert appended(model_events(session.model_reconnected(40))) == pcm[ms_to_bytes(1200) :]


def test_the_replay_keeps_at_most_replay_audio_ms() -> None:
    session = new_session(replay_audio_ms=1000, **QUIET)
    pcm = pcm_of(ms_to_bytes(3050))
    send_audio(session, pcm, 0)
    replayed = appended(model_events(session.model_reconnected(10)))
    # The newest second, whole 10 ms frames: an utterance longer than the cap loses its start.
    assert replayed == pcm[-ms_to_bytes(1000) :]
    assert new_session(replay_audio_ms=0).model_reconnected(0)[1:] == []


def lost_mid_reply(session: BridgeSession) -> None:
    """A user turn answered, then the model socket lost while the reply streams."""
    session.receive_model_event(speech_started(), 0)
    session.receive_model_event(speech_stopped(900), 10)
    session.receive_model_event(
        {"type": rt.INPUT_TRANSCRIPT_COMPLETED, "item_id": "u1", "transcript": "what time?"}, 11
    )
    play_item(session, "a1", 500, now=12)


def test_a_reply_lost_with_the_model_session_is_asked_for_again_before_the_replay() -> None:
    session = new_session(**QUIET)
    lost_mid_reply(session)
    send_audio(session, pcm_of(ms_to_bytes(300)), 20)
    kinds = [e["type"] for e in model_events(session.model_reconnected(30))]
    # Before the replay: speech in it, not yet reported, interrupts the reply as a barge-in.
    assert kinds == [
        "session.update",
        "conversation.item.create",
        "response.create",
        "input_audio_buffer.append",
    ]
    assert not session.at_turn_boundary  # until the new reply has come and gone


@pytest.mark.parametrize("case", ["user_speaking", "stopped_by_caller", "question_not_heard"])
def test_no_reply_is_asked_for_when_the_new_session_should_not_give_one(case: str) -> None:
    session = new_session(**QUIET)
    if case == "question_not_heard":
        session.receive_model_event(speech_stopped(900), 10)  # its transcript never came
        play_item(session, "a1", 500, now=12)
    else:
        lost_mid_reply(session)
    if case == "user_speaking":
        # The user talks over the reply: the replay holds their speech, and the new
        # session's VAD answers it.
        session.receive_model_event(speech_started("u2"), 100)
    elif case == "stopped_by_caller":
        session.receive_client_frame(proto.interrupt_action(100, "a1"), 100)  # cancel sent
    kinds = [e["type"] for e in model_events(session.model_reconnected(300))]
    assert "response.create" not in kinds


def test_a_typed_message_not_yet_answered_is_answered_by_the_new_session() -> None:
    session = new_session(**QUIET)
    session.receive_client_frame(proto.text_action("hello?"), 0)
    events = model_events(session.model_reconnected(10))
    assert [e["type"] for e in events][-2:] == ["conversation.item.create", "response.create"]


def test_turn_boundary_follows_the_reply() -> None:
    session = new_session(chunk_bytes=4800, **QUIET)
    assert session.at_turn_boundary
    session.receive_model_event(speech_stopped(900), 10)
    assert not session.at_turn_boundary  # server VAD's reply is on its way
    play_item(session, "a1", 50, now=11)
    assert not session.at_turn_boundary
    session.receive_model_event(delta("a1", pcm_of(1000)), 12)  # held for coalescing
    session.receive_model_event({"type": rt.RESPONSE_DONE, "response": {}}, 13)
    assert session.at_turn_boundary  # the rest went out with response.done
    session.receive_model_event(speech_started("u2"), 20)  # barge-in: a truncation waits
    assert not session.at_turn_boundary
    session.receive_client_frame(proto.interrupt_action(20, "a1"), 25)
    assert session.at_turn_boundary


def test_hand_over_and_resume_continue_the_call_in_another_worker() -> None:
    settings = {"max_call_ms": 60_000, "keepalive_interval_ms": 10**9, "chunk_bytes": 4800}
    first = new_session(**settings)
    first.receive_model_event({"type": rt.SESSION_UPDATED, "session": {}}, 0)  # ready sent
    frames = [pcm_of(ms_to_bytes(100), seq) for seq in range(8)]
    for seq in (0, 1, 2, 3, 4, 6):  # 5 is late: 6 waits for it
        first.receive_client_frame(proto.audio_action(frames[seq], seq=seq), 1000)
    first.receive_model_event(speech_stopped(200), 1100)
    first.receive_model_event(
        {"type": rt.INPUT_TRANSCRIPT_COMPLETED, "item_id": "u1", "transcript": "hi"}, 1101
    )
    play_item(first, "a1", 50, now=1102)
    first.receive_model_event(delta("a1", pcm_of(1000)), 1103)  # held: goes out now
    first.receive_model_event({"type": rt.INPUT_TRANSCRIPT_DELTA, "delta": "x"}, 1104)
    handover, commands = first.hand_over(40_000, saved_at_ms=1_700_000_000_000)
    assert not any(isinstance(c, EndSession) for c in commands)
    sent = client_events(commands)
    assert [e["type"] for e in sent] == ["audio", "transcript"]
    assert "session_ended" not in [e["type"] for e in sent]
    assert first.ended and first.tick(10**9) == [] and first.end("x") == []

    row = {"connection_id": {"S": "conn-1"}, **handover.to_attributes()}
    restored = CallHandover.from_attributes(row)
    assert restored == handover and restored is not None
    assert restored.response_interrupted  # a reply was streaming: asked for again

    assert restored is not None
    second = BridgeSession.resume(
        "conn-1", CONFIG, BridgeSettings(**settings), restored, now_ms=5_000_000
    )
    opened = model_events(second.open())
    assert [e["type"] for e in opened] == [
        "session.update",
        "conversation.item.create",
        "response.create",
        "input_audio_buffer.append",
    ]
    # The replay: frames 0..4 after the end of the turn at 200 ms (frame 6 is still held).
    assert appended(opened) == b"".join(frames[:5])[ms_to_bytes(200) :]
    # The uplink sequence goes on: 5 fills the gap and releases 6; a repeat is dropped.
    late = second.receive_client_frame(proto.audio_action(frames[5], seq=5), 5_000_010)
    assert appended(model_events(late)) == frames[5] + frames[6]
    repeat = second.receive_client_frame(proto.audio_action(frames[3], seq=3), 5_000_020)
    assert repeat == [] and second.uplink.duplicates == 1
    # No second ready for a caller that had one.
    updated = {"type": rt.SESSION_UPDATED, "session": {}}
    assert client_events(second.receive_model_event(updated, 5_000_030)) == []
    # The duration limit counts the whole call: 40 s were spent in the first worker.
    assert second.next_deadline_ms() == 5_020_000
    ending = second.tick(5_020_000)
    assert ending[-1] == EndSession("max_duration")


def test_a_call_handed_over_before_ready_gets_ready_from_the_next_worker() -> None:
    handover, _ = new_session().hand_over(10)
    assert not handover.client_ready and not handover.response_interrupted
    resumed = BridgeSession.resume("conn-1", CONFIG, None, handover, now_ms=0)
    resumed.open()
    updated = {"type": rt.SESSION_UPDATED, "session": {}}
    assert [e["type"] for e in client_events(resumed.receive_model_event(updated, 1))] == ["ready"]


REPLACE = {"model_session_max_ms": 10_000, "model_session_hard_max_ms": 20_000, **QUIET}


def test_an_old_model_session_is_replaced_at_a_turn_boundary() -> None:
    session = new_session(**REPLACE)
    assert session.next_deadline_ms() == 10_000
    assert session.tick(10_000) == [ReplaceModelSession()]
    assert session.next_deadline_ms() == 10**9  # nothing more until it is done
    assert session.tick(25_000) == []  # asked once
    session.model_reconnected(10_400)  # the link opened the new one
    assert session.next_deadline_ms() == 20_400


def test_replacement_waits_for_the_user_to_finish_and_the_reply_to_be_heard() -> None:
    session = new_session(chunk_bytes=24_000, **REPLACE)
    session.receive_model_event(speech_started(), 9_000)
    assert session.tick(10_000) == []  # the user is speaking
    assert session.next_deadline_ms() == 20_000  # only the hard limit needs a tick now
    session.receive_model_event(speech_stopped(3000), 11_000)
    play_item(session, "a1", 1000, now=11_100)
    done = session.receive_model_event({"type": rt.RESPONSE_DONE, "response": {}}, 11_200)
    assert ReplaceModelSession() not in done  # the caller is still hearing the reply
    assert session.next_deadline_ms() == 12_100  # when they will have heard it out
    assert session.tick(12_100) == [ReplaceModelSession()]


def test_at_the_hard_limit_the_session_is_replaced_mid_turn() -> None:
    session = new_session(**REPLACE)
    session.receive_model_event(speech_started(), 9_000)
    session.tick(10_000)
    assert session.tick(20_000) == [ReplaceModelSession()]
    # The user's audio of the turn in progress is in the replay.
    pcm = pcm_of(ms_to_bytes(500))
    send_audio(session, pcm, 20_001)
    assert appended(model_events(session.model_reconnected(20_300))) == pcm


def test_a_session_expired_error_is_not_passed_to_the_caller() -> None:
    session = new_session()
    expired = {
        "type": "error",
        "error": {"type": "invalid_request_error", "code": "session_expired", "message": "m"},
    }
    assert session.receive_model_event(expired, 0) == []


def test_settings_refuse_a_soft_limit_above_the_hard_one() -> None:
    with pytest.raises(ValueError, match="MODEL_SESSION_MAX_SECONDS"):
        BridgeSettings(model_session_max_ms=60 * 60_000)
    with pytest.raises(ValueError, match="replay_audio_ms"):
        BridgeSettings(replay_audio_ms=-1)
