"""The import packages are this project's, not another distribution's ``agent``/``exporters``."""

from pathlib import Path

import agent
import exporters

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_agent_package_is_this_project() -> None:
    assert agent.__file__ is not None
    assert Path(agent.__file__).resolve().is_relative_to(PROJECT_ROOT / "agent") or (
        Path(agent.__file__).resolve().parent.name == "agent"
        and (Path(agent.__file__).resolve().parent / "readings.py").is_file()
    )


def test_exporters_package_is_this_project() -> None:
    assert exporters.__file__ is not None
    here = Path(exporters.__file__).resolve().parent
    # Our exporters package carries our modules; the unrelated PyPI `exporters` does not.
    assert (here / "__init__.py").read_text().startswith('"""Exporters: turn an agent Snapshot')
