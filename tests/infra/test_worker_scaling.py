"""The worker service on slots: how many tasks, how they are replaced and stopped, and the
autoscaling on calls per task (infra/worker_scaling.py), as deployed under mocks."""

from __future__ import annotations

import json

import pulumi_aws as aws
import pytest
from pulumi import _types

from infra.worker_scaling import (
    SCALABLE_DIMENSION,
    SCALE_IN_COOLDOWN_S,
    SCALE_OUT_COOLDOWN_S,
)
from tests.infra.conftest import Graph
from wire.slots import ACTIVE_CALLS_METRIC, METRICS_DIMENSION, METRICS_NAMESPACE

SERVICE = "aws:ecs/service:Service"
TARGET = "aws:appautoscaling/target:Target"
POLICY = "aws:appautoscaling/policy:Policy"


def container(graph: Graph) -> dict:
    [definition] = json.loads(graph.one("aws:ecs/taskDefinition:TaskDefinition").inputs[
        "containerDefinitions"])  # fmt: skip
    return definition


def environment(graph: Graph) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(graph)["environment"]}


# (min, max, target calls) per stack: dev's and prod's stack files; dev_lean fixes the count.
SCALING = {"dev": (1, 2, 6), "prod": (2, 6, 12), "dev_hipaa": (1, 2, 6), "hipaa_lean": (1, 2, 6)}


@pytest.mark.parametrize("name", sorted(SCALING))
def test_autoscaling_tracks_calls_per_task_between_the_configured_bounds(
    stacks: dict[str, Graph], name: str
) -> None:
    graph = stacks[name]
    low, high, calls = SCALING[name]
    service = graph.one(SERVICE)
    cluster = graph.one("aws:ecs/cluster:Cluster")
    target = graph.one(TARGET)
    assert target.inputs["serviceNamespace"] == "ecs"
    assert target.inputs["scalableDimension"] == SCALABLE_DIMENSION == "ecs:service:DesiredCount"
    assert target.inputs["resourceId"] == (
        f"service/{cluster.outputs['name']}/{service.outputs['name']}")  # fmt: skip
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (low, high)

    policy = graph.one(POLICY)
    assert policy.inputs["policyType"] == "TargetTrackingScaling"
    assert policy.inputs["resourceId"] == target.inputs["resourceId"]
    tracking = policy.inputs["targetTrackingScalingPolicyConfiguration"]
    assert tracking["targetValue"] == calls
    # The metric the worker logs (wire/slots.py), dimensioned by this service's name, which
    # the worker is told in METRICS_SERVICE.
    assert tracking["customizedMetricSpecification"] == {
        "namespace": METRICS_NAMESPACE,
        "metricName": ACTIVE_CALLS_METRIC,
        "dimensions": [{"name": METRICS_DIMENSION, "value": service.outputs["name"]}],
        "statistic": "Average",
    }
    assert environment(graph)["METRICS_SERVICE"] == service.outputs["name"]
    assert (METRICS_NAMESPACE, ACTIVE_CALLS_METRIC, METRICS_DIMENSION) == (
        "VoiceAgent", "ActiveCalls", "Service")  # fmt: skip
    # Out within a minute; in only after five (a task that scales in drains its calls).
    assert (tracking["scaleOutCooldown"], tracking["scaleInCooldown"]) == (60, 300)
    assert SCALE_OUT_COOLDOWN_S < SCALE_IN_COOLDOWN_S

    # The service starts at the minimum, and `pulumi up` leaves the count to autoscaling.
    assert service.inputs["desiredCount"] == low
    [ignored] = service.options["ignoreChanges"]
    # Given by its Python name, which Pulumi maps to the property through ServiceArgs.
    assert _types.input_type_py_to_pulumi_names(aws.ecs.ServiceArgs)[ignored] == "desiredCount"


def test_a_fixed_worker_count_has_no_autoscaling_and_keeps_its_count(dev_lean: Graph) -> None:
    # dev_lean: workerCount = workerMaxCount = 1.
    assert not dev_lean.of_type(TARGET) and not dev_lean.of_type(POLICY)
    service = dev_lean.one(SERVICE)
    assert service.inputs["desiredCount"] == 1
    assert service.options["ignoreChanges"] == []  # workerCount is applied on every up


def test_a_stopping_worker_has_the_time_to_hand_its_calls_over(every_stack: Graph) -> None:
    spec = container(every_stack)
    assert spec["stopTimeout"] == 120  # Fargate's maximum, and all of Spot's warning
    drain = int(environment(every_stack)["DRAIN_WAIT_SECONDS"])
    assert drain == (45 if every_stack.outputs["workerSlots"] == 3 else 60)  # dev_lean's: 45
    assert drain <= 110 < spec["stopTimeout"]
    # A replacement starts before the task it replaces stops, so a deploy has a worker to
    # take the leaving task's slots.
    service = every_stack.one(SERVICE)
    assert service.inputs["deploymentMinimumHealthyPercent"] == 100
    assert service.inputs["deploymentMaximumPercent"] == 200


def test_a_minimum_above_the_maximum_fails_the_program(
    renders: dict,
) -> None:
    error = renders["bad_workers"]["error"]
    assert "RunError" in error
    assert "voice-agent:workerCount (3) exceeds workerMaxCount (2)" in error
