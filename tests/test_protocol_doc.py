"""docs/protocol.md documents every action, event type and error code of wire/client.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from wire import client as proto

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()


@pytest.mark.parametrize(
    "name",
    [a.value for a in proto.Action]
    + [t.value for t in proto.EventType]
    + [c.value for c in proto.ErrorCode],
)
def test_every_protocol_name_is_documented(name: str) -> None:
    assert f"| `{name}` |" in DOC, f"docs/protocol.md has no table row for `{name}`"


def test_documented_limits_match_the_code() -> None:
    assert proto.MAX_UPLINK_PCM_BYTES == 16 * 1024 and "16 KB of PCM" in DOC
    assert proto.MAX_FRAME_BYTES == 32 * 1024 and "32 KB" in DOC
    assert f"{proto.MAX_DOWNLINK_PCM_BYTES:,} bytes" in DOC
