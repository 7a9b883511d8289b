"""Each Lambda zip holds exactly the project modules its handler imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.connect_authorizer import HANDLER as AUTHORIZER_HANDLER
from infra.functions import HANDLERS
from infra.handler_bundle import HandlerBundleError, bundle_handler, handler_module
from tests.infra.conftest import Graph
from tests.infra.mock_stack import ROOT

IMPORTED_MODULES = """
import json, os, sys
sys.path.insert(0, os.getcwd())
root = os.getcwd()
before = set(sys.modules)
__import__(sys.argv[1])
loaded = [os.path.relpath(m.__file__, root).replace(os.sep, "/")
          for name, m in list(sys.modules.items())
          if name not in before and getattr(m, "__file__", None)]
# Project packages only: top-level folders of the repository with an __init__.py.
print(json.dumps(sorted(f for f in loaded if not f.startswith(("..", "."))
                        and os.path.isfile(os.path.join(root, f.split("/")[0], "__init__.py")))))
"""


def imported_project_files(module: str) -> set[str]:
    """What importing ``module`` really loads from this repository, in a fresh interpreter."""
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "SESSIONS_TABLE": "t", "AUDIO_QUEUE_URL": "q"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", IMPORTED_MODULES, module],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return set(json.loads(out.stdout))


# Every function the program deploys: the route handlers and the $connect authorizer.
FUNCTION_HANDLERS = {**{s.short_name: s.handler for s in HANDLERS}, "authorize": AUTHORIZER_HANDLER}


@pytest.mark.parametrize("handler", FUNCTION_HANDLERS.values(), ids=FUNCTION_HANDLERS.keys())
def test_zip_holds_what_the_handler_imports_and_nothing_else(handler: str, dev: Graph) -> None:
    function = next(f for f in dev.of_type("aws:lambda/function:Function")
                    if f.inputs["handler"] == handler)  # fmt: skip
    archive = function.inputs["code"]["archive"]
    # Paths in the zip are package paths; sources are the repository's own files.
    for name, source in archive.items():
        assert Path(ROOT, source).resolve() == (ROOT / name).resolve()
    assert set(archive) == imported_project_files(handler_module(handler))
    assert all(name.startswith(("handlers/", "wire/")) for name in archive)
    assert f"{handler_module(handler).replace('.', '/')}.py" in archive


def test_the_authorizer_zip_carries_only_the_token_and_slot_code(dev: Graph) -> None:
    function = next(f for f in dev.of_type("aws:lambda/function:Function")
                    if f.inputs["handler"] == AUTHORIZER_HANDLER)  # fmt: skip
    # It checks the token and places the call on a worker slot (wire/slots.py).
    assert set(function.inputs["code"]["archive"]) == {
        "handlers/__init__.py", "handlers/authorize.py",
        "wire/__init__.py", "wire/token.py", "wire/log_record.py", "wire/slots.py",
    }  # fmt: skip


def test_every_handler_bundle_is_present_and_stable() -> None:
    for handler in FUNCTION_HANDLERS.values():
        first = bundle_handler(ROOT, handler).files
        assert first == bundle_handler(ROOT, handler).files
        assert list(first) and "handlers/__init__.py" in first


# --- the import walker on made-up packages --------------------------------------------------


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_walker_follows_absolute_relative_and_from_package_imports(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "handlers/__init__.py": "",
        "handlers/connect.py": "from . import shared\nfrom .util.deep import x\nimport json\n"
                               "def handler(e, c): pass\n",
        "handlers/shared.py": "from wire import queue\nimport boto3\n"
                              "from botocore.config import Config\n",
        "handlers/util/__init__.py": "",
        "handlers/util/deep.py": "from ..shared import *\nx = 1\n",
        "handlers/unused.py": "",
        "wire/__init__.py": "",
        "wire/queue.py": "from wire.audio import RATE\n",
        "wire/audio.py": "RATE = 1\n",
        "wire/client.py": "import orjson\n",
    })  # fmt: skip
    files = bundle_handler(root, "handlers.connect.handler").files
    assert set(files) == {
        "handlers/__init__.py", "handlers/connect.py", "handlers/shared.py",
        "handlers/util/__init__.py", "handlers/util/deep.py",
        "wire/__init__.py", "wire/queue.py", "wire/audio.py",
    }  # fmt: skip


def test_walker_refuses_what_the_lambda_runtime_lacks(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "handlers/__init__.py": "",
        "handlers/connect.py": "from wire.client import parse\n",
        "wire/__init__.py": "",
        "wire/client.py": "import orjson\nparse = None\n",
    })  # fmt: skip
    with pytest.raises(HandlerBundleError, match=r"orjson \(imported by wire\.client\)"):
        bundle_handler(root, "handlers.connect.handler")


def test_walker_skips_type_checking_and_tolerates_guarded_imports(tmp_path: Path) -> None:
    root = write(tmp_path, {
        "handlers/__init__.py": "",
        "handlers/connect.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from mypy_boto3_sqs import SQSClient\n"
            "try:\n    import orjson\nexcept ImportError:\n    orjson = None\n"
        ),
    })  # fmt: skip
    assert set(bundle_handler(root, "handlers.connect.handler").files) == {
        "handlers/__init__.py", "handlers/connect.py"}  # fmt: skip


def test_walker_reports_missing_modules_and_bad_handler_strings(tmp_path: Path) -> None:
    root = write(tmp_path, {"handlers/__init__.py": "", "handlers/a.py": "import wire.nope\n",
                            "wire/__init__.py": ""})  # fmt: skip
    with pytest.raises(HandlerBundleError, match="cannot find module handlers.missing"):
        bundle_handler(root, "handlers.missing.handler")
    with pytest.raises(HandlerBundleError, match="not a module.function"):
        bundle_handler(root, "handler")
    # ``import wire.nope`` resolves to the package (wire) when no such module exists.
    assert "wire/__init__.py" in bundle_handler(root, "handlers.a.handler").files
