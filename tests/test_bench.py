"""``voice-agent bench``: correctness, not speed (benchmarks are not timed tests).

The statistics, the ramp's stopping rule, the turn script against the emulator's VAD, the
relay arithmetic, and one tiny end-to-end run (``--quick --json``) whose JSON must carry
every section; bad options end with exit code 2 and a one-line reason.
"""

from __future__ import annotations

import io
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emulators.realtime import TurnDetector, speech_spans
from voice_agent import bench
from voice_agent.bench import (
    LevelOutcome,
    SessionClock,
    downlink_relay_ms,
    frame_wait_ms,
    level_passes,
    marked,
    next_level,
    percentile,
    ramp_capacity,
    ramp_levels,
    read_marker,
    speech_script,
    summarize,
    uplink_relay_ms,
)
from voice_agent.cli import main
from wire.audio import BYTES_PER_MS, ms_to_bytes

REPO = Path(__file__).resolve().parent.parent

# --- statistics ---------------------------------------------------------------------------


def test_percentile_by_hand() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([10, 20, 30, 40, 50], 95) == pytest.approx(48.0)
    assert percentile([7], 99) == 7
    assert percentile([3, 1, 2], 50) == 2  # order of the input does not matter


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=200), st.integers(1, 99))
def test_percentile_matches_the_standard_library(values: list[float], q: int) -> None:
    inclusive = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, q) == pytest.approx(inclusive[q - 1], rel=1e-9, abs=1e-6)
    assert percentile(values, 50) == pytest.approx(statistics.median(values), abs=1e-6)


def test_summary() -> None:
    assert summarize([]) is None
    summary = summarize(range(1, 101))
    assert summary is not None
    assert (summary.count, summary.min, summary.max) == (100, 1, 100)
    assert summary.median == 50.5
    assert summary.p95 == pytest.approx(95.05)
    assert summary.p99 == pytest.approx(99.01)
    assert summary.to_json()["p99"] == 99.0


def test_frame_wait() -> None:
    # Speech ends at 700 ms: the 500 ms silence window is complete at 1,200 ms.
    assert frame_wait_ms(700, 100) == 0
    assert frame_wait_ms(730, 100) == 70  # 1,230 ms lies in the frame sent at 1,300 ms
    assert frame_wait_ms(730, 20) == 10
    assert frame_wait_ms(730, 200) == 170


# --- the ramp -----------------------------------------------------------------------------


ISSUE_LEVELS = (10, 25, 50, 100, 200, 300)


def test_ramp_levels() -> None:
    assert ramp_levels(60, ISSUE_LEVELS) == [10, 25, 50, 60]
    assert ramp_levels(300, ISSUE_LEVELS) == [10, 25, 50, 100, 200, 300]
    assert ramp_levels(2, ISSUE_LEVELS) == [2]
    with pytest.raises(ValueError):
        ramp_levels(0)
    # The default steps rise and pass the issue's target of 300 calls.
    assert list(bench.DEFAULT_LEVELS) == sorted(set(bench.DEFAULT_LEVELS))
    assert 300 in bench.DEFAULT_LEVELS


def test_a_level_passes_only_without_errors_and_within_the_limit() -> None:
    assert level_passes(LevelOutcome(10, 50.0, 0), 50)
    assert not level_passes(LevelOutcome(10, 50.1, 0), 50)
    assert not level_passes(LevelOutcome(10, 3.0, 1), 50)
    assert not level_passes(LevelOutcome(10, None, 0), 50)  # nothing measured


def run_fake_ramp(
    max_calls: int, p99_at: dict[int, float], errors_at: frozenset[int] = frozenset()
) -> tuple[list[int], tuple[int, int | None]]:
    """The bench's ramp loop with fake measurements: the levels run and the verdict."""
    levels = ramp_levels(max_calls, ISSUE_LEVELS)
    done: list[LevelOutcome] = []
    while (calls := next_level(levels, done, 50)) is not None:
        done.append(LevelOutcome(calls, p99_at[calls], 1 if calls in errors_at else 0))
    return [d.calls for d in done], ramp_capacity(done, 50)


