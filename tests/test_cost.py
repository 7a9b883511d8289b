"""``voice-agent cost``: the cost model's arithmetic and the command around it.

Correctness only: metering steps at their boundaries, which items each path and mode
carries, how concurrency and talk ratio move the bill, the model's cost against a hand
calculation from the price table, and the command's output and errors.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_agent import cost
from voice_agent.cli import main
from voice_agent.cost import (
    MAX_CHUNK_BYTES,
    MAX_FRAME_MS,
    PRICES_PATH,
    Assumptions,
    CostEstimate,
    PriceTable,
    Scenario,
    blended_tier_price,
    downlink_audio_bytes,
    estimate_cost,
    metered_units,
    queue_message_bytes,
    uplink_frame_bytes,
)
from wire import client as proto

ROOT = Path(__file__).resolve().parent.parent
RAW_PRICES = tomllib.loads(PRICES_PATH.read_text(encoding="utf-8"))
PRICES = PriceTable.from_toml(PRICES_PATH.read_text(encoding="utf-8"))
KB32, KB64 = 32 * 1024, 64 * 1024

DEV_STACK = """\
config:
  aws:region: us-east-1
  voice-agent:model: gpt-realtime-mini
  voice-agent:openaiApiKey:
    secure: v1:AAAABBBBCCCC
"""
PROD_STACK = """\
config:
  aws:region: us-west-2
  voice-agent:hipaa: true
  voice-agent:model: gpt-realtime
  voice-agent:workerCount: 1
  voice-agent:workerOnDemandBase: 1
