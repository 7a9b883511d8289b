"""The table and queues the local stack creates from ``infra.specs`` (the ones Pulumi deploys)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import boto3
import pytest
from moto import mock_aws

from infra import specs
from tests.infra.mock_stack import ROOT
from wire.queue import EnvelopeKind, QueueEnvelope


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch):
    for name, value in {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("dynamodb"), boto3.client("sqs")


def test_local_resources_match_the_specs(clients) -> None:
    dynamodb, sqs = clients
    made = specs.create_local_resources(dynamodb, sqs, prefix="va-test", slots=3)
    assert made.table_name == "va-test-sessions"

    table = dynamodb.describe_table(TableName=made.table_name)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "connectionId", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb.describe_time_to_live(TableName=made.table_name)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ttl")

    dlq_arn = sqs.get_queue_attributes(QueueUrl=made.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]  # fmt: skip
    # One queue per slot, in slot order, each as the cloud's, all redriving to the one DLQ.
    assert [url.rsplit("/", 1)[1] for url in made.queue_urls] == [
        "va-test-audio-0.fifo", "va-test-audio-1.fifo", "va-test-audio-2.fifo"]  # fmt: skip
    assert made.queue_url == made.queue_urls[0]
    arns = []
    for url in made.queue_urls:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for name, value in specs.audio_queue_attributes().items():
            assert attributes[name] == value, name
        assert json.loads(attributes["RedrivePolicy"]) == {
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": specs.AUDIO_QUEUE_MAX_RECEIVE_COUNT,
        }
        arns.append(attributes["QueueArn"])
    # (moto keeps a DLQ's RedriveAllowPolicy but cannot read it back; the stack graph test
    # checks the deployed one.)
    assert json.loads(specs.redrive_allow_policy(arns)) == {
        "redrivePermission": "byQueue", "sourceQueueArns": arns}  # fmt: skip
    assert made.dlq_url.endswith("va-test-audio-dlq.fifo")


def test_creating_twice_reuses_what_exists(clients) -> None:
    dynamodb, sqs = clients
    first = specs.create_local_resources(dynamodb, sqs)
    assert len(first.queue_urls) == 1  # one slot unless asked
    assert specs.create_local_resources(dynamodb, sqs) == first
    assert len(sqs.list_queues()["QueueUrls"]) == 2
    assert dynamodb.list_tables()["TableNames"] == ["voice-agent-local-sessions"]
    # More slots later: the existing queues stay, the new ones join the DLQ's sources.
    more = specs.create_local_resources(dynamodb, sqs, slots=2)
    assert more.queue_urls[0] == first.queue_url and len(sqs.list_queues()["QueueUrls"]) == 3


def test_a_stack_has_at_least_one_slot(clients) -> None:
    with pytest.raises(ValueError, match="at least one worker slot"):
        specs.create_local_resources(*clients, slots=0)


def test_a_retried_send_is_delivered_once_and_groups_keep_order(clients) -> None:
    dynamodb, sqs = clients
    queue = specs.create_local_resources(dynamodb, sqs).queue_url
    frames = [QueueEnvelope(EnvelopeKind.FRAME, "conn-1", f"req-{i}", 0, body=f'{{"n":{i}}}')
              for i in range(3)]  # fmt: skip
    for envelope in [*frames, frames[1]]:  # API Gateway retried req-1
        sqs.send_message(**envelope.to_send_message(queue))
    got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
    assert [m["Body"] for m in got["Messages"]] == ['{"n":0}', '{"n":1}', '{"n":2}']


def test_specs_and_the_infra_package_import_no_pulumi() -> None:
    # The local stack imports infra.specs without the deploy extra installed.
    for path in (ROOT / "infra" / "__init__.py", ROOT / "infra" / "specs.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0].startswith("pulumi") for n in names), path
    probe = "import sys, infra.specs; print(sorted(m for m in sys.modules if 'pulumi' in m))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"
