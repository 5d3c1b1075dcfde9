"""Structured logging: logfmt lines (``ts=... level=info msg="..." key=value``) on stderr.

logfmt is what Prometheus, node_exporter and Loki read natively. Extra fields come from
``logger.info("msg", extra={...})``. Impure edge: configures the root logger once, in cli.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

# Attributes every LogRecord has; anything else was passed through ``extra``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@[],=+" for c in text) and "=" not in text:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """Formats a record as one logfmt line, extras included, exceptions escaped."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as ``key=value`` pairs on one line."""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    """Send tokenergy's logs to ``stream`` as logfmt.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        stream: Where to write; stderr by default.

    Returns:
        The ``tokenergy`` logger.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    log = logging.getLogger("tokenergy")
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    return log
