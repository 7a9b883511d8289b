"""Autoscaling of the worker service on its load: calls per task.

Each worker logs its ``ActiveCalls`` every minute in CloudWatch's embedded metric format
(namespace and dimension in wire/slots.py, the dimension's value the service name), and
CloudWatch Logs turns those lines into a metric. A target-tracking policy keeps the tasks'
average at ``workerTargetCalls``, between ``workerCount`` and ``workerMaxCount`` tasks.

CPU would be the stock signal, but a worker's CPU follows its calls only loosely (a call's
cost depends on how much it talks), and calls are what a slot, a handover and a drain are
made of.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.config import StackConfig
from wire.slots import ACTIVE_CALLS_METRIC, METRICS_DIMENSION, METRICS_NAMESPACE

SCALABLE_DIMENSION = "ecs:service:DesiredCount"
# Out fast: a new task takes about a minute to start and lease a slot, and until then the
# calls placed meanwhile crowd the tasks already running.
SCALE_OUT_COOLDOWN_S = 60
# In slowly: a task that scales in hands every call over (a drain of up to
# drainWaitSeconds), so a short dip in calls must not stop a task that is needed again
# minutes later.
SCALE_IN_COOLDOWN_S = 300
# Each task reports once a minute; the average over all of them is calls per task.
METRIC_STATISTIC = "Average"


class WorkerScaling(pulumi.ComponentResource):
    """Application Auto Scaling target (the service's desired count) and its target-tracking
    policy on the workers' ``ActiveCalls``.

    Build it only when ``config.worker_autoscaled``: the service then leaves its desired
    count to autoscaling (``ignore_changes`` in ``infra.worker_service``).
    """

    def __init__(
        self,
        name: str,
        *,
        config: StackConfig,
        cluster_name: pulumi.Input[str],
        service_name: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:compute:WorkerScaling", name, None, opts)
        if not config.worker_autoscaled:
            raise ValueError("WorkerScaling needs workerCount >= 1 and workerMaxCount above it")
        child = pulumi.ResourceOptions(parent=self)
        # No role_arn: Application Auto Scaling uses its service-linked role for ECS.
        target = aws.appautoscaling.Target(
            f"{name}-target",
            service_namespace="ecs",
            scalable_dimension=SCALABLE_DIMENSION,
            resource_id=pulumi.Output.concat("service/", cluster_name, "/", service_name),
            min_capacity=config.worker_count,
            max_capacity=config.worker_max_count,
            opts=child,
        )
        policy = aws.appautoscaling.Policy(
            f"{name}-calls-per-task",
            policy_type="TargetTrackingScaling",
            service_namespace=target.service_namespace,
            scalable_dimension=target.scalable_dimension,
            resource_id=target.resource_id,
            # Plain dicts: the Args classes' names don't fit on a line.
            target_tracking_scaling_policy_configuration={
                "target_value": float(config.worker_target_calls),
                "customized_metric_specification": {
                    "namespace": METRICS_NAMESPACE,
                    "metric_name": ACTIVE_CALLS_METRIC,
                    "dimensions": [{"name": METRICS_DIMENSION, "value": service_name}],
                    "statistic": METRIC_STATISTIC,
                },
                "scale_in_cooldown": SCALE_IN_COOLDOWN_S,
                "scale_out_cooldown": SCALE_OUT_COOLDOWN_S,
            },
            opts=child,
        )
        self.target_resource_id = target.resource_id
        self.policy_arn = policy.arn
        self.register_outputs({"resource_id": self.target_resource_id, "policy": self.policy_arn})
