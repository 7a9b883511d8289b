"""The OpenAI API key in Secrets Manager, where only the worker's task can read it."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.config import StackConfig


class OpenAiSecret(pulumi.ComponentResource):
    """The secret, plus its value when ``openaiApiKey`` is configured.

    Without the config value the secret is created empty: the value is then put with
    ``aws secretsmanager put-secret-value`` and never passes through Pulumi state.
    """

    arn: pulumi.Output[str]
    has_value: bool

    def __init__(
        self,
        name: str,
        config: StackConfig,
        kms_key_arn: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("voice-agent:security:OpenAiSecret", name, None, opts)
        secret = aws.secretsmanager.Secret(
            f"{name}-secret",
            # Auto-named (random suffix): a deleted secret's name stays reserved during its
            # recovery window, which would block a destroy-then-up of the same stack.
            description=f"OpenAI API key of the voice-agent worker ({config.stack})",
            kms_key_id=kms_key_arn,  # None: the account's aws/secretsmanager key
            recovery_window_in_days=30 if config.hipaa else 7,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.has_value = config.openai_api_key is not None
        if config.openai_api_key is not None:
            aws.secretsmanager.SecretVersion(
                f"{name}-value",
                secret_id=secret.id,
                secret_string=config.openai_api_key,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.arn = secret.arn
        self.register_outputs({"arn": self.arn})
