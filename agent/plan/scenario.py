"""Strict parsing of the planning inputs: ranges, demands, growth rates, percentages, lists.

Pure module: no I/O, no clock. Every refusal is a :class:`ScenarioError` whose message is the
one line shown to the user, naming the option, the bad text and what is accepted.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "ScenarioError",
    "parse_demand",
    "parse_float_list",
    "parse_fraction",
    "parse_growth",
    "parse_hourly_list",
    "parse_range",
]

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PER = {"s": 1.0, "sec": 1.0, "h": 3600.0, "hour": 3600.0, "day": 86400.0, "d": 86400.0}
_NUMBER = re.compile(r"[+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_PER_PERIOD = re.compile(r"\s*([^/\s]+)\s*/\s*([a-z]+)\s*")
_GROWTH = re.compile(r"\s*([+-]?[^%\s]+)\s*%\s*/\s*(month|mo)\s*")


class ScenarioError(ValueError):
    """A planning input that cannot be read; ``str(exc)`` is the one line for the user."""


def _number(text: str, option: str, what: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise ScenarioError(f"{option}: {text!r} is not a number ({what})")
    value = float(text)
    if not math.isfinite(value):
        raise ScenarioError(f"{option}: {text!r} is not a finite number ({what})")
    return value


def parse_range(text: str, option: str = "--range") -> float:
    """Read a Prometheus-style duration such as ``7d``, ``12h``, ``90m`` or ``1w2d``.

    Args:
        text: The duration.
        option: The option name, for the error message.

    Returns:
        The duration in seconds, > 0.

    Raises:
        ScenarioError: Not a duration, or zero.
    """
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ScenarioError(
            f"{option}: {text!r} is not a duration; use e.g. 7d, 24h, 90m, 30s or 1w"
        )
    seconds = float(sum(int(n) * _DURATION_UNITS[u] for n, u in parts))
    if seconds <= 0:
        raise ScenarioError(f"{option}: {text!r} is zero; the range must be longer than 0 s")
    return seconds


def parse_demand(text: str, option: str = "--demand") -> float:
    """Read a token demand such as ``2e9/day``, ``5000/s`` or ``1.5e7/h``.

    Args:
        text: A count of output tokens per period (``/s``, ``/h``, ``/hour``, ``/day``, ``/d``).
        option: The option name, for the error message.

    Returns:
        The demand in output tokens per second, > 0.

    Raises:
        ScenarioError: Malformed, without a period, or not positive.
    """
    match = _PER_PERIOD.fullmatch(text)
    if match is None or match.group(2) not in _PER:
        raise ScenarioError(
            f"{option}: {text!r} is not a demand; use tokens per period, "
            "e.g. 2e9/day, 2.5e7/h or 5000/s"
        )
    count = _number(match.group(1), option, "tokens per period")
    if count <= 0:
        raise ScenarioError(f"{option}: {text!r} must be more than 0 tokens")
    return count / _PER[match.group(2)]


def parse_growth(text: str, option: str = "--growth") -> float:
    """Read a monthly growth rate such as ``15%/month``, ``-5%/month`` or ``0%/month``.

    Args:
        text: A percentage per month.
        option: The option name, for the error message.

    Returns:
        The growth as a fraction per month (``0.15``), > -1.

    Raises:
        ScenarioError: Malformed, another period, or a shrink of 100 % or more.
    """
    match = _GROWTH.fullmatch(text)
    if match is None:
        raise ScenarioError(
            f"{option}: {text!r} is not a growth rate; use a percentage per month, e.g. 15%/month"
        )
    raw = match.group(1)
    sign = -1.0 if raw.startswith("-") else 1.0
    value = sign * _number(raw[1:] if raw[0] in "+-" else raw, option, "percent per month") / 100
    if value <= -1.0:
        raise ScenarioError(f"{option}: {text!r} would shrink demand to nothing")
    return value


def parse_fraction(text: str, option: str, *, allow_one: bool = True) -> float:
    """Read a share written as a percentage (``30%``) or a fraction (``0.3``).

    Args:
        text: The share.
        option: The option name, for the error message.
        allow_one: Whether 100 % is accepted.

    Returns:
        The share as a fraction in [0, 1] (or [0, 1) without ``allow_one``).

    Raises:
        ScenarioError: Malformed or out of range.
    """
    stripped = text.strip()
    if stripped.endswith("%"):
        value = _number(stripped[:-1].strip(), option, "a percentage") / 100.0
    else:
        value = _number(stripped, option, "a fraction or a percentage")
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if value < 0 or not upper_ok:
        bound = "100%" if allow_one else "below 100%"
        raise ScenarioError(f"{option}: {text!r} must be between 0% and {bound}")
    return value


def parse_float_list(text: str, option: str, what: str) -> list[float]:
    """Read a comma-separated list of positive numbers such as ``0.05,0.10,0.20``.

    Args:
        text: The list.
        option: The option name, for the error message.
        what: What each number is, with its unit (for the error message).

    Returns:
        The numbers, in the order given, each > 0.

    Raises:
        ScenarioError: Empty item, not a number, or not positive.
    """
    items = text.split(",")
    values = []
    for item in items:
        value = _number(item.strip(), option, what)
        if value <= 0:
            raise ScenarioError(f"{option}: {item.strip()!r} must be more than 0 ({what})")
        values.append(value)
    return values


def parse_hourly_list(text: str, option: str = "--gpu-hourly") -> list[float | None]:
    """Read GPU-hour rates: numbers, or ``measured`` for the rate the agents were configured with.

    Args:
        text: e.g. ``measured,2.0,3.5``.
        option: The option name, for the error message.

    Returns:
        Rates per GPU-hour in the currency, ``None`` standing for ``measured``.

    Raises:
        ScenarioError: An item that is neither ``measured`` nor a positive number.
    """
    values: list[float | None] = []
    for item in text.split(","):
        if item.strip() == "measured":
            values.append(None)
        else:
            values.extend(parse_float_list(item, option, "currency per GPU-hour, or 'measured'"))
    return values
