"""Structured logging: logfmt lines (``ts=... level=info msg="..." key=value``) on stderr.

logfmt is what Prometheus, node_exporter and Loki read natively. Extra fields come from
``logger.info("msg", extra={...})``. Impure edge: configures the root logger once, in cli.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

# scheme://user:password@ -> scheme://user:***@ ; the user name stays (it helps debugging).
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]*):[^@\s/'\"]*@")
# Authorization header values: Basic/Bearer credentials.
_AUTH_VALUE = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str) -> str:
    """Mask secrets a message may carry: URL passwords and Basic/Bearer credentials.

    The one redaction helper: error messages, ``check-config`` output and every log line
    (through :class:`LogfmtFormatter`) go through it.

    Args:
        text: Any message.

    Returns:
        The message with ``scheme://user:pass@`` shown as ``scheme://user:***@`` and
        ``Basic``/``Bearer`` credentials as ``Basic ***``.
    """
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\1:***@", text)
    if "asic" in text or "earer" in text:
        text = _AUTH_VALUE.sub(r"\1 ***", text)
    return text


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
            f"msg={_quote(redact(record.getMessage()))}",
        ]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(redact(str(value)))}")
        if record.exc_info:
            parts.append(f"exc={_quote(redact(self.formatException(record.exc_info)))}")
        return " ".join(parts)


@contextlib.contextmanager
def logging_for_a_command(
    level: str = "info", stream: TextIO | None = None
) -> Iterator[logging.Logger]:
    """Logfmt logging and one-line exception hooks for one command, undone when it returns.

    The process-wide state (the ``tokenergy`` logger's handlers, level and propagation,
    ``sys.excepthook`` and ``threading.excepthook``) is put back afterwards, so calling the
    command line from a test, or twice in one process, leaks nothing into what comes next.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        stream: Where to write; stderr by default.

    Yields:
        The ``tokenergy`` logger.
    """
    log = logging.getLogger("tokenergy")
    saved = (log.handlers[:], log.level, log.propagate, sys.excepthook, threading.excepthook)
    try:
        configure_logging(level, stream)
        install_excepthooks(log)
        yield log
    finally:
        log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]
        sys.excepthook, threading.excepthook = saved[3], saved[4]


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


class OncePer:
    """Lets a repeating condition through once per interval per key, counting the rest.

    For conditions that can fire thousands of times a second (accept failures, a flood of
    bad clients): the log gets one line per interval that says how many were left out.

    Args:
        interval_seconds: Shortest time between two lines for the same key, s.
        clock: Monotonic clock, s.
    """

    def __init__(
        self, interval_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> int | None:
        """Whether to log ``key`` now.

        Returns:
            None to stay silent; else how many occurrences were left out since the last line.
        """
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


def install_excepthooks(log: logging.Logger) -> None:
    """Make an uncaught exception, in any thread, one logfmt line instead of a traceback.

    Args:
        log: Where the line goes.
    """

    def main_hook(kind: type[BaseException], exc: BaseException, tb: object) -> None:
        log.error("failed", extra={"error": describe(exc)})

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        error = describe(args.exc_value) if args.exc_value is not None else args.exc_type.__name__
        log.error("thread failed", extra={"thread": name, "error": error})

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def describe(exc: BaseException) -> str:
    """``Type: message``, or the type alone when the message is empty (``MemoryError``)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
