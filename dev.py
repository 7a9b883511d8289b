#!/usr/bin/env python3
"""Set-up and entry point for a fresh clone, needing only python3.

    python3 dev.py local [voice-agent local options]   # start the local stack
    python3 dev.py test  [pytest options]              # run the whole test suite

Both create ``.venv`` (the same environment ``pulumi up`` uses, see Pulumi.yaml) and install
the project into it, editable, with its dev and deploy extras; an install is redone only
when pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".voice-agent-installed"


def ensure_venv() -> None:
    """Create .venv and install the project unless the install matches pyproject.toml."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing voice-agent into .venv (a few minutes the first time) ...", flush=True)
    subprocess.run(
        [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-e", f"{ROOT}[dev]"],
        check=True,
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"local", "test"}:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    try:
        ensure_venv()
    except subprocess.CalledProcessError as exc:
        print(f"dev.py: installing into .venv failed ({exc}); see the pip output above",
              file=sys.stderr)
        return 1
    if command == "local":
        args = [str(BIN / "voice-agent"), "local", *rest]
    else:
        args = [str(PYTHON), "-m", "pytest", *rest]
    os.chdir(ROOT)
    # Hand the terminal over: Ctrl-C reaches the stack directly and stops it cleanly.
    os.execv(args[0], args)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
