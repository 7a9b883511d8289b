"""The worker image's build context: everything worker/Dockerfile copies gets through."""

from __future__ import annotations

import fnmatch
import shlex

from infra.worker_service import DOCKERFILE
from tests.infra.mock_stack import ROOT


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, body) for p in prefixes) or (
            body.startswith("**/") and fnmatch.fnmatch(parts[-1], body.removeprefix("**/"))
        ):
            verdict = not negate
    return verdict


def test_every_copy_source_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for line in (ROOT / DOCKERFILE).read_text().splitlines():
        words = line.split()
        if words and words[0].upper() in ("COPY", "ADD"):
            words = shlex.split(line, comments=True)
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert sources, f"no COPY in {DOCKERFILE}"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source.rstrip("/"), patterns), f"{source} is excluded by .dockerignore"
    assert ignored(".venv", patterns) and ignored("tests/infra/conftest.py", patterns)
