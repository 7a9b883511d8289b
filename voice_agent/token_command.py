"""``voice-agent token``: mint a connect token and print a ready-to-use URL.

- ``--local``: for the running local stack (reads what it left in ``.local-stack/``);
- ``--stack NAME``: for a deployed stack: reads its ``wssUrl``, ``authSecretArn`` and
  ``tokenAudience`` outputs with the Pulumi CLI and the signing key from Secrets Manager
  (needs the CLI and AWS credentials allowed ``secretsmanager:GetSecretValue`` on it).

A customer's backend mints tokens itself with a few lines (docs/tokens.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from wire import token as tokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="the running local stack")
    where.add_argument("--stack", help="a deployed Pulumi stack, e.g. dev")
    parser.add_argument(
        "--ttl",
        type=int,
        default=tokens.DEFAULT_TTL_SECONDS,
        help=f"seconds the token opens calls (1..{tokens.MAX_TTL_SECONDS})",
    )
    parser.add_argument("--subject", help="the caller's id in your system (optional)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.ttl <= tokens.MAX_TTL_SECONDS:
        print(f"voice-agent token: --ttl must be 1..{tokens.MAX_TTL_SECONDS}", file=sys.stderr)
        return 2
    try:
        if args.local:
            url, page = _local(args.ttl, args.subject)
        else:
            url, page = _deployed(args.stack, args.ttl, args.subject)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"voice-agent token: {exc}", file=sys.stderr)
        return 1
    print(f"WebSocket: {url}")
    print(f"Page:      {page}")
    print(f"(valid for {args.ttl} s to open a call)")
    return 0


def _local(ttl: int, subject: str | None) -> tuple[str, str]:
    from voice_agent.local_stack import LocalState, page_url

    state = LocalState.load()
    url = state.url_with_token(ttl, subject)
    return url, page_url(state.page_base, url)


def _deployed(stack: str, ttl: int, subject: str | None) -> tuple[str, str]:
    import boto3

    from voice_agent.local_stack import page_url, with_token

    outputs = _stack_outputs(stack)
    try:
        arn, wss, audience = outputs["authSecretArn"], outputs["wssUrl"], outputs["tokenAudience"]
    except KeyError as missing:
        raise RuntimeError(f"stack {stack!r} has no output {missing}; run `pulumi up`") from None
    region = arn.split(":")[3]
    secret = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=arn)
    token = tokens.mint(secret["SecretString"].encode(), audience, ttl_seconds=ttl, subject=subject)
    url = with_token(wss, token)
    return url, page_url("static/index.html (served over HTTPS)", url)


def _stack_outputs(stack: str) -> dict[str, Any]:
    try:
        done = subprocess.run(
            ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise RuntimeError("the Pulumi CLI is not installed (needed for --stack)") from None
    if done.returncode != 0:
        raise RuntimeError(f"pulumi stack output failed: {done.stderr.strip()[:500]}")
    return dict(json.loads(done.stdout))
