"""The cloud side: one Pulumi ``ComponentResource`` per AWS concern.

``__main__.py`` reads the stack config once (``infra.config``) and composes the components:
``keys`` (KMS, HIPAA mode), ``network``, ``sessions`` (DynamoDB), ``audio_queue`` (SQS FIFO),
``functions`` (the three Lambda handlers), ``websocket_api``, ``openai_secret`` and
``worker_service`` (ECR, image, ECS on Fargate Spot).

``infra.specs`` holds what the local stack shares with the cloud (table key schema, queue
attributes) and imports no Pulumi, so this package must not import Pulumi either: the
local stack imports ``infra.specs`` in an environment without the deploy extra.
"""
