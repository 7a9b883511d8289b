"""Stack config: one declaration (infra/config.py), kept in step with Pulumi.yaml and the README,
and validated with messages that say what is wrong and what is allowed."""

from __future__ import annotations

import re

import pytest
import yaml

from infra.config import (
    FARGATE_MEMORY_BY_CPU,
    MAX_WORKER_SLOTS,
    SETTINGS,
    SETTINGS_BY_KEY,
    ConfigError,
    StackConfig,
    parse_stack_config,
    reference_table,
)
from tests.infra.mock_stack import ROOT, stack_file_config
from wire import realtime

PROJECT_FILE = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())


def stack_values(stack: str) -> tuple[dict[str, str], str]:
    raw = stack_file_config(stack)
    region = raw.pop("aws:region")
    return {k.removeprefix("voice-agent:"): v for k, v in raw.items()}, region


def parse(**values: str) -> StackConfig:
    return parse_stack_config(values, stack="dev", region="us-east-1")


# --- Pulumi.yaml, the stack files and the README -------------------------------------------


def test_project_file_runs_python_in_the_shared_virtualenv() -> None:
    assert PROJECT_FILE["name"] == "voice-agent"
    assert PROJECT_FILE["runtime"] == {
        "name": "python", "options": {"toolchain": "pip", "virtualenv": ".venv"}}  # fmt: skip


def test_project_file_declares_every_setting_with_type_description_and_default() -> None:
    declared = PROJECT_FILE["config"]
    assert list(declared) == [s.key for s in SETTINGS]
    python_type = {"string": str, "integer": int, "boolean": bool}
    for setting in SETTINGS:
        entry = declared[setting.key]
        assert entry["type"] == setting.type
        assert entry["description"] == setting.description
        assert type(entry["default"]) is python_type[setting.type]
        assert entry["default"] == setting.default
        # Never `secret: true`: the CLI rejects a secret's plain default, and a key without a
        # default is required. The program refuses a plain-text secret itself (below).
        assert "secret" not in entry


def test_model_and_voice_choices_come_from_the_wire_module() -> None:
    for model in realtime.MODELS:
        assert parse(model=model).model == model
    for voice in realtime.VOICES:
        assert voice in SETTINGS_BY_KEY["voice"].description
        assert parse(voice=voice).voice == voice


def test_defaults_apply_when_nothing_is_set() -> None:
    config = parse()
    assert (config.model, config.hipaa, config.voice) == ("gpt-realtime-mini", False, "marin")
    assert config.default_provisioned_concurrency == 0
    assert config.openai_api_key is None
    assert config.name_prefix == "voice-agent-dev"


def test_dev_stack_is_cheap_and_prod_is_hipaa_in_another_region() -> None:
    dev_values, dev_region = stack_values("dev")
    prod_values, prod_region = stack_values("prod")
    dev = parse_stack_config(dev_values, stack="dev", region=dev_region)
    prod = parse_stack_config(prod_values, stack="prod", region=prod_region)
    assert (dev.model, dev.hipaa, dev.default_provisioned_concurrency) == (
        "gpt-realtime-mini", False, 0)  # fmt: skip
    assert (prod.model, prod.hipaa, prod.default_provisioned_concurrency) == (
        "gpt-realtime", True, 5)  # fmt: skip
    assert dev.region != prod.region
    assert prod.point_in_time_recovery_enabled and not dev.point_in_time_recovery_enabled


def test_readme_config_reference_is_generated_from_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- config:start -->\n(.*?)<!-- config:end -->", readme, re.S)
    assert block, "README lost its config markers"
    assert reference_table() in block.group(1), (
        "README config table is stale: paste infra.config.reference_table() between the markers"
    )
    for key in PROJECT_FILE["config"]:
        assert f"| `{key}` |" in block.group(1)


def test_readme_deploy_walkthrough_covers_start_to_finish() -> None:
    readme = (ROOT / "README.md").read_text()
    deploy = re.search(r"<!-- deploy:start -->\n(.*?)<!-- deploy:end -->", readme, re.S)
    assert deploy
    for step in ("pulumi stack init", "pulumi config set --secret openaiApiKey",
                 "aws secretsmanager put-secret-value", "pulumi up", "?ws=",
                 "voice-agent call", "pulumi destroy", "AWS_PREVIEW_ROLE_ARN",
                 "PULUMI_ACCESS_TOKEN"):  # fmt: skip
        assert step in deploy.group(1), step


