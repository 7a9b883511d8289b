"""Run the Pulumi program under mocks and dump the resource graph as JSON.

``__main__.py`` runs at import and Pulumi's runtime settings are process-wide, so each
stack renders in a fresh interpreter: ``python -m tests.infra.mock_stack STACK CONFIG_JSON``
prints ``{"resources": [...], "outputs": {...}}`` (or ``{"error": "..."}``) on stdout; each
resource carries the options the mocks can't see (``ignoreChanges``).
``render_stacks`` runs several of them in parallel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "voice-agent"
ACCOUNT = "123456789012"
DIGEST = "sha256:" + "ab" * 32
SIGNING_KEY = "mock-signing-key-" + "k" * 47  # what RandomPassword "generates"


def stack_file_config(stack: str) -> dict[str, str]:
    """``Pulumi.<stack>.yaml``'s config as the CLI hands it to a program: all strings."""
    import yaml

    raw = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in raw.items()}


def render_stacks(
    cases: dict[str, tuple[str, dict[str, str], list[str]]], timeout: float = 120
) -> dict[str, dict[str, Any]]:
    """Render each case ``name -> (stack, config, secret_keys)`` in its own interpreter."""

    def run(case: tuple[str, dict[str, str], list[str]]) -> dict[str, Any]:
        stack, config, secret_keys = case
        proc = subprocess.run(
            [sys.executable, "-m", "tests.infra.mock_stack", stack, json.dumps(config),
             json.dumps(secret_keys)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )  # fmt: skip
        if proc.returncode != 0 and not proc.stdout.strip():
            raise RuntimeError(f"render of {stack} crashed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=min(len(cases), os.cpu_count() or 2)) as pool:
        results = dict(zip(cases, pool.map(run, cases.values()), strict=True))
    return results


def _main(stack: str, config: dict[str, str], secret_keys: list[str]) -> dict[str, Any]:
    import runpy

    from pulumi.runtime.settings import get_root_resource
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    region = config.get("aws:region", "us-east-1")
    mocks = _Mocks(region)
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)

    # Resource options the engine never shows the mocks, recorded as each resource registers.
    options: dict[str, dict[str, Any]] = {}

    def record_options(args: pulumi.ResourceTransformationArgs) -> None:
        options[f"{args.type_}::{args.name}"] = {
            "ignoreChanges": list(args.opts.ignore_changes or []),
        }

    def program() -> None:
        pulumi.runtime.register_stack_transformation(record_options)
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__")

    try:
        _sync_await(run_pulumi_func(program))
    except Exception as exc:  # noqa: BLE001 - reported to the parent test as data
        import traceback

        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}
    root = get_root_resource()
    outputs = getattr(root, "outputs", {}) or {}
    resolved = _sync_await(pulumi.Output.all(**outputs).future()) if outputs else {}
    for resource in mocks.resources:
        resource["options"] = options.get(f"{resource['type']}::{resource['name']}", {})
    return {"resources": mocks.resources, "calls": mocks.calls, "outputs": resolved}


class _Mocks(pulumi.runtime.Mocks):
    """Answers the engine's calls with plausible IDs, ARNs and URLs, and records every resource."""

    def __init__(self, region: str) -> None:
        self.region = region
        self.resources: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []

    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        inputs = dict(args.inputs)
        name = inputs.get("name") or f"{args.name}-mock"
        rid = f"{args.name}-{args.typ.rsplit(':', 1)[-1].lower()}-id"  # unique per name and type
        outputs = {**inputs, "name": name}
        typ = args.typ
        service = typ.split(":")[1].split("/")[0]
        arn = f"arn:aws:{service}:{self.region}:{ACCOUNT}:{name}"
        if typ == "aws:apigatewayv2/api:Api":
            rid = "wsapi123"
            outputs["executionArn"] = f"arn:aws:execute-api:{self.region}:{ACCOUNT}:{rid}"
            outputs["apiEndpoint"] = f"wss://{rid}.execute-api.{self.region}.amazonaws.com"
        elif typ == "aws:lambda/function:Function":
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{name}"
            outputs["version"] = "1" if inputs.get("publish") else "$LATEST"
            outputs["invokeArn"] = _invoke_arn(self.region, arn)
        elif typ == "aws:lambda/alias:Alias":
            arn = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{inputs['functionName']}:{name}"
            outputs["invokeArn"] = _invoke_arn(self.region, arn)
        elif typ == "aws:sqs/queue:Queue":
            outputs["url"] = f"https://sqs.{self.region}.amazonaws.com/{ACCOUNT}/{name}"
        elif typ == "aws:iam/role:Role":
            arn = f"arn:aws:iam::{ACCOUNT}:role/{name}"
        elif typ == "aws:cloudwatch/logGroup:LogGroup":
            arn = f"arn:aws:logs:{self.region}:{ACCOUNT}:log-group:{name}"
        elif typ == "aws:kms/key:Key":
            arn = f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{rid}"
            outputs["keyId"] = rid
        elif typ == "aws:ecr/repository:Repository":
            arn = f"arn:aws:ecr:{self.region}:{ACCOUNT}:repository/{name}"
            outputs["registryId"] = ACCOUNT
            outputs["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{name}"
        elif typ == "docker-build:index:Image":
            outputs["digest"] = DIGEST
        elif typ == "aws:ecs/cluster:Cluster":
            arn = f"arn:aws:ecs:{self.region}:{ACCOUNT}:cluster/{name}"
        elif typ == "aws:dynamodb/table:Table":
            arn = f"arn:aws:dynamodb:{self.region}:{ACCOUNT}:table/{name}"
        elif typ == "aws:secretsmanager/secret:Secret":
            arn = f"arn:aws:secretsmanager:{self.region}:{ACCOUNT}:secret:{name}-AbCdEf"
        elif typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = SIGNING_KEY
        outputs.setdefault("arn", arn)
        self.resources.append(
            {"type": typ, "name": args.name, "id": rid, "provider": args.provider,
             "inputs": _plain(inputs), "outputs": _plain(outputs)}
        )  # fmt: skip
        return rid, outputs

    def call(self, args: Any) -> dict[str, Any]:  # type: ignore[override]
        token = args.token
        self.calls.append({"token": token, "provider": args.provider})
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                    "userId": "AIDAMOCK", "id": ACCOUNT}  # fmt: skip
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws",
                    "reverseDnsPrefix": "com.amazonaws"}  # fmt: skip
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{z}" for z in "abc"]
            return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(3)],
                    "id": self.region}  # fmt: skip
        if token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {"userName": "AWS", "password": "mock-password", "authorizationToken": "x",
                    "proxyEndpoint": f"https://{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com",
                    "expiresAt": "2099-01-01T00:00:00Z", "id": self.region}  # fmt: skip
        raise NotImplementedError(f"no mock for {token}")


def _plain(value: Any) -> Any:
    """Inputs as JSON: archives become ``{"archive": {path in zip: source file}}``."""
    if isinstance(value, pulumi.AssetArchive):
        return {"archive": {k: _plain(v) for k, v in value.assets.items()}}
    if isinstance(value, pulumi.FileAsset):
        return value.path
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _invoke_arn(region: str, function_arn: str) -> str:
    return (
        f"arn:aws:apigateway:{region}:lambda:path/2015-03-31/functions/{function_arn}/invocations"
    )


if __name__ == "__main__":
    result = _main(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]))
    print(json.dumps(result, default=str))
