"""The import packages are this project's, not another distribution's ``agent``/``exporters``.

PyPI has unrelated distributions named ``agent`` and ``exporters``; pip overwrites files
without warning, so the tests must prove they import this checkout's code.
"""

from pathlib import Path

import agent
import exporters

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_agent_package_is_this_project() -> None:
    assert agent.__file__ is not None
    assert Path(agent.__file__).resolve().is_relative_to(PROJECT_ROOT / "agent")


def test_exporters_package_is_this_project() -> None:
    assert exporters.__file__ is not None
    assert Path(exporters.__file__).resolve().is_relative_to(PROJECT_ROOT / "exporters")