# --- validation -----------------------------------------------------------------------------


def test_an_unknown_model_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        parse(model="gpt-4o")
    assert "voice-agent:model is 'gpt-4o'; allowed values are: gpt-realtime, gpt-realtime-mini" in (
        str(err.value))  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"voice": "robot"}, "voice-agent:voice is 'robot'; allowed values are: alloy"),
        ({"hipaa": "yes"}, "voice-agent:hipaa must be true or false, got 'yes'"),
        ({"workerCpu": "300"}, "voice-agent:workerCpu must be one of 256, 512"),
        ({"workerCpu": "256", "workerMemory": "4096"},
         "workerMemory 4096 is not valid with workerCpu 256; Fargate allows 512-2048"),
        ({"workerCount": "1", "workerOnDemandBase": "2"}, "workerOnDemandBase (2) exceeds"),
        ({"workerCount": "3", "workerMaxCount": "2"},
         "voice-agent:workerCount (3) exceeds workerMaxCount (2): workerCount is the autoscaling "
         "minimum"),
        ({"workerSlots": "2", "workerMaxCount": "3"},
         "voice-agent:workerMaxCount (3) exceeds workerSlots (2): every worker task needs a slot "
         "of its own"),
        ({"workerSlots": "11"}, "voice-agent:workerSlots must be between 1 and 10, got 11"),
        ({"workerSlots": "0"}, "voice-agent:workerSlots must be between 1 and 10, got 0"),
        ({"workerTargetCalls": "0"}, "voice-agent:workerTargetCalls must be between 1 and 1000"),
        ({"drainWaitSeconds": "115"},
         "voice-agent:drainWaitSeconds must be between 0 and 110, got 115"),
        ({"logRetentionDays": "10"}, "voice-agent:logRetentionDays must be one of 1, 3, 5"),
        ({"defaultProvisionedConcurrency": "-1"}, "must be between 0 and 1000, got -1"),
        ({"sessionTtlSeconds": "two hours"}, "sessionTtlSeconds must be an integer"),
        ({"audioChunkBytes": "4801"}, "audioChunkBytes must be even"),
        ({"realtimeBaseUrl": "http://example.com"}, "realtimeBaseUrl must be a wss:// URL"),
        ({"vpcCidr": "10.0.0.0/8"}, "vpcCidr must be an IPv4 /16 to /22 range"),
        ({"logLevel": "LOUD"}, "voice-agent:logLevel is 'LOUD'; allowed values are: DEBUG"),
        ({"modle": "gpt-realtime"}, "voice-agent:modle is not a setting of this project"),
        ({"defaultRouteIntegration": "http"},
         "voice-agent:defaultRouteIntegration is 'http'; allowed values are: lambda, sqs"),
        ({"maxSessions": "-1"}, "voice-agent:maxSessions must be between 0 and 100000, got -1"),
        ({"maxSessions": "lots"}, "voice-agent:maxSessions must be an integer, got 'lots'"),
        ({"maxCallSeconds": "7200"},
         "maxCallSeconds is 7200; a call must end before API Gateway's 2-hour connection "
         "limit: at most 7140"),
        ({"maxCallSeconds": "30"}, "voice-agent:maxCallSeconds must be between 60 and 7200"),
        ({"sessionTtlSeconds": "600"},
         "sessionTtlSeconds (600) is shorter than maxCallSeconds (7080)"),
        ({"clientMessagesPerSecond": "5"},
         "voice-agent:clientMessagesPerSecond must be between 10 and 1000, got 5"),
        ({"clientMessagesPerSecond": "50", "clientMessageBurst": "20"},
         "clientMessageBurst (20) must be at least clientMessagesPerSecond (50)"),
        ({"allowedOrigins": "app.example.com"},
         "allowedOrigins has 'app.example.com', which is not a web origin like "
         "https://app.example.com"),
        ({"allowedOrigins": "https://app.example.com/login"},
         "allowedOrigins has 'https://app.example.com/login'"),
        ({"allowedOrigins": ",".join(f"https://host{i}.example.com" for i in range(60))},
         "allowedOrigins is longer than 1024 characters"),
    ],
)  # fmt: skip
def test_bad_values_fail_with_a_clear_message(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(**values)


def test_a_secret_setting_given_in_plain_text_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape(
            "voice-agent:openaiApiKey is stored in plain text; set it with "
            "`pulumi config set --secret openaiApiKey <value>`")):  # fmt: skip
        parse_stack_config({}, stack="dev", region="us-east-1", plaintext_secrets=["openaiApiKey"])


