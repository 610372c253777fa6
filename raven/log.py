"""Structured logging: one line per decision, `key=value` text or JSON, set up once per process.

Call sites attach fields with `extra=kv(gateway=name, node=node)`; the formatter renders them after the
message (text) or as top-level keys (JSON), so an operator can grep or parse every decision.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

FIELDS_ATTR: Final = "raven_fields"


def kv(**fields: object) -> dict[str, object]:
    """`logger.info("msg", extra=kv(a=1))` attaches structured fields to one log line."""
    return {FIELDS_ATTR: fields}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, FIELDS_ATTR, None)
    return value if isinstance(value, dict) else {}


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname.lower(), record.name, _quote(record.getMessage())]
        parts += [f"{k}={_quote(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in _fields(record).items():
            out[k] = v if isinstance(v, int | float | bool | type(None)) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries are chatty at debug level; keep them at warning unless asked otherwise.
    for noisy in ("aiohttp.access", "kubernetes_asyncio", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level.lower() != "debug" else logging.INFO)
