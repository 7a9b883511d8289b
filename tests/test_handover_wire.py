"""The handover state on the session row: lossless, capped in size, and strict on input."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.handover import (
    ATTR_HANDOVER,
    MAX_HANDOVER_BYTES,
    CallHandover,
    HandoverError,
)


def handover(**fields: object) -> CallHandover:
    values: dict[str, object] = {
        "history": (("user", "book a table"), ("assistant", "for how many?")),
        "next_seq": 42,
        "held": ((44, b"\x01\x00" * 10), (45, b"\x02\x00" * 5)),
        "replay_audio": bytes(range(256)) * 10,
        "response_interrupted": True,
        "call_elapsed_ms": 123_456,
        "saved_at_ms": 1_700_000_000_000,
        "uplink_bytes": 999_999,
        "client_ready": True,
    }
    return CallHandover(**(values | fields))  # type: ignore[arg-type]


def test_round_trip_through_dynamodb_attributes() -> None:
    original = handover()
    attributes = original.to_attributes()
    assert list(attributes) == [ATTR_HANDOVER]
    assert isinstance(attributes[ATTR_HANDOVER]["B"], bytes)
    assert CallHandover.from_attributes({"pk": {"S": "c"}, **attributes}) == original


def test_a_row_without_a_handover_has_none() -> None:
    assert CallHandover.from_attributes({"connection_id": {"S": "c"}}) is None


def test_binary_as_base64_text_as_in_dynamodb_json_is_read_too() -> None:
    original = handover()
    encoded = base64.b64encode(original.to_bytes()).decode()
    assert CallHandover.from_attributes({ATTR_HANDOVER: {"B": encoded}}) == original
    raw = bytearray(original.to_bytes())
    assert CallHandover.from_attributes({ATTR_HANDOVER: {"B": raw}}) == original


_TEXT = st.text(max_size=60)


@settings(max_examples=200, deadline=None)
@given(
    history=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), _TEXT), max_size=8),
    next_seq=st.integers(0, 2**40),
    held=st.dictionaries(st.integers(0, 2**31), st.binary(max_size=64), max_size=5),
    replay=st.binary(max_size=2_000),
    flags=st.tuples(st.booleans(), st.booleans()),
    numbers=st.tuples(st.integers(0, 2**40), st.integers(0, 2**45), st.integers(0, 2**40)),
)
def test_any_handover_round_trips(
    history: list[tuple[str, str]],
    next_seq: int,
    held: dict[int, bytes],
    replay: bytes,
    flags: tuple[bool, bool],
    numbers: tuple[int, int, int],
) -> None:
    original = CallHandover(
        history=tuple(history),
        next_seq=next_seq,
        held=tuple(sorted(held.items())),
        replay_audio=replay,
        response_interrupted=flags[0],
        call_elapsed_ms=numbers[0],
        saved_at_ms=numbers[1],
        uplink_bytes=numbers[2],
        client_ready=flags[1],
    )
    assert CallHandover.from_bytes(original.to_bytes()) == original
    assert CallHandover.from_attributes(original.to_attributes()) == original
    assert original.encoded_size() == len(original.to_bytes())


def test_the_oldest_history_goes_first_to_fit_the_item_limit() -> None:
    turns = tuple(
        ("user" if i % 2 else "assistant", f"turn {i} " + "é" * 2_000) for i in range(200)
    )
    big = handover(history=turns, replay_audio=b"\x00" * 48_000)
    assert big.encoded_size() > MAX_HANDOVER_BYTES
    encoded = big.to_attributes()[ATTR_HANDOVER]["B"]
    assert len(encoded) <= MAX_HANDOVER_BYTES
    fitted = CallHandover.from_bytes(encoded)
    assert fitted.replay_audio == big.replay_audio  # audio kept: the history made room
    assert fitted.history == turns[-len(fitted.history) :]  # the newest turns, in order
    assert 0 < len(fitted.history) < len(turns)
    # As many turns as fit: one more would not.
    one_more = turns[-len(fitted.history) - 1 :]
    assert handover(history=one_more, replay_audio=big.replay_audio).encoded_size() > (
        MAX_HANDOVER_BYTES
    )


def test_then_the_oldest_replay_audio_goes() -> None:
    audio = bytes(i % 251 for i in range(400_000))
    big = handover(replay_audio=audio)
    fitted = CallHandover.from_attributes(big.to_attributes())
    assert fitted is not None
    assert fitted.history == ()
    assert audio.endswith(fitted.replay_audio)  # the newest audio, in whole 10 ms frames
    assert (len(audio) - len(fitted.replay_audio)) % 480 == 0
    assert MAX_HANDOVER_BYTES - 480 < fitted.encoded_size() <= MAX_HANDOVER_BYTES
    assert fitted.held == big.held and fitted.next_seq == big.next_seq


def test_a_small_handover_is_stored_unchanged() -> None:
    small = handover()
    assert small.fitted() is small


def _with_header(header: object, blob: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return b"\x01" + len(text).to_bytes(4, "big") + text + blob


_GOOD_HEADER = json.loads(handover(held=(), replay_audio=b"")._header_bytes())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x00",
        b"\x02" + bytes(4),  # a version this code does not know
        b"\x01\x00\x00\x10\x00{}",  # header longer than the data
        b"\x01\x00\x00\x00\x03abc",  # not JSON
        b"\x01\x00\x00\x00\x02\xff\xfe",  # not UTF-8
        _with_header([1, 2]),
        _with_header({}),
        _with_header(_GOOD_HEADER | {"next_seq": -1}),
        _with_header(_GOOD_HEADER | {"next_seq": True}),
        _with_header(_GOOD_HEADER | {"history": [["user"]]}),
        _with_header(_GOOD_HEADER | {"history": [["user", 5]]}),
        _with_header(_GOOD_HEADER | {"held": [[1]]}),
        _with_header(_GOOD_HEADER | {"response_interrupted": "yes"}),
        _with_header(_GOOD_HEADER | {"replay_bytes": 10}, b"\x00" * 4),  # audio cut short
        _with_header(_GOOD_HEADER, b"\x00" * 4),  # audio the header does not account for
    ],
)
def test_malformed_handovers_are_refused_with_a_clear_error(data: bytes) -> None:
    with pytest.raises(HandoverError):
        CallHandover.from_bytes(data)
    with pytest.raises(ValueError):  # HandoverError is a ValueError
        CallHandover.from_attributes({ATTR_HANDOVER: {"B": data}})


@pytest.mark.parametrize(
    "attribute", [{"S": "text"}, "raw", {"B": 5}, {"B": "not base64!"}, {"N": "1"}]
)
def test_an_attribute_of_the_wrong_kind_is_refused(attribute: object) -> None:
    with pytest.raises(HandoverError):
        CallHandover.from_attributes({ATTR_HANDOVER: attribute})


def test_the_well_formed_header_used_above_decodes() -> None:
    assert CallHandover.from_bytes(_with_header(_GOOD_HEADER)).next_seq == 42
