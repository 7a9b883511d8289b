"""Static checks of the page's files: self-contained (no CDN, no web fonts), no build step."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
PAGE_FILES = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in {".html", ".js", ".css"})


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: p.name)
def test_page_files_load_nothing_from_the_network(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"https?://", text), "the page must work offline from any static host"
    assert "@import" not in text and "@font-face" not in text


REFERENCE_PATTERNS = [
    r"""from\s+["']\./([\w.-]+)["']""",  # ES module imports
    r"""worklet\(["']([\w.-]+\.js)["']\)""",  # AudioWorklet modules (call.js)
    r"""(?:src|href)=["']([\w.-]+\.(?:js|css))["']""",  # index.html
]


def test_every_file_the_page_references_is_in_static() -> None:
    referenced = {
        name
        for path in PAGE_FILES
        for pattern in REFERENCE_PATTERNS
        for name in re.findall(pattern, path.read_text())
    }
    assert {"app.js", "style.css", "capture-worklet.js", "playback-worklet.js"} <= referenced
    assert referenced <= {p.name for p in PAGE_FILES}


def test_capture_uses_an_audio_worklet_never_a_script_processor() -> None:
    code = "".join(p.read_text() for p in PAGE_FILES if p.suffix == ".js")
    assert "createScriptProcessor" not in code
    assert 'registerProcessor("capture"' in code and 'registerProcessor("playback"' in code
