"""Container health check: healthy while the heartbeat file is fresh.

``python -m worker.health`` exits 0 if the event loop wrote its heartbeat in the last 30 s.
"""

from __future__ import annotations

import os
import sys
import time

MAX_AGE_S = 30


def main() -> int:
    path = os.environ.get("HEALTH_FILE") or "/tmp/worker-heartbeat"
    try:
        age = time.time() - os.stat(path).st_mtime
    except OSError:
        return 1
    return 0 if age <= MAX_AGE_S else 1


if __name__ == "__main__":
    sys.exit(main())
