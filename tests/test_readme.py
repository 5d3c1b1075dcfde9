"""The README's quick start and .ci/run stay in step."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = quick_start_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("tokenergy demo")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_exactly() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quick_start_commands()[1] in ci_lines


def test_ci_builds_llama_server_and_lints_before_the_readme_command() -> None:
    """The live llama-server tests run in CI: the binary is built first, and a missing one fails."""
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [
        "tests/llamacpp/build_llama_server.sh",
        "export TOKENERGY_REQUIRE_LLAMA_SERVER=1",
        "ruff check .",
        "mypy --strict",
        quick_start_commands()[1],
    ]
    positions = [ci_lines.index(step) for step in steps]
    assert positions == sorted(positions)
