"""Fixtures for the page in headless Chromium: the browser with a fake microphone, a server
for the page to call, and the page itself.

``page_url`` and ``ws_url`` are fixtures so a test module (or a conftest further down) can
point the same tests at another stack, e.g. the full local stack, by overriding them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import BrowserContext, Playwright, sync_playwright

from tests.browser.audio_analysis import MicrophoneSignal, write_wav
from tests.browser.fake_server import FakeVoiceServer, PageConnection
from tests.browser.voice_page import StartCall, VoicePage

CHROMIUM = Path("/usr/bin/chromium")  # Debian's; a browser is never downloaded
STATIC_DIR = Path(__file__).resolve().parents[2] / "static"


def chromium_args(microphone_wav: Path) -> list[str]:
    return [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        # Every getUserMedia plays the file from its start, once (%noloop), then silence.
        f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",  # the tests hear the playback through the page's tap instead
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]


@pytest.fixture(scope="session")
def chromium_executable() -> Path:
    """Skips without Debian's chromium, except in CI, where a skip would hide a failure."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; browser tests must run in CI")
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="session")
def fake_microphone() -> MicrophoneSignal:
    """What the fake microphone says: a 1 kHz tone, then a 15 kHz one, between silences."""
    return MicrophoneSignal()


@pytest.fixture(scope="session")
def fake_microphone_wav(
    fake_microphone: MicrophoneSignal, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("microphone") / "tone-burst.wav"
    return write_wav(path, fake_microphone.samples(), fake_microphone.rate_hz)


@pytest.fixture(scope="session")
def voice_server() -> Iterator[FakeVoiceServer]:
    server = FakeVoiceServer(STATIC_DIR)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def page_url(voice_server: FakeVoiceServer) -> str:
    return f"{voice_server.http_url}/"


@pytest.fixture(scope="session")
def ws_url(voice_server: FakeVoiceServer) -> str:
    return voice_server.ws_url


def launch_chromium(
    playwright: Playwright, executable: Path, microphone_wav: Path, profile_dir: Path
) -> BrowserContext:
    """Chromium whose fake microphone plays ``microphone_wav``: the file is fixed per browser
    process, so a test that needs another one launches its own browser with this."""
    return playwright.chromium.launch_persistent_context(
        user_data_dir=profile_dir,
        executable_path=executable,
        headless=False,  # --headless=new is passed explicitly, with the other flags
        args=chromium_args(microphone_wav),
        viewport={"width": 900, "height": 1000},
    )


# Package scope, not session: the sync API keeps an event loop running in this thread
# until it stops, and the tests after this package call asyncio.run().
@pytest.fixture(scope="package")
def playwright_driver() -> Iterator[Playwright]:
    """One Playwright for the browser tests: the sync API cannot run two at once in a
    thread."""
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="package")
def browser_context(
    chromium_executable: Path,  # first: skip before starting anything
    playwright_driver: Playwright,
    fake_microphone_wav: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BrowserContext]:
    context = launch_chromium(
        playwright_driver,
        chromium_executable,
        fake_microphone_wav,
        tmp_path_factory.mktemp("chromium-profile"),
    )
    yield context
    context.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def open_page(
    browser_context: BrowserContext, page_url: str, ws_url: str
) -> Iterator[Callable[..., VoicePage]]:
    """Opens the page with ``?ws=`` and test settings; keyword arguments add query parameters.

    Defaults for waveform tests: audio processing off and the playback tap on. ``init_script``
    runs before the page's scripts. Fails the test if the page threw an uncaught error.
    """
    opened: list[VoicePage] = []

    def open_(
        path: str = "", init_script: str | None = None, **query: str | int | None
    ) -> VoicePage:
        params = {"ws": ws_url, "processing": "off", "test_tap": 1, **query}
        url = f"{page_url}{path}?{urlencode({k: v for k, v in params.items() if v is not None})}"
        page = browser_context.new_page()
        if init_script:
            page.add_init_script(init_script)  # runs before the page's own scripts
        voice_page = VoicePage(page, url)
        opened.append(voice_page)
        return voice_page.load()

    yield open_
    for voice_page in opened:
        voice_page.page.close()
    for voice_page in opened:
        assert not voice_page.page_errors, f"the page threw: {voice_page.page_errors}"


@pytest.fixture
def start_call(open_page: Callable[..., VoicePage], voice_server: FakeVoiceServer) -> StartCall:
    """Opens the page (same arguments as ``open_page``), presses Connect, and returns the page
    with the server's side of its WebSocket."""

    def start(path: str = "", **query: str | int | None) -> tuple[VoicePage, PageConnection]:
        page = open_page(path, **query)
        before = len(voice_server.connections)
        page.connect()
        return page, voice_server.connection_after(before)

    return start
