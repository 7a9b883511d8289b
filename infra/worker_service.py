"""The bridge worker: image in ECR, one ECS service on Fargate Spot.

Each task leases worker slots in the sessions table and polls only its slots' audio queues
(wire/slots.py). Its task count is ``workerCount`` until autoscaling (infra.worker_scaling)
takes it over.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from infra import iam
from infra.audio_queue import slot_environment
from infra.aws_context import AwsContext
from infra.config import StackConfig
from infra.log_groups import log_group
from infra.network import Network
from wire.slots import ENV_METRICS_SERVICE

DOCKERFILE = "worker/Dockerfile"  # built with the repository root as context (docs/architecture.md)
CONTAINER_NAME = "worker"
# Fargate Spot warns two minutes before it reclaims a task; 120 s is also Fargate's ceiling.
# The worker takes SIGTERM as "hand your calls over and release your slots" (it waits up to
# drainWaitSeconds for each call's turn boundary), so give it all of it.
STOP_TIMEOUT_S = 120
HEALTH_FILE = "/tmp/worker-heartbeat"
# ECR lifecycle: untagged images (replaced builds) go after a week; at most 20 images stay.
LIFECYCLE_POLICY = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "expire replaced (untagged) builds after 7 days",
            "selection": {"tagStatus": "untagged", "countType": "sinceImagePushed",
                          "countUnit": "days", "countNumber": 7},
            "action": {"type": "expire"},
        },
        {
            "rulePriority": 2,
            "description": "keep the 20 most recent images",
            "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 20},
            "action": {"type": "expire"},
        },
    ]
}  # fmt: skip
QUEUE_CONSUMER_ACTIONS = (
    "sqs:ChangeMessageVisibility",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
)
# Session rows (read, update, handover state) and the slot leases: the worker reads every
# slot's lease in one BatchGetItem, takes and renews them with conditional updates, and the
# registry of workers is one item; Scan counts live sessions.
SESSION_TABLE_ACTIONS = (
    "dynamodb:BatchGetItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:Scan",
    "dynamodb:UpdateItem",
)
IMAGE_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage",
                      "ecr:GetDownloadUrlForLayer")  # fmt: skip
# The @connections calls the worker makes: post a frame, read a connection, hang up.
CONNECTIONS_METHODS = ("POST", "GET", "DELETE")


def worker_service_name(config: StackConfig) -> str:
    """The ECS service's name: also the Service dimension of the worker's ActiveCalls metric."""
    return f"{config.name_prefix}-worker"


class WorkerService(pulumi.ComponentResource):
    """ECR repository + image, ECS cluster (Fargate and Fargate Spot), task and service."""

    repository_url: pulumi.Output[str]
    image_digest: pulumi.Output[str]
    image_ref: pulumi.Output[str]
    cluster_name: pulumi.Output[str]
    service_name: pulumi.Output[str]
    policies: dict[str, pulumi.Output[str]]

    def __init__(
        self,
        name: str,
        *,
        config: StackConfig,
        ctx: AwsContext,
        source_root: Path,
        network: Network,
        table_name: pulumi.Input[str],
        table_arn: pulumi.Input[str],
        queue_urls: pulumi.Input[str],
        queue_arns: Sequence[pulumi.Input[str]],
        api_id: pulumi.Input[str],
        stage_name: pulumi.Input[str],
        connections_url: pulumi.Input[str],
        secret_arn: pulumi.Input[str],
        data_key_arn: pulumi.Input[str] | None,
        logs_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:compute:WorkerService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # --- image --------------------------------------------------------------------
        repository = aws.ecr.Repository(
            f"{name}-repo",
            name=f"{config.name_prefix}-worker",
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(
                scan_on_push=True
            ),
            # Tags are only labels here: the task definition pins the pushed digest.
            image_tag_mutability="MUTABLE",
            encryption_configurations=(
                [
                    aws.ecr.RepositoryEncryptionConfigurationArgs(
                        encryption_type="KMS", kms_key=data_key_arn
                    )
                ]
                if data_key_arn is not None
                else None
            ),  # fmt: skip
            # Images are rebuilt from source by every `pulumi up`; let destroy remove them.
            force_delete=True,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(
            f"{name}-repo-lifecycle",
            repository=repository.name,
            policy=pulumi.Output.json_dumps(LIFECYCLE_POLICY),
            opts=child,
        )
        token = aws.ecr.get_authorization_token_output(
            registry_id=repository.registry_id, opts=pulumi.InvokeOptions(parent=self)
        )
        # Relative paths, so the state doesn't change with the checkout's location.
        context_dir = os.path.relpath(source_root)
        image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=context_dir),
            dockerfile=docker_build.DockerfileArgs(
                location=os.path.normpath(os.path.join(context_dir, DOCKERFILE))
            ),
            platforms=[docker_build.Platform.LINUX_ARM64],  # Graviton Fargate
            push=True,
            tags=[pulumi.Output.concat(repository.repository_url, ":", config.stack)],
            registries=[
                docker_build.RegistryArgs(
                    address=repository.repository_url,
                    username=token.user_name,
                    password=pulumi.Output.secret(token.password),
                )
            ],
            opts=child,
        )
        image_ref = pulumi.Output.concat(repository.repository_url, "@", image.digest)

        # --- roles --------------------------------------------------------------------
        logs = log_group(
            f"{name}-logs",
            log_group_name=f"/ecs/{config.name_prefix}/worker",
            config=config,
            kms_key_arn=logs_key_arn,
            opts=child,
        )
        # Only ECS tasks of this account and region may assume the roles (confused deputy).
        trust = iam.service_trust_policy(
            "ecs-tasks.amazonaws.com",
            condition={
                "StringEquals": {"aws:SourceAccount": ctx.account_id},
                "ArnLike": {"aws:SourceArn": ctx.arn("ecs", "*")},
            },
        )
        via = ctx.service_host
        execution_statements = [
            iam.statement(["ecr:GetAuthorizationToken"], ["*"], sid="RegistryLogin"),
            iam.statement(list(IMAGE_PULL_ACTIONS), [repository.arn], sid="PullWorkerImage"),
            iam.log_writer(logs.arn),
            iam.statement(["secretsmanager:GetSecretValue"], [secret_arn], sid="ReadOpenAiKey"),
        ]
        if data_key_arn is not None:
            execution_statements.append(
                iam.statement(["kms:Decrypt"], [data_key_arn], sid="DecryptOpenAiKey",
                              condition={"StringEquals": {"kms:ViaService": via("secretsmanager")}})
            )  # fmt: skip
        connections = [
            pulumi.Output.concat(
                ctx.arn("execute-api", ""), api_id, "/", stage_name, f"/{method}/@connections/*"
            )
            for method in CONNECTIONS_METHODS
        ]
        task_statements = [
            # Every slot's queue: a worker may come to hold any slot.
            iam.statement(list(QUEUE_CONSUMER_ACTIONS), list(queue_arns), sid="ConsumeAudioQueue"),
            iam.statement(list(SESSION_TABLE_ACTIONS), [table_arn], sid="SessionTable"),
            iam.statement(["execute-api:ManageConnections"], connections, sid="PostToCallers"),
        ]
        if data_key_arn is not None:
            task_statements.append(
                iam.statement(["kms:Decrypt"], [data_key_arn], sid="DecryptQueueAndTable",
                              condition={"StringEquals": {"kms:ViaService": [
                                  via("sqs"), via("dynamodb")]}})
            )  # fmt: skip
        self.policies = {
            "execution": iam.identity_policy(execution_statements),
            "task": iam.identity_policy(task_statements),
        }
        execution_role = aws.iam.Role(
            f"{name}-execution-role",
            description="ECS agent for the voice-agent worker: pull image, write logs, read key",
            assume_role_policy=trust,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-execution-policy",
            role=execution_role.id,
            policy=self.policies["execution"],
            opts=child,
        )
        task_role = aws.iam.Role(
            f"{name}-task-role",
            description="voice-agent worker: audio queues, sessions and slot leases, @connections",
            assume_role_policy=trust,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-task-policy", role=task_role.id, policy=self.policies["task"], opts=child
        )

        # --- cluster, task, service ---------------------------------------------------
        cluster = aws.ecs.Cluster(f"{name}-cluster", name=config.name_prefix, opts=child)
        capacity = aws.ecs.ClusterCapacityProviders(
            f"{name}-capacity",
            cluster_name=cluster.name,
            capacity_providers=["FARGATE", "FARGATE_SPOT"],
            default_capacity_provider_strategies=[
                aws.ecs.ClusterCapacityProvidersDefaultCapacityProviderStrategyArgs(
                    capacity_provider="FARGATE_SPOT", weight=1
                )
            ],
            opts=child,
        )
        # Fixed here, not taken from the service: the task definition (the service's input)
        # carries it, and autoscaling's metric dimension must match it.
        service_name = worker_service_name(config)
        environment = {
            "SESSIONS_TABLE": table_name,
            **slot_environment(config, queue_urls),
            "DRAIN_WAIT_SECONDS": str(config.drain_wait_seconds),
            # The value of the Service dimension of the ActiveCalls metric it logs.
            ENV_METRICS_SERVICE: service_name,
            "CONNECTIONS_ENDPOINT_URL": connections_url,
            "REALTIME_BASE_URL": config.realtime_base_url,
            "REALTIME_MODEL": config.model,
            "REALTIME_VOICE": config.voice,
            "REALTIME_INSTRUCTIONS": config.instructions,
            "AUDIO_CHUNK_BYTES": str(config.audio_chunk_bytes),
            # Per-call limits the worker enforces (BridgeSettings in worker/core.py).
            "MAX_CALL_SECONDS": str(config.max_call_seconds),
            "CLIENT_MESSAGES_PER_SECOND": str(config.client_messages_per_second),
            "CLIENT_MESSAGE_BURST": str(config.client_message_burst),
            "AWS_REGION": config.region,
            "LOG_LEVEL": config.log_level,
            "HEALTH_FILE": HEALTH_FILE,
        }
        container: dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": image_ref,
            "essential": True,
            "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
            # Resolved by the ECS agent at task start; never in the task definition itself.
            "secrets": [{"name": "OPENAI_API_KEY", "valueFrom": secret_arn}],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": logs.name,
                    "awslogs-region": config.region,
                    "awslogs-stream-prefix": CONTAINER_NAME,
                },
            },
            "healthCheck": {
                "command": ["CMD", "python", "-m", "worker.health"],
                "interval": 15,
                "timeout": 5,
                "retries": 3,
                "startPeriod": 15,
            },
            "stopTimeout": STOP_TIMEOUT_S,
            # Nothing but the heartbeat file is written, and that goes to a scratch volume.
            "readonlyRootFilesystem": True,
            "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],
        }
        task = aws.ecs.TaskDefinition(
            f"{name}-task",
            family=f"{config.name_prefix}-worker",
            cpu=str(config.worker_cpu),
            memory=str(config.worker_memory),
            network_mode="awsvpc",
            requires_compatibilities=["FARGATE"],
            runtime_platform=aws.ecs.TaskDefinitionRuntimePlatformArgs(
                cpu_architecture="ARM64", operating_system_family="LINUX"
            ),
            execution_role_arn=execution_role.arn,
            task_role_arn=task_role.arn,
            volumes=[aws.ecs.TaskDefinitionVolumeArgs(name="tmp")],
            container_definitions=pulumi.Output.json_dumps([container]),
            opts=child,
        )
        strategies = [
            aws.ecs.ServiceCapacityProviderStrategyArgs(capacity_provider="FARGATE_SPOT", weight=1)
        ]
        if config.worker_on_demand_base > 0:
            # The first N tasks on regular Fargate (never reclaimed); the rest on Spot.
            strategies.insert(
                0,
                aws.ecs.ServiceCapacityProviderStrategyArgs(
                    capacity_provider="FARGATE", base=config.worker_on_demand_base, weight=0
                ),
            )
        service = aws.ecs.Service(
            f"{name}-service",
            name=service_name,
            cluster=cluster.arn,
            task_definition=task.arn,
            desired_count=config.worker_count,
            capacity_provider_strategies=strategies,
            # 1.4.0+ is what Fargate Spot needs for ARM64 tasks.
            platform_version="LATEST",
            network_configuration=aws.ecs.ServiceNetworkConfigurationArgs(
                subnets=network.worker_subnet_ids,
                security_groups=[network.worker_security_group_id],
                assign_public_ip=network.worker_assign_public_ip,
            ),
            # New tasks start before old ones stop, so a deploy never drops live calls.
            deployment_minimum_healthy_percent=100,
            deployment_maximum_percent=200,
            deployment_circuit_breaker=aws.ecs.ServiceDeploymentCircuitBreakerArgs(
                enable=True, rollback=True
            ),
            enable_ecs_managed_tags=True,
            propagate_tags="SERVICE",
            # Don't block `pulumi up` on task health: with no OpenAI key yet, tasks can't start.
            wait_for_steady_state=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[capacity],
                # Once autoscaling owns the task count, a `pulumi up` must not reset it to
                # workerCount (scaling in the middle of calls). workerCount is the count the
                # service starts with, and reaches it later as autoscaling's minimum:
                # registering the new range moves the current count into it. (Turning
                # autoscaling off again: `pulumi up --refresh`, so the count left by
                # autoscaling is seen and set back to workerCount.)
                ignore_changes=["desired_count"] if config.worker_autoscaled else None,
            ),
        )

        self.repository_url = repository.repository_url
        self.image_digest = image.digest
        self.image_ref = image_ref
        self.cluster_name = cluster.name
        self.service_name = service.name
        self.register_outputs(
            {
                "image_ref": self.image_ref,
                "cluster": self.cluster_name,
                "service": self.service_name,
            }
        )
