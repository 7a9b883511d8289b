"""Renders of the Pulumi program under mocks, shared by the infra tests.

Each stack renders once per session, in its own interpreter (``mock_stack.py``), all in
parallel: dev (with an OpenAI key set as a secret), prod (no key), dev with hipaa=true, and
two with the lean $default route (defaultRouteIntegration=sqs): ``dev_lean``, which also sets
every limit, an origin list and the worker slots away from their defaults (so each value is
seen to arrive; its worker count is fixed, so it has no autoscaling), and ``hipaa_lean``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.infra.mock_stack import render_stacks, stack_file_config

OPENAI_TEST_KEY = "sk-test-not-a-real-key-123"
# dev_lean's settings away from the defaults.
LEAN_OVERRIDES = {
    "voice-agent:defaultRouteIntegration": "sqs",
    "voice-agent:maxSessions": "0",
    "voice-agent:maxCallSeconds": "1800",
    "voice-agent:clientMessagesPerSecond": "20",
    "voice-agent:clientMessageBurst": "40",
    "voice-agent:allowedOrigins": "https://app.example.com, http://localhost:8000/",
    "voice-agent:workerSlots": "3",
    "voice-agent:workerCount": "1",
    "voice-agent:workerMaxCount": "1",
    "voice-agent:drainWaitSeconds": "45",
}


ALL_STACKS = ("dev", "prod", "dev_hipaa", "dev_lean", "hipaa_lean")


@dataclass
class Resource:
    type: str
    name: str
    id: str
    provider: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    options: dict[str, Any]


class Graph:
    """The resources one render registered, with small lookups for assertions."""

    def __init__(self, render: dict[str, Any]) -> None:
        if "error" in render:
            raise AssertionError(f"render failed: {render['error']}")
        self.resources = [Resource(**r) for r in render["resources"]]
        self.outputs: dict[str, Any] = render["outputs"]
        self.calls: list[dict[str, Any]] = render["calls"]

    def of_type(self, type_: str) -> list[Resource]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Resource:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Resource:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]

    def by_id(self, rid: str) -> Resource:
        found = [r for r in self.resources if r.id == rid]
        assert len(found) == 1, f"expected one resource with id {rid}"
        return found[0]

    def by_output(self, key: str, value: Any) -> Resource:
        found = [r for r in self.resources if r.outputs.get(key) == value]
        assert len(found) == 1, f"expected one resource with {key}={value!r}, found {len(found)}"
        return found[0]

    def counts(self) -> Counter[str]:
        """Resources by type, the Pulumi provider and our components left out."""
        return Counter(
            r.type for r in self.resources
            if not r.type.startswith(("pulumi:", "voice-agent:"))
        )  # fmt: skip

    def aws(self) -> Iterator[Resource]:
        return (r for r in self.resources if r.type.startswith("aws:"))

    def text(self) -> str:
        return json.dumps([r.inputs for r in self.resources], default=str)


def dev_config(**overrides: str) -> dict[str, str]:
    return {**stack_file_config("dev"), **overrides}


@pytest.fixture(scope="session")
def renders() -> dict[str, dict[str, Any]]:
    """Raw renders; ``bad_model``, ``plain_key``, ``bad_route`` and ``bad_workers`` are
    expected to fail with a config error."""
    return render_stacks(
        {
            "dev": ("dev", dev_config(**{"voice-agent:openaiApiKey": OPENAI_TEST_KEY}),
                    ["voice-agent:openaiApiKey"]),
            "prod": ("prod", stack_file_config("prod"), []),
            "dev_hipaa": ("dev", dev_config(**{"voice-agent:hipaa": "true"}), []),
            "bad_model": ("dev", dev_config(**{"voice-agent:model": "gpt-4o-realtime"}), []),
            "plain_key": ("dev", dev_config(**{"voice-agent:openaiApiKey": OPENAI_TEST_KEY}), []),
            "dev_lean": ("dev", dev_config(**LEAN_OVERRIDES), []),
            "hipaa_lean": ("dev", dev_config(**{"voice-agent:hipaa": "true",
                                                "voice-agent:defaultRouteIntegration": "sqs"}), []),
            "bad_route": ("dev", dev_config(**{"voice-agent:defaultRouteIntegration": "http",
                                               "voice-agent:allowedOrigins": "example.com"}), []),
            "bad_workers": ("dev", dev_config(**{"voice-agent:workerCount": "3",
                                                 "voice-agent:workerMaxCount": "2"}), []),
        }
    )  # fmt: skip


@pytest.fixture(scope="session")
def stacks(renders: dict[str, dict[str, Any]]) -> dict[str, Graph]:
    return {name: Graph(renders[name]) for name in ALL_STACKS}


@pytest.fixture(scope="session")
def dev(stacks: dict[str, Graph]) -> Graph:
    return stacks["dev"]


@pytest.fixture(scope="session")
def prod(stacks: dict[str, Graph]) -> Graph:
    return stacks["prod"]


@pytest.fixture(scope="session")
def dev_hipaa(stacks: dict[str, Graph]) -> Graph:
    return stacks["dev_hipaa"]


@pytest.fixture(scope="session")
def dev_lean(stacks: dict[str, Graph]) -> Graph:
    return stacks["dev_lean"]


@pytest.fixture(scope="session")
def hipaa_lean(stacks: dict[str, Graph]) -> Graph:
    return stacks["hipaa_lean"]


@pytest.fixture(scope="session", params=["dev", "prod", "dev_hipaa"])
def any_stack(request: pytest.FixtureRequest, stacks: dict[str, Graph]) -> Graph:
    """The stacks with the default ($default as a Lambda function) route."""
    return stacks[request.param]


@pytest.fixture(scope="session", params=ALL_STACKS)
def every_stack(request: pytest.FixtureRequest, stacks: dict[str, Graph]) -> Graph:
    """Every rendered stack, the lean ones included."""
    return stacks[request.param]


@pytest.fixture(scope="session", params=["dev_lean", "hipaa_lean"])
def lean_stack(request: pytest.FixtureRequest, stacks: dict[str, Graph]) -> Graph:
    return stacks[request.param]


@pytest.fixture(scope="session", params=["prod", "dev_hipaa", "hipaa_lean"])
def hipaa_stack(request: pytest.FixtureRequest, stacks: dict[str, Graph]) -> Graph:
    return stacks[request.param]
