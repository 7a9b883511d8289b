"""Lambda deployment bundles: exactly the project modules a handler imports.

The import graph is walked statically (``ast``) from the handler module, following only the
project packages that ship to Lambda (``handlers``, ``wire``). Everything else must be the
standard library or what the Lambda Python runtime provides (boto3, botocore); anything
else fails the deployment here, not with an ImportError at the first call.
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pulumi

BUNDLED_PACKAGES = ("handlers", "wire")
RUNTIME_PROVIDED = frozenset({"boto3", "botocore"})  # part of the Lambda Python runtime
_ALLOWED_EXTERNAL = frozenset(sys.stdlib_module_names) | RUNTIME_PROVIDED


class HandlerBundleError(ValueError):
    """A handler imports something the bundle can't carry."""


@dataclass
class HandlerBundle:
    """The files of one function's bundle, by path inside the zip."""

    handler: str
    files: dict[str, Path] = field(default_factory=dict)

    def archive(self) -> pulumi.AssetArchive:
        # Sorted, so the same sources always make the same archive; paths relative to the
        # working directory (the project, under the CLI) so state doesn't depend on the
        # checkout's location.
        return pulumi.AssetArchive(
            {
                name: pulumi.FileAsset(os.path.relpath(path))
                for name, path in sorted(self.files.items())
            }
        )


def handler_module(handler: str) -> str:
    """``handlers.connect.handler`` -> ``handlers.connect``."""
    module, _, function = handler.rpartition(".")
    if not module or not function:
        raise HandlerBundleError(f"{handler!r} is not a module.function handler string")
    return module


def bundle_handler(root: Path, handler: str) -> HandlerBundle:
    """Walk the imports of ``handler`` (a Lambda handler string) below ``root``."""
    bundle = HandlerBundle(handler=handler)
    external: dict[str, set[str]] = {}
    pending = [handler_module(handler)]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is None:
            raise HandlerBundleError(f"{handler}: cannot find module {module} under {root}")
        bundle.files[path.relative_to(root).as_posix()] = path
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = module.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        for imported, is_optional in _imports(path, module):
            top = imported.split(".")[0]
            if top in BUNDLED_PACKAGES:
                resolved = _resolve(root, imported)
                if resolved is None:
                    raise HandlerBundleError(f"{module} imports {imported}, which does not exist")
                pending.append(resolved)
            elif top not in _ALLOWED_EXTERNAL and not is_optional:
                external.setdefault(top, set()).add(module)
    if external:
        found = "; ".join(f"{top} (imported by {', '.join(sorted(by))})"
                          for top, by in sorted(external.items()))  # fmt: skip
        raise HandlerBundleError(
            f"{handler} imports modules the Lambda runtime does not provide: {found}. "
            f"Handlers may use the standard library, {', '.join(sorted(RUNTIME_PROVIDED))} "
            f"and the packages {', '.join(BUNDLED_PACKAGES)}."
        )
    return bundle


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _resolve(root: Path, name: str) -> str | None:
    """``wire.queue.QueueEnvelope`` -> ``wire.queue``: the longest prefix that is a module."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if _module_file(root, candidate) is not None:
            return candidate
    return None


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """Dotted names ``module`` imports, each with whether the import is optional.

    ``from a import b`` yields ``a.b`` (the resolver trims it to ``a`` when ``b`` is not a
    module). Imports under ``if TYPE_CHECKING:`` never run and are skipped; imports guarded
    by ``except ImportError`` are optional.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, optional: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for branch in node.orelse:
                visit(branch, optional)
            return
        if isinstance(node, ast.Try):
            guarded = optional or any(_catches_import_error(h) for h in node.handlers)
            for statement in node.body:
                visit(statement, guarded)
            rest: list[ast.AST] = [*node.handlers, *node.orelse, *node.finalbody]
            for other in rest:
                visit(other, optional)
            return
        if isinstance(node, ast.Import):
            found.extend((alias.name, optional) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.append((base, optional))
            found.extend((f"{base}.{alias.name}", optional) for alias in node.names)
        for nested in ast.iter_child_nodes(node):
            visit(nested, optional)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {"ImportError", "ModuleNotFoundError"}
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in names for k in kinds)
