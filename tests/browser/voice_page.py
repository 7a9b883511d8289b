"""The page under test, driven through its controls and read through ``__voiceAgentTest``."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import Page

from tests.browser.audio_analysis import float32_le
from tests.browser.fake_server import PageConnection


class VoicePage:
    """A loaded page plus everything it did that a test may want to assert on."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.requested_urls: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._on_console)
        page.on("request", lambda request: self.requested_urls.append(request.url))
        page.on("websocket", lambda ws: self.requested_urls.append(ws.url))

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def load(self) -> VoicePage:
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.__voiceAgentTest !== undefined")
        return self

    def connect(self) -> None:
        """Presses Connect and waits until audio flows (socket open and microphone on)."""
        self.page.click("#connect")
        self.wait_for_state("live")

    def wait_for_state(self, state: str, timeout_ms: float = 10_000) -> None:
        self.page.wait_for_function(
            "state => window.__voiceAgentTest.snapshot().state === state",
            arg=state,
            timeout=timeout_ms,
        )

    def snapshot(self) -> dict[str, Any]:
        return self.page.evaluate("() => window.__voiceAgentTest.snapshot()")

    def tap(self) -> list[float]:
        """Every sample the playback node has output, at the AudioContext's rate."""
        encoded = self.page.evaluate("() => window.__voiceAgentTest.tapBase64()")
        return float32_le(base64.b64decode(encoded))

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def foreign_requests(self, *allowed_origins: str) -> list[str]:
        """Requests to anywhere but the given origins (the page must work offline)."""
        allowed = {_origin(o) for o in allowed_origins}
        return [
            u
            for u in self.requested_urls
            if not u.startswith("data:") and _origin(u) not in allowed
        ]


# The ``start_call`` fixture: opens the page, presses Connect, returns both ends of the call.
StartCall = Callable[..., tuple["VoicePage", PageConnection]]


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"