"""


def scenario(**changes: Any) -> Scenario:
    return replace(Scenario(region="us-east-1", model="gpt-realtime-mini"), **changes)


def line(estimate: CostEstimate, service: str, starts: str) -> cost.LineItem:
    found = [i for i in estimate.items if i.service == service and i.item.startswith(starts)]
    assert len(found) == 1, (service, starts, [i.item for i in estimate.items])
    return found[0]


def services(estimate: CostEstimate) -> set[str]:
    return {i.service for i in estimate.items}


# --- metering -----------------------------------------------------------------------------


def test_price_table_meters_websocket_messages_in_32_kb_and_sqs_requests_in_64_kb() -> None:
    assert PRICES.value("api_gateway.message_metering") == KB32
    assert PRICES.value("sqs.request_metering") == KB64


@pytest.mark.parametrize(
    ("size", "step", "units"),
    [
        (0, KB32, 1),
        (1, KB32, 1),
        (KB32 - 1, KB32, 1),
        (KB32, KB32, 1),
        (KB32 + 1, KB32, 2),  # "a 33 KB message is metered as two messages"
        (2 * KB32 + 1, KB32, 3),
        (KB64, KB64, 1),
        (KB64 + 1, KB64, 2),
        (4 * KB64, KB64, 4),  # a 256 KB payload is four requests
        (4 * KB64 + 1, KB64, 5),
    ],
)
def test_metering_steps_at_their_boundaries(size: int, step: int, units: int) -> None:
    assert metered_units(size, step) == units


@given(size=st.integers(min_value=1, max_value=10**7), step=st.sampled_from([KB32, KB64]))
def test_metered_units_cover_the_payload_with_no_spare_step(size: int, step: int) -> None:
    units = metered_units(size, step)
    assert (units - 1) * step < size <= units * step


def test_every_allowed_frame_and_chunk_is_one_websocket_message() -> None:
    # The protocol's limits were chosen so; the bill depends on it staying true.
    assert metered_units(uplink_frame_bytes(MAX_FRAME_MS), KB32) == 1
    assert metered_units(downlink_audio_bytes(MAX_CHUNK_BYTES), KB32) == 1
    # ...and the largest chunk really does fill most of a message.
    assert downlink_audio_bytes(MAX_CHUNK_BYTES) > KB32 - 1024


def test_sqs_receive_batches_are_billed_per_64_kb_of_their_messages() -> None:
    # A thousand calls on one worker keep every receive full (10 messages); ten 100 ms frames
    # fit one 64 KB chunk, ten 340 ms frames (~22 KB each) need four.
    one_big_worker = Assumptions(calls_per_vcpu=3000)
    for frame_ms in (100, 340):
        busy = scenario(concurrency=1000, frame_ms=frame_ms)
        estimate = estimate_cost(busy, PRICES, one_big_worker)
        receives = line(estimate, "SQS", "receives (batches of 10.0")
        deletes = line(estimate, "SQS", "delete_message_batch")  # one per receive
        body = proto.audio_action(bytes(frame_ms * 48), seq=123_456)
        per_receive = metered_units(10 * queue_message_bytes(body), KB64)
        assert receives.quantity == pytest.approx(deletes.quantity * per_receive)
        assert per_receive == (1 if frame_ms == 100 else 4)


def test_uplink_frames_are_one_queue_message_and_one_send_each() -> None:
    estimate = estimate_cost(scenario(frame_ms=MAX_FRAME_MS), PRICES)
    frames = line(estimate, "API Gateway", "uplink audio").quantity
    sends = line(estimate, "SQS", "sends").quantity
    opens_and_closes = 2 / Assumptions().call_minutes
    assert sends == pytest.approx(frames + opens_and_closes)


# --- the lean paths -----------------------------------------------------------------------


def test_lean_route_has_no_per_frame_lambda_cost() -> None:
    default = estimate_cost(scenario(default_route="lambda"), PRICES)
    lean = estimate_cost(scenario(default_route="sqs"), PRICES)
    assert line(default, "Lambda", "$default").quantity == pytest.approx(600)
    assert not [i for i in lean.items if i.item.startswith("$default")]
    lean_lambda = lean.usd_per_call_minute(service="Lambda")
    assert lean_lambda == pytest.approx(
        line(lean, "Lambda", "$connect").usd_per_call_minute
        + line(lean, "Lambda", "$disconnect").usd_per_call_minute
    )
    assert lean_lambda < default.usd_per_call_minute(service="Lambda") / 100


def test_larger_downlink_chunks_mean_fewer_posts() -> None:
    small = estimate_cost(scenario(chunk_bytes=4800), PRICES)
    large = estimate_cost(scenario(chunk_bytes=24_000), PRICES)
    small_posts = line(small, "API Gateway", "downlink audio").quantity
    large_posts = line(large, "API Gateway", "downlink audio").quantity
    # 30 s of assistant audio in 4 turns: ~5 posts a second at 100 ms chunks, ~1 at 500 ms.
    assert small_posts == pytest.approx(300 + 4, abs=4)
    assert large_posts == pytest.approx(60 + 8, abs=4)


def test_provisioned_concurrency_bills_by_the_hour_on_the_lambda_route_only() -> None:
    estimate = estimate_cost(scenario(default_provisioned_concurrency=2), PRICES)
    pc = line(estimate, "Lambda", "$default provisioned concurrency")
    gb = Assumptions().lambda_memory_mb / 1024
    rate = RAW_PRICES["lambda"]["provisioned_concurrency_arm64"]["usd"]
    assert pc.shared_usd_per_hour == pytest.approx(2 * gb * 3600 * rate)
    lean = estimate_cost(scenario(default_provisioned_concurrency=2, default_route="sqs"), PRICES)
    assert not [i for i in lean.items if "provisioned" in i.item]
    assert any("ignored" in note for note in lean.notes)


# --- Fargate, HIPAA, concurrency, talk ratio ----------------------------------------------


def test_fargate_spot_is_cheaper_than_on_demand() -> None:
    spot = estimate_cost(scenario(worker_count=2, worker_on_demand_base=0), PRICES)
    on_demand = estimate_cost(scenario(worker_count=2, worker_on_demand_base=2), PRICES)
    spot_hour = spot.usd_per_call_minute(service="Fargate") * 60
    on_demand_hour = on_demand.usd_per_call_minute(service="Fargate") * 60
    discount = RAW_PRICES["fargate"]["spot_discount"]["value"]
    assert 0 < spot_hour < on_demand_hour
    assert spot_hour == pytest.approx(on_demand_hour * (1 - discount))
    task_hour = (
        0.5 * RAW_PRICES["fargate"]["vcpu_hour_arm64"]["usd"]
        + RAW_PRICES["fargate"]["gb_hour_arm64"]["usd"]
    )
    assert on_demand_hour == pytest.approx(2 * task_hour)


def test_hipaa_adds_nat_endpoints_and_kms() -> None:
    plain = estimate_cost(scenario(hipaa=False), PRICES)
    hipaa = estimate_cost(scenario(hipaa=True), PRICES)
    added = {"NAT gateway", "VPC endpoints", "KMS"}
    assert not added & services(plain)
    assert added <= services(hipaa)
    for service in added:
        assert hipaa.usd_per_call_minute(service=service) > 0
    nat = line(hipaa, "NAT gateway", "2 gateways")
    assert nat.shared_usd_per_hour == pytest.approx(
        2 * RAW_PRICES["vpc"]["nat_gateway_hour"]["usd"]
    )
    endpoints = line(hipaa, "VPC endpoints", "6 interface endpoints")
    assert endpoints.shared_usd_per_hour == pytest.approx(
        12 * RAW_PRICES["vpc"]["interface_endpoint_hour"]["usd"]
    )
    assert hipaa.idle_usd_per_hour > plain.idle_usd_per_hour + 0.2
    assert hipaa.aws_usd_per_call_minute > plain.aws_usd_per_call_minute


def test_concurrency_spreads_the_fixed_costs() -> None:
    one = estimate_cost(scenario(concurrency=1), PRICES)
    hundred = estimate_cost(scenario(concurrency=100), PRICES)
    # One task carries both (150 calls per 0.5 vCPU task): same hourly bill, a hundredth
    # of it per call.
    for service in ("Fargate", "VPC"):
        assert hundred.usd_per_call_minute(service=service) == pytest.approx(
            one.usd_per_call_minute(service=service) / 100
        )
    for item in hundred.items:
        if item.shared_usd_per_hour is not None:
            assert item.usd_per_call_minute == pytest.approx(item.shared_usd_per_hour / 6000)
    assert hundred.aws_usd_per_call_minute < one.aws_usd_per_call_minute
    assert hundred.idle_usd_per_hour == pytest.approx(one.idle_usd_per_hour)


def test_more_calls_than_the_workers_carry_adds_tasks() -> None:
    estimate = estimate_cost(scenario(concurrency=1000, worker_count=1), PRICES)
    tasks = sum(i.quantity for i in estimate.items if i.service == "Fargate")
    assert tasks == math.ceil(1000 / 150)


def test_slot_leases_cost_by_the_hour_with_slots_and_workers() -> None:
    two = line(estimate_cost(scenario(worker_slots=2), PRICES), "DynamoDB", "slot leases")
    eight = line(estimate_cost(scenario(worker_slots=8), PRICES), "DynamoDB", "slot leases")
    # A 5 s tick: 720 rounds an hour, each reading every slot and the registry, writing the
    # registry and renewing each slot.
    assert two.quantity == 720 * (2 + 1) + 720 * 1 + 720 * 2
    assert eight.shared_usd_per_hour > 2 * two.shared_usd_per_hour > 0
    idle_polls = line(estimate_cost(scenario(worker_slots=8), PRICES), "SQS", "empty long polls")
    assert idle_polls.quantity == 8 * 4 * 180  # each slot polled by 4 loops, 3 times a minute
    paused = estimate_cost(scenario(worker_count=0, concurrency=0, worker_slots=8), PRICES)
    assert not [i for i in paused.items if i.item.startswith("slot leases")]


def test_talk_ratio_moves_downlink_costs_not_uplink() -> None:
    quiet = estimate_cost(scenario(talk_ratio=0.2), PRICES)
    chatty = estimate_cost(scenario(talk_ratio=0.8), PRICES)
    assert (
        line(quiet, "API Gateway", "uplink").quantity
        == line(chatty, "API Gateway", "uplink").quantity
    )
    assert (
        line(chatty, "API Gateway", "downlink audio").usd_per_call_minute
        > 3 * line(quiet, "API Gateway", "downlink audio").usd_per_call_minute
    )
    silent = estimate_cost(scenario(talk_ratio=0.0), PRICES)
    assert not [i for i in silent.items if i.item.startswith("downlink audio")]
    hipaa_quiet = estimate_cost(scenario(talk_ratio=0.2, hipaa=True), PRICES)
    hipaa_chatty = estimate_cost(scenario(talk_ratio=0.8, hipaa=True), PRICES)
    assert (
        line(hipaa_chatty, "NAT gateway", "processing").quantity
        > line(hipaa_quiet, "NAT gateway", "processing").quantity
    )


# --- the model ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-realtime", "gpt-realtime-mini"])
@pytest.mark.parametrize("talk_ratio", [0.3, 0.5])
def test_model_cost_per_minute_matches_a_hand_calculation(model: str, talk_ratio: float) -> None:
    p = RAW_PRICES["openai"][model]
    a = Assumptions()  # 3 min calls, 4 responses a minute, 3 text tokens/s, 100 instructions
    assistant_s, user_s = 60 * talk_ratio, 60 * (1 - talk_ratio)
    user_tokens, assistant_tokens = 10 * user_s, 20 * assistant_s  # OpenAI's tokens per second
    responses = 4 * 3
    per_turn = (user_tokens + assistant_tokens) / 4
    cached_context = per_turn * responses * (responses - 1) / 2 / 3  # per call-minute
    expected = (
        user_tokens * p["audio_input"]
        + assistant_tokens * p["audio_output"]
        + 3 * assistant_s * p["text_output"]
        + cached_context * p["audio_cached_input"]
        + 100 / 3 * p["text_input"]
        + 100 * (responses - 1) / 3 * p["text_cached_input"]
    ) / 1_000_000 + user_s / 60 * RAW_PRICES["openai"]["gpt-4o-mini-transcribe"]["usd"]
    estimate = estimate_cost(scenario(model=model, talk_ratio=talk_ratio), PRICES, a)
    assert estimate.model_usd_per_call_minute == pytest.approx(expected)


def test_model_cost_figures_for_the_default_talk_ratio() -> None:
    mini = estimate_cost(scenario(model="gpt-realtime-mini"), PRICES)
    full = estimate_cost(scenario(model="gpt-realtime"), PRICES)
    # 300 user tokens at $10/M + 600 assistant tokens at $20/M is $0.015 before the rest.
    assert 0.015 < mini.model_usd_per_call_minute < 0.02
    assert 0.048 < full.model_usd_per_call_minute < 0.06


# --- prices -------------------------------------------------------------------------------


def test_every_price_is_dated_and_sourced() -> None:
    assert isinstance(PRICES.as_of, date)
    assert {"us-east-1", "us-west-2"} <= set(PRICES.regions)
    for key, item in PRICES.items.items():
        assert item.get("source"), key
        assert isinstance(item.get("checked"), date), key
        assert item.get("unit"), key
        assert {"usd", "tiers", "value"} & set(item) or key.startswith("openai.gpt"), key


def test_tiered_prices_blend_over_the_month() -> None:
    tiers = [(1e9, 1.00), (math.inf, 0.80)]
    assert blended_tier_price(tiers, 0) == 1.00
    assert blended_tier_price(tiers, 5e8) == 1.00
    assert blended_tier_price(tiers, 2e9) == pytest.approx(0.90)
    assert PRICES.tiered("api_gateway.message", 4e9) == pytest.approx(0.85)


def test_a_region_outside_the_table_falls_back_and_says_so() -> None:
    estimate = estimate_cost(scenario(region="eu-central-1"), PRICES)
    assert estimate.price_region == "us-east-1"
    assert any("does not cover eu-central-1" in note for note in estimate.notes)
    west = estimate_cost(scenario(region="us-west-2"), PRICES)
    assert west.price_region == "us-west-2"
    assert not any("does not cover" in note for note in west.notes)


def test_access_log_assumption_fits_the_stage_access_log_format() -> None:
    pytest.importorskip("pulumi_aws")
    from infra.websocket_api import ACCESS_LOG_FORMAT

    # Typical values for a $default message: 16-character ids, a 13-digit epoch, an IPv4.
    sample = {key: "x" * 16 for key in ACCESS_LOG_FORMAT}
    sample.update(eventType="MESSAGE", routeKey="$default", status="200", error="-")
    line = json.dumps(sample, separators=(",", ":"))
    event_overhead = 26  # CloudWatch Logs bills 26 bytes per event
    assumed = Assumptions().api_access_log_bytes_per_message
    assert len(line) + event_overhead <= assumed * 1.2
    assert assumed <= (len(line) + event_overhead) * 1.5


def test_hipaa_network_counts_match_the_network_component() -> None:
    pytest.importorskip("pulumi_aws")
    from infra import network

    assert network.ZONE_COUNT == cost.ZONE_COUNT
    assert len(network.INTERFACE_ENDPOINT_SERVICES) == cost.INTERFACE_ENDPOINT_COUNT


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.dev.yaml").write_text(DEV_STACK)
    (tmp_path / "Pulumi.prod.yaml").write_text(PROD_STACK)
    return tmp_path


def run_cost(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["cost", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_cli_prints_parseable_json(
    stack: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cost(
        capsys, "--stack", stack, "--project-dir", str(project), "--json", "--concurrency", "100"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["stack"] == stack
    assert report["scenario"]["concurrency"] == 100
    totals = report["totals"]
    assert totals["usd_per_call_minute"] == pytest.approx(
        totals["aws_usd_per_call_minute"] + totals["model_usd_per_call_minute"]
    )
    assert totals["usd_per_hour"] == pytest.approx(totals["usd_per_call_minute"] * 60 * 100)
    assert report["notes"] and report["items"]
    hipaa_services = {i["service"] for i in report["items"]} & {"NAT gateway", "KMS"}
    assert bool(hipaa_services) == (stack == "prod")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_cli_runs_on_the_repository_stacks(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    if not (ROOT / f"Pulumi.{stack}.yaml").is_file():
        pytest.skip(f"Pulumi.{stack}.yaml is not in the repository yet")
    code, out, err = run_cost(capsys, "--stack", stack, "--project-dir", str(ROOT), "--json")
    assert code == 0, err
    assert json.loads(out)["totals"]["aws_usd_per_call_minute"] > 0


def test_cli_options_override_the_stack(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (project / "Pulumi.lean.yaml").write_text(
        DEV_STACK + "  voice-agent:defaultRouteIntegration: sqs\n"
        "  voice-agent:audioChunkBytes: 24000\n"
    )
    code, out, _ = run_cost(capsys, "--stack", "lean", "--project-dir", str(project), "--json")
    scenario_read = json.loads(out)["scenario"]
    assert code == 0
    assert (scenario_read["default_route"], scenario_read["chunk_bytes"]) == ("sqs", 24000)
    code, out, _ = run_cost(
        capsys, "--stack", "lean", "--project-dir", str(project), "--json",
        "--default-route", "lambda", "--chunk-bytes", "9600", "--frame-ms", "40",
        "--talk-ratio", "0.25", "--model", "gpt-realtime",
    )  # fmt: skip
    overridden = json.loads(out)["scenario"]
    assert code == 0
    assert overridden["default_route"] == "lambda"
    assert overridden["chunk_bytes"] == 9600
    assert overridden["frame_ms"] == 40
    assert overridden["talk_ratio"] == 0.25
    assert overridden["model"] == "gpt-realtime"


def test_cli_table_shows_totals_and_assumptions(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cost(capsys, "--stack", "prod", "--project-dir", str(project))
    assert code == 0
    assert "AWS, model excluded:" in out
    assert "per call-hour" in out
    assert "idle (no calls):" in out
    assert "Assumptions:" in out
    assert "NAT gateway" in out
    assert "prices of us-west-2 as of 2026-11-24" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "staging"], "no stack 'staging'"),
        (["--stack", "../etc"], "is not a stack name"),
        (["--stack", "dev", "--concurrency", "0"], "concurrency must be 1-"),
        (["--stack", "dev", "--talk-ratio", "1.5"], "talk ratio must be between 0 and 1"),
        (["--stack", "dev", "--frame-ms", "400"], "frame ms must be 10-341"),
        (["--stack", "dev", "--chunk-bytes", "4801"], "chunk bytes must be even"),
        (["--stack", "dev", "--default-route", "http"], "invalid choice: 'http'"),
        (["--concurrency", "5"], "the following arguments are required: --stack"),
    ],
)
def test_cli_errors_are_clear_with_exit_code_2(
    args: list[str], message: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code, _, err = run_cost(capsys, *args, "--project-dir", str(project))
    except SystemExit as exit_:  # argparse's own errors
        code, err = int(exit_.code or 0), capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  voice-agent:workerCpu: 300\n", "voice-agent:workerCpu must be one of"),
        ("  voice-agent:defaultRouteIntegration: http\n", "defaultRouteIntegration is 'http'"),
        ("  voice-agent:hipa: true\n", "voice-agent:hipa is not a setting of this project"),
    ],
)
def test_cli_reports_bad_stack_settings(
    extra: str, message: str, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (project / "Pulumi.broken.yaml").write_text(DEV_STACK + extra)
    code, _, err = run_cost(capsys, "--stack", "broken", "--project-dir", str(project))
    assert code == 2
    assert message in err


def test_cli_as_a_process_exits_2_without_a_traceback(project: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "voice_agent.cli", "cost", "--stack", "nope",
         "--project-dir", str(project)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "voice-agent cost: no stack 'nope'" in result.stderr
    assert "stacks there: dev, prod" in result.stderr
    assert "Traceback" not in result.stderr