def test_the_ramp_stops_at_the_first_level_over_the_limit() -> None:
    p99 = {10: 5.0, 25: 9.0, 50: 30.0, 100: 80.0, 200: 10.0, 300: 10.0}
    ran, verdict = run_fake_ramp(300, p99)
    assert ran == [10, 25, 50, 100]  # 200 would pass, but the ramp never goes back up
    assert verdict == (50, 100)


def test_the_ramp_stops_at_errors_even_when_fast() -> None:
    p99 = dict.fromkeys((10, 25, 50, 100), 1.0)
    ran, verdict = run_fake_ramp(100, p99, errors_at=frozenset({25}))
    assert ran == [10, 25]
    assert verdict == (10, 25)


def test_the_ramp_ends_at_max_calls_when_every_level_passes() -> None:
    ran, verdict = run_fake_ramp(60, {10: 1.0, 25: 2.0, 50: 3.0, 60: 4.0})
    assert ran == [10, 25, 50, 60]
    assert verdict == (60, None)


def test_keep_going_runs_every_level_but_the_verdict_is_the_first_failure() -> None:
    levels = ramp_levels(100, ISSUE_LEVELS)
    done: list[LevelOutcome] = []
    p99 = {10: 5.0, 25: 80.0, 50: 20.0, 100: 90.0}
    while (calls := next_level(levels, done, 50, keep_going=True)) is not None:
        done.append(LevelOutcome(calls, p99[calls], 0))
    assert [d.calls for d in done] == [10, 25, 50, 100]
    assert ramp_capacity(done, 50) == (10, 25)


def test_a_first_level_that_fails_carries_nothing() -> None:
    assert run_fake_ramp(25, {10: 70.0, 25: 1.0}) == ([10], (0, 10))


# --- the callers' audio -------------------------------------------------------------------


