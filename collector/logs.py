"""One line per event, plain or JSON, with rate limiting for anything a sender can trigger."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., **extra}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _RESERVED)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = f"{stamp}Z {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        return line


def setup_logging(fmt: str, level: str) -> None:
    """Configure the root logger on stderr (stdout may carry records)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class RateLimiter:
    """At most one event per key per ``interval_s``; keys must come from a bounded set.

    ``check`` also counts what it held back, so the line that does get logged can say how often
    the condition happened since the previous one.
    """

    def __init__(self, interval_s: float, max_keys: int = 256) -> None:
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self.suppressed = 0

    def check(self, key: str, now: float, count: int = 1) -> int | None:
        """None while ``key`` is held back; else the count accumulated since its last event."""
        last = self._last.get(key)
        if last is None and len(self._last) >= self.max_keys:
            self.suppressed += count
            return None
        total = self._pending.get(key, 0) + count
        if last is not None and now - last < self.interval_s:
            self._pending[key] = total
            self.suppressed += count
            return None
        self._pending.pop(key, None)
        self._last[key] = now
        return total

    def allow(self, key: str, now: float) -> bool:
        """True when an event with ``key`` may be logged now."""
        return self.check(key, now) is not None
