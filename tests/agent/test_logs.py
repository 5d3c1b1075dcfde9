"""logfmt lines: secrets masked everywhere, repeated conditions logged once per interval."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from agent.logs import LogfmtFormatter, OncePer, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET http://scraper:pw-1@h:8000/metrics", "GET http://scraper:***@h:8000/metrics"),
        ("'HTTPS://u:p%40ss@[::1]/m'", "'HTTPS://u:***@[::1]/m'"),
        ("Authorization: Basic YWxpY2U6czNjcmV0", "Authorization: Basic ***"),
        ("bearer abcdefghijklmnop", "bearer ***"),
        ("http://h/m and user@example.com", "http://h/m and user@example.com"),
    ],
)
def test_redact_masks_url_passwords_and_credentials(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_every_logfmt_field_is_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    # A logger of its own: configure_logging would change the shared "tokenergy" logger.
    log = logging.Logger("redaction-test")
    log.addHandler(handler)
    try:
        raise ValueError("cannot reach http://u:pw-2@h/")
    except ValueError:
        log.exception("scrape of http://u:pw-1@h/ failed", extra={"url": "http://u:pw-3@h/"})
    line = stream.getvalue()
    assert line.count("\n") == 1 and "u:***@h" in line
    assert "pw-1" not in line and "pw-2" not in line and "pw-3" not in line


def test_once_per_lets_one_through_per_interval_and_counts_the_rest() -> None:
    now = [0.0]
    once = OncePer(10.0, clock=lambda: now[0])
    assert once.ready("emfile") == 0
    assert [once.ready("emfile") for _ in range(3)] == [None, None, None]
    assert once.ready("other") == 0, "keys are independent"
    now[0] = 10.5
    assert once.ready("emfile") == 3, "the next line says how many were left out"
    assert once.ready("emfile") is None


def test_a_command_leaves_the_process_logging_as_it_found_it(tmp_path: Path) -> None:
    # The command line runs inside tests (and twice in one process): the handler it adds
    # writes to the stderr of its time, which must not outlive the command.
    import sys
    import threading

    from agent.cli import main

    log = logging.getLogger("tokenergy")
    before = (log.handlers[:], log.level, log.propagate, sys.excepthook, threading.excepthook)
    assert main(["check-config", str(tmp_path / "missing.toml")]) != 0
    after = (log.handlers[:], log.level, log.propagate, sys.excepthook, threading.excepthook)
    assert after == before