def test_the_script_turns_end_where_the_emulators_vad_says() -> None:
    script = speech_script(6)
    spans = speech_spans(script.pcm)
    assert [end // BYTES_PER_MS for _, end in spans] == list(script.turn_end_ms)
    assert script.audio_ms == len(script.pcm) // BYTES_PER_MS
    # Speech ends spread over the frame grid, so the frame wait is not always zero.
    assert len({end % 100 for end in script.turn_end_ms}) > 3


def test_the_call_marker_round_trips_and_stays_below_the_vad() -> None:
    pcm = bytes(ms_to_bytes(100))
    for number in (1, 4095, 4096, 7_000_000):
        head = marked(pcm, number)
        assert len(head) == len(pcm)
        assert read_marker(head[:6]) == number
        assert TurnDetector().feed(head) == []  # still silence to the model
    assert read_marker(pcm[:6]) is None
    with pytest.raises(ValueError):
        marked(pcm, 0)


# --- relay arithmetic ---------------------------------------------------------------------


def clock_with(
    appends: list[tuple[float, int]], deltas: list[tuple[float, str, int]]
) -> SessionClock:
    clock = SessionClock(lambda marker, clock: None)
    clock.appends = appends
    clock.deltas = deltas
    return clock


def test_uplink_relay_pairs_each_frame_with_the_append_that_completes_it() -> None:
    frame = 4800
    sent = [1.000, 1.100, 1.200]
    # The worker forwarded frames 0 and 1 together (one append ends at 2 frames), frame 2
    # alone; nothing yet for a 4th frame.
    clock = clock_with([(1.030, 2 * frame), (1.215, 3 * frame)], [])
    assert uplink_relay_ms(sent, frame, clock) == pytest.approx([30.0, -70.0, 15.0])
    assert uplink_relay_ms([*sent, 1.3], frame, clock) == pytest.approx([30.0, -70.0, 15.0])


def test_downlink_relay_waits_for_the_last_byte_of_each_delta() -> None:
    deltas = [(2.000, "a", 2400), (2.010, "a", 4800), (2.020, "a", 9600), (2.5, "b", 100)]
    # The caller got the first delta alone, then the next two coalesced into one message;
    # item "b" was cut by barge-in and never arrived.
    received = [(2.004, "a", 2400), (2.065, "a", 9600)]
    assert downlink_relay_ms(deltas, received) == pytest.approx([4.0, 55.0, 45.0])
    assert downlink_relay_ms(deltas, received, first_only=True) == pytest.approx([4.0])


def test_the_emulator_clock_reads_appends_and_deltas() -> None:
    registered: dict[int, SessionClock] = {}
    clock = SessionClock(registered.__setitem__)
    import base64

    first = base64.b64encode(marked(bytes(480), 42)).decode()
    clock.received(json.dumps({"type": "input_audio_buffer.append", "audio": first}), 1.0)
    clock.received(json.dumps({"type": "session.update", "session": {}}), 1.1)
    clock.sending(
        json.dumps(
            {
                "type": "response.output_audio.delta",
                "item_id": "item_1",
                "delta": base64.b64encode(bytes(2400)).decode(),
            }
        ),
        1.2,
    )
    assert registered == {42: clock}
    assert clock.appends == [(1.0, 480)]
    assert clock.deltas == [(1.2, "item_1", 2400)]


def test_progress_without_a_terminal_prints_one_line_per_update() -> None:
    stream = io.StringIO()
    progress = bench.Progress(10, stream=stream)
    progress.update("first", 5)
    progress.update("second", 5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "50%" in lines[0] and lines[0].endswith("first")
    assert "100%" in lines[1]


# --- the command --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-calls", "0"], "max calls must be 1-5000"),
        (["--turns", "many"], "turns must be an integer"),
        (["--chunk-bytes", "4801"], "not an even number of bytes"),
        (["--frame-ms", "100,5"], "outside 20-341 ms"),
        (["--skip", "latency"], "unknown phase latency"),
        (["--limit-ms", "-1"], "limit must be positive"),
    ],
)
def test_bad_options_exit_2(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_output_path_that_is_a_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["bench", "--quick", "--out", str(blocker / "sub")]) == 2
    assert "cannot create" in capsys.readouterr().err


def test_quick_json_runs_end_to_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "bench", "--quick", "--json", "--out",
         str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert {
        "machine", "settings", "cold_start", "latency", "relay", "capacity",
        "chunk_sweep", "frame_sweep", "targets", "elapsed_s",
    } <= set(report)  # fmt: skip
    assert "%" in done.stderr  # the progress bar
    latency = report["latency"]
    for path in ("full", "direct"):
        assert latency[path]["latency_ms"]["count"] >= 1
        # As heard = VAD silence + frame wait + path.
        assert latency[path]["latency_ms"]["median"] > 500
    assert {"added_median_ms", "ratio_median", "meets_target"} <= set(latency)
    for direction in ("uplink", "downlink", "downlink_first"):
        assert report["relay"][direction]["full"]["count"] >= 1
    capacity = report["capacity"]
    assert [level["calls"] for level in capacity["levels"]] == [2]
    assert capacity["levels"][0]["cpu_percent"]["worker"] > 0
    assert set(report["cold_start"]["handlers"]) == set(bench.HANDLER_MODULES)
    assert [p["chunk_bytes"] for p in report["chunk_sweep"]] == [4800]
    assert [p["frame_ms"] for p in report["frame_sweep"]] == [100]
    assert set(report["targets"]) == {
        "added_median_ms", "calls_per_worker_core", "handler_init_ms"
    }  # fmt: skip
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["latency"] == latency
    if report["plot"]:
        assert (tmp_path / "latency-vs-concurrency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = bench.format_table(report)
    for heading in ("End of speech", "Relay per audio chunk", "Capacity", "Targets"):
        assert heading in table
