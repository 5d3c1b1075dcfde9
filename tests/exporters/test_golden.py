"""Golden exposition: a rich Snapshot rendered to text, compared with a checked-in file.

As node_exporter's ``collector/fixtures/*.out``: any change to a metric name, label, help text,
type or order shows in review as a diff of ``golden/rich_snapshot.prom``. After an intended
change, regenerate both files and commit the diff:
``TOKENERGY_UPDATE_GOLDEN=1 python -m pytest tests/exporters/test_golden.py``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

GOLDEN = Path(__file__).parent / "golden"


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("TOKENERGY_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    expected = path.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            text.splitlines(keepends=True),
            f"golden/{name}",
            "rendered",
        )
    )
    assert text == expected, f"exposition changed; if intended, regenerate (see docstring):\n{diff}"


def test_text_exposition_matches_golden(build: Any, render: Callable[..., Any]) -> None:
    rendered = render(build.rich_snapshot())
    _check("rich_snapshot.prom", generate_latest(rendered.registry).decode())


def test_openmetrics_exposition_matches_golden(build: Any, render: Callable[..., Any]) -> None:
    rendered = render(build.rich_snapshot())
    text = generate_openmetrics(rendered.registry)  # type: ignore[no-untyped-call]
    _check("rich_snapshot.om.txt", text.decode())
