"""The structured log line every process writes: one JSON object per line.

Fields are named by the caller (``connection_id``, ``request_id``, ...). Audio, transcript
text, tokens and keys are never passed in: callers log sizes and ids, not content.
Standard library only, because the Lambda handlers import it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(service: str) -> logging.Logger:
    """Send JSON lines to stderr at ``LOG_LEVEL`` (default INFO); return the service logger.

    Idempotent: Lambda reuses the module between invocations.
    """
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonLineFormatter) for h in root.handlers):
        for handler in list(root.handlers):
            root.removeHandler(handler)  # Lambda's bootstrap adds a plain-text handler
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        root.addHandler(handler)
    root.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
    # boto's debug logs include request bodies (audio); never let them through.
    for noisy in ("botocore", "boto3", "urllib3", "websockets", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(service)


def now_ms() -> int:
    return int(time.time() * 1000)
