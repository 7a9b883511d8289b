"""Test helpers: moto in server mode (the real DynamoDB/SQS wire protocol) and handler
modules bound to it, the way the local stack binds them."""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

from infra.specs import LocalResources, create_local_resources

REGION = "us-east-1"


@dataclass
class MotoStack:
    url: str
    resources: LocalResources
    sqs: Any
    dynamodb: Any

    def client(self, service: str) -> Any:
        """Another boto3 client on this moto server (e.g. ``secretsmanager``)."""
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.url,
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[MotoStack]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        kw = dict(
            region_name=REGION, endpoint_url=url, aws_access_key_id="t", aws_secret_access_key="t"
        )
        sqs = boto3.client("sqs", **kw)
        dynamodb = boto3.client("dynamodb", **kw)
        resources = create_local_resources(dynamodb, sqs, prefix="test")
        yield MotoStack(url, resources, sqs, dynamodb)
    finally:
        server.stop()


@contextmanager
def handler_env(stack: MotoStack, **extra: str) -> Iterator[None]:
    """The environment a deployed handler sees, pointed at moto; restored afterwards."""
    values = {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_DYNAMODB": stack.url,
        "AWS_ENDPOINT_URL_SQS": stack.url,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": stack.url,
        "SESSIONS_TABLE": stack.resources.table_name,
        "AUDIO_QUEUE_URL": stack.resources.queue_url,
        **extra,
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_handlers() -> dict[str, ModuleType]:
    """(Re)import the handler modules so their module-scope clients bind to the current env."""
    # boto3's default session caches what it read from the environment (endpoint URLs
    # included): start a new one, as a new Lambda container would.
    boto3.DEFAULT_SESSION = None
    runtime = importlib.reload(importlib.import_module("handlers.runtime"))
    modules = {"runtime": runtime}
    for name in ("connect", "default", "disconnect", "authorize"):
        modules[name] = importlib.reload(importlib.import_module(f"handlers.{name}"))
    return modules