def test_limits_and_access_have_sane_defaults() -> None:
    config = parse()
    assert config.default_route_integration == "lambda" and not config.lean_default_route
    assert (config.max_sessions, config.max_call_seconds) == (100, 7080)
    assert (config.client_messages_per_second, config.client_message_burst) == (50, 100)
    assert config.allowed_origins == ()
    # The call ends before API Gateway's 2-hour connection limit, inside its row's lifetime
    # (the model session is replaced before OpenAI's 60 minutes, so that no longer bounds it).
    assert config.max_call_seconds < config.session_ttl_seconds <= 7200


def test_the_lean_route_and_no_session_limit_are_accepted() -> None:
    config = parse(defaultRouteIntegration="sqs", maxSessions="0")
    assert config.lean_default_route and config.max_sessions == 0


def test_allowed_origins_are_normalised_as_browsers_send_them() -> None:
    config = parse(allowedOrigins=" https://App.Example.com/ ,http://localhost:8000,,"
                                  "https://app.example.com")  # fmt: skip
    assert config.allowed_origins == ("https://app.example.com", "http://localhost:8000")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_stack_config({"model": "x", "voice": "y"}, stack="Dev Stack", region=None)
    text = str(err.value)
    for part in ("voice-agent:model", "voice-agent:voice", "stack name 'Dev Stack'",
                 "aws:region is not set"):  # fmt: skip
        assert part in text


def test_every_fargate_size_pair_is_accepted() -> None:
    for cpu, memories in FARGATE_MEMORY_BY_CPU.items():
        for memory in (memories[0], memories[-1]):
            config = parse(workerCpu=str(cpu), workerMemory=str(memory))
            assert (config.worker_cpu, config.worker_memory) == (cpu, memory)


def test_workers_default_to_one_task_scaling_to_two_over_four_slots() -> None:
    config = parse()
    assert (config.worker_slots, config.worker_count, config.worker_max_count) == (4, 1, 2)
    assert (config.worker_target_calls, config.drain_wait_seconds) == (6, 60)
    assert config.worker_autoscaled


@pytest.mark.parametrize(
    ("values", "autoscaled"),
    [
        ({"workerCount": "1", "workerMaxCount": "1"}, False),  # a fixed count
        ({"workerCount": "0", "workerMaxCount": "2"}, False),  # paused: no task reports load
        ({"workerCount": "0", "workerMaxCount": "0"}, False),
        ({"workerSlots": "10", "workerCount": "2", "workerMaxCount": "10"}, True),
    ],
)
def test_autoscaling_needs_a_running_task_and_room_above_it(
    values: dict[str, str], autoscaled: bool
) -> None:
    assert parse(**values).worker_autoscaled is autoscaled


def test_the_stacks_scale_within_their_slots() -> None:
    for stack in ("dev", "prod"):
        values, region = stack_values(stack)
        config = parse_stack_config(values, stack=stack, region=region)
        assert 1 <= config.worker_count < config.worker_max_count <= config.worker_slots
        assert config.worker_slots <= MAX_WORKER_SLOTS
        assert config.worker_on_demand_base <= config.worker_count
    prod_values, prod_region = stack_values("prod")
    prod = parse_stack_config(prod_values, stack="prod", region=prod_region)
    # Two tasks at least, one on demand: a Spot reclaim never leaves the slots without a
    # live worker to move to.
    assert (prod.worker_count, prod.worker_on_demand_base) == (2, 1)
    assert prod.worker_target_calls == 12  # a 1 vCPU task


def test_point_in_time_recovery_by_key_or_by_hipaa() -> None:
    assert parse(pointInTimeRecovery="true").point_in_time_recovery_enabled
    assert parse(hipaa="true").point_in_time_recovery_enabled
    assert not parse().point_in_time_recovery_enabled
