"""The page's controls and what it shows: transcripts, errors, status, and how it looks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.browser.audio_analysis import MicrophoneSignal, active_span, pcm16_to_floats
from tests.browser.fake_server import SUBPATH, FakeVoiceServer, agent_audio, wait_until
from tests.browser.voice_page import StartCall, VoicePage
from wire.audio import SAMPLE_RATE_HZ
from wire.client import (
    TextIn,
    error_event,
    session_ended_event,
    speech_stopped_event,
    transcript_event,
)

OpenPage = Callable[..., VoicePage]


def test_transcripts_show_pieces_then_the_final_text(start_call: StartCall) -> None:
    page, connection = start_call()
    connection.send(
        transcript_event("user", "Hel", final=False, item_id="u1"),
        transcript_event("user", "lo th", final=False, item_id="u1"),
        transcript_event("assistant", "Hi! ", final=False, item_id="a1"),
    )
    user_line = page.page.locator("#transcript li.user").first
    page.page.wait_for_selector("#transcript li.assistant")
    assert user_line.locator(".words").inner_text() == "Hello th"
    assert "partial" in (user_line.get_attribute("class") or "")

    connection.send(
        transcript_event("user", "Hello there.", final=True, item_id="u1"),
        transcript_event("assistant", "How can", final=False, item_id="a1"),
        transcript_event("assistant", "Hi! How can I help?", final=True, item_id="a1"),
        transcript_event("user", "Bye.", final=True, item_id="u2"),
    )
    page.page.wait_for_function("() => document.querySelectorAll('#transcript li').length === 3")
    lines = page.page.locator("#transcript li")
    assert lines.all_inner_texts() == [
        "You\nHello there.",
        "Agent\nHi! How can I help?",
        "You\nBye.",
    ]
    assert page.page.locator("#transcript li.partial").count() == 0


def test_server_errors_and_the_end_of_a_session_are_shown_readably(
    start_call: StartCall,
) -> None:
    page, connection = start_call()
    assert page.page.is_hidden("#errors-card")
    connection.send(error_event("rate_limited", "too many frames; some were dropped"))
    page.page.wait_for_selector("#errors li")
    assert page.text("#errors li") == "rate_limited too many frames; some were dropped"
    assert page.page.get_by_role("alert").is_visible()
    assert page.snapshot()["state"] == "live", "an error event alone does not end the call"

    connection.send(session_ended_event("model_unavailable"))
    page.wait_for_state("idle")
    assert page.text("#status") == "Call ended: the server ended the session (model_unavailable)."
    assert connection.closed.wait(5), "the page closes the socket after session_ended"


def test_a_refused_connection_and_a_wrong_url_are_explained(open_page: OpenPage) -> None:
    refused = open_page(ws="ws://127.0.0.1:9/nothing-listens-here")
    refused.page.click("#connect")
    refused.page.wait_for_selector("#errors li")
    refused.wait_for_state("idle")
    assert "(code 1006)" in refused.text("#errors li")
    assert refused.text("#status").startswith("Call ended:")
    assert refused.page.is_enabled("#connect")

    wrong = open_page(ws="https://example.com/socket")
    wrong.page.click("#connect")
    wrong.page.wait_for_selector("#errors li")
    assert wrong.text("#errors li") == (
        "bad_url the WebSocket URL must start with ws:// or wss://, not https://"
    )
    assert wrong.snapshot()["state"] == "idle"
    assert wrong.foreign_requests(wrong.url) == []


def test_a_refused_microphone_is_explained(open_page: OpenPage) -> None:
    page = open_page(
        init_script="""navigator.mediaDevices.getUserMedia = () =>
            Promise.reject(new DOMException("Permission denied", "NotAllowedError"));"""
    )
    page.page.click("#connect")
    page.page.wait_for_selector("#errors li")
    page.wait_for_state("idle")
    assert page.text("#errors li") == "microphone NotAllowedError: Permission denied"
    assert page.text("#status") == "Call ended: could not start (microphone)."


def test_controls_connect_mute_type_and_hang_up(
    open_page: OpenPage, voice_server: FakeVoiceServer, fake_microphone: MicrophoneSignal
) -> None:
    page = open_page(token="s3cret")
    roles = page.page.get_by_role
    assert roles("textbox", name="WebSocket URL").input_value() == voice_server.ws_url
    assert page.page.input_value("#token") == "s3cret"
    assert roles("button", name="Hang up").is_disabled()
    assert roles("textbox", name="Type a message").is_disabled()

    # Mute before the call: the tone must not leave the page.
    mute = roles("button", name="Mute")
    mute.click()
    assert mute.get_attribute("aria-pressed") == "true"
    before = len(voice_server.connections)
    roles("button", name="Connect").click()
    page.wait_for_state("live")
    connection = voice_server.connection_after(before)
    assert connection.query.get("token") == "s3cret"
    assert roles("button", name="Connect").is_disabled()
    tone_middle_ms = (fake_microphone.lead_s + fake_microphone.tone_s / 3) * 1000
    connection.wait_for_uplink_ms(tone_middle_ms)
    assert not any(connection.uplink_pcm()), "muted, yet sound was sent"

    unmuted_at_ms = connection.uplink_ms()
    mute.click()
    assert mute.get_attribute("aria-pressed") == "false"
    meter = roles("meter", name="Microphone")
    page.page.wait_for_function(
        "() => Number(document.getElementById('level').getAttribute('aria-valuenow')) > 50"
    )
    connection.wait_for_uplink_ms((fake_microphone.lead_s + fake_microphone.tone_s) * 1000)
    span = active_span(pcm16_to_floats(connection.uplink_pcm()), threshold=0.05)
    assert span is not None and span[0] / SAMPLE_RATE_HZ * 1000 >= unmuted_at_ms - 1
    assert meter.is_visible()

    text_box = roles("textbox", name="Type a message")
    text_box.fill("What time is it?")
    text_box.press("Enter")
    wait_until(lambda: connection.texts, 5, "the typed message")
    assert connection.texts == [TextIn(text="What time is it?")]
    assert page.text("#transcript li.user .words") == "What time is it?"

    roles("button", name="Hang up").click()
    page.wait_for_state("idle")
    assert connection.closed.wait(5)
    assert page.text("#status") == "Call ended: you hung up."
    assert roles("button", name="Connect").is_enabled()
    assert not page.snapshot()["microphoneLive"], "the microphone is released"
    assert not connection.rejected and not connection.binary_frames


def test_page_works_from_a_sub_path_and_fetches_nothing_from_elsewhere(
    start_call: StartCall, voice_server: FakeVoiceServer
) -> None:
    page, _ = start_call(SUBPATH)
    assert page.page.url.startswith(f"{voice_server.http_url}/{SUBPATH}")
    assert page.foreign_requests(voice_server.http_url) == []
    assert page.console_errors == []


def test_screenshot_of_a_call_in_progress(start_call: StartCall, screenshot_dir: Path) -> None:
    page, connection = start_call()
    connection.wait_for_uplink_ms(1_200)
    connection.send(
        transcript_event("user", "What's the weather like in Lisbon today?", True, "u1"),
        speech_stopped_event(1100, 600),
        transcript_event(
            "assistant", "Sunny and 24 degrees, with a light breeze from the ", False, "a1"
        ),
        *agent_audio("a1", 3.0),
        error_event("model_error", "The model rejected the request: example of an error."),
    )
    page.page.wait_for_selector("#agent-speaking", state="visible")
    page.page.wait_for_timeout(200)
    for width, name in [(900, "page-desktop.png"), (390, "page-phone.png")]:
        # A viewport as tall as the page: no scrollbar to narrow the layout mid-screenshot.
        page.page.set_viewport_size({"width": width, "height": 800})
        height = page.page.evaluate("() => document.documentElement.scrollHeight")
        page.page.set_viewport_size({"width": width, "height": height})
        overflow = page.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"the page scrolls sideways at {width} px"
        path = screenshot_dir / name
        page.page.screenshot(path=str(path))
        assert path.stat().st_size > 10_000
    print(f"screenshots: {screenshot_dir}")
