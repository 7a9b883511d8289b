"""voice-agent: a sub-second, zero-idle-cost voice agent on AWS.

Reads the stack config once, composes one component per AWS concern, exports what a
caller and an operator need. Every resource uses the tagged provider from ``aws_context``.
"""

from pathlib import Path

import pulumi

from infra.audio_queue import AudioQueue
from infra.aws_context import aws_context
from infra.config import read_stack_config
from infra.connect_authorizer import ConnectAuthorizer
from infra.functions import HandlerFunctions
from infra.keys import EncryptionKeys
from infra.network import Network
from infra.openai_secret import OpenAiSecret
from infra.sessions import SessionTable
from infra.websocket_api import WebSocketApi
from infra.worker_scaling import WorkerScaling
from infra.worker_service import WorkerService

SOURCE_ROOT = Path(__file__).resolve().parent

config = read_stack_config()
ctx = aws_context(config)

keys = EncryptionKeys("keys", config, ctx, ctx.opts) if config.hipaa else None
data_key = keys.data_key_arn if keys else None
logs_key = keys.logs_key_arn if keys else None

network = Network("network", config, ctx, ctx.opts)
sessions = SessionTable("sessions", config, data_key, ctx.opts)
audio = AudioQueue("audio", config, data_key, ctx.opts)
functions = HandlerFunctions(
    "handlers",
    config=config,
    ctx=ctx,
    source_root=SOURCE_ROOT,
    table_name=sessions.name,
    table_arn=sessions.arn,
    queue_urls=audio.urls_env,
    queue_arns=audio.arns,
    network=network,
    data_key_arn=data_key,
    logs_key_arn=logs_key,
    opts=ctx.opts,
)
authorizer = ConnectAuthorizer(
    "connect-auth",
    config=config,
    ctx=ctx,
    source_root=SOURCE_ROOT,
    network=network,
    table_name=sessions.name,
    table_arn=sessions.arn,
    queue_urls=audio.urls_env,
    data_key_arn=data_key,
    logs_key_arn=logs_key,
    opts=ctx.opts,
)
api = WebSocketApi(
    "websocket",
    config=config,
    ctx=ctx,
    functions=functions,
    authorizer=authorizer,
    queue_arns=audio.arns,
    data_key_arn=data_key,
    logs_key_arn=logs_key,
    opts=ctx.opts,
)
openai_key = OpenAiSecret("openai-key", config, data_key, ctx.opts)
worker = WorkerService(
    "worker",
    config=config,
    ctx=ctx,
    source_root=SOURCE_ROOT,
    network=network,
    table_name=sessions.name,
    table_arn=sessions.arn,
    queue_urls=audio.urls_env,
    queue_arns=audio.arns,
    api_id=api.api_id,
    stage_name=api.stage_name,
    connections_url=api.connections_url,
    secret_arn=openai_key.arn,
    data_key_arn=data_key,
    logs_key_arn=logs_key,
    opts=ctx.opts,
)
if config.worker_autoscaled:
    WorkerScaling(
        "worker-scaling",
        config=config,
        cluster_name=worker.cluster_name,
        service_name=worker.service_name,
        opts=ctx.opts,
    )

pulumi.export("wssUrl", api.wss_url)
pulumi.export("connectionsUrl", api.connections_url)
pulumi.export("sessionsTable", sessions.name)
pulumi.export("audioQueueUrls", audio.urls)  # in slot order
pulumi.export("audioDeadLetterQueueUrl", audio.dlq_url)
pulumi.export("clusterName", worker.cluster_name)
pulumi.export("serviceName", worker.service_name)
pulumi.export("workerSlots", config.worker_slots)
pulumi.export("imageDigest", worker.image_digest)
pulumi.export("imageRef", worker.image_ref)
pulumi.export("openaiSecretArn", openai_key.arn)
pulumi.export("authSecretArn", authorizer.secret_arn)
pulumi.export("tokenAudience", authorizer.audience)
pulumi.export("defaultRouteIntegration", config.default_route_integration)
pulumi.export("model", config.model)
pulumi.export("hipaa", config.hipaa)
