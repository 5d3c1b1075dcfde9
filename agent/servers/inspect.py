"""``tokenergy inspect SOURCE``: read one exposition and show what tokenergy makes of it.

SOURCE is a file, an ``http(s)://`` URL or ``-`` (standard input). The command prints the
detected engine and, per model, the token counters, the phase times, the running and
waiting requests and the KV-cache usage, as a small table or (``--json``) as::

    {"engine": "vllm", "start_time_seconds": 1767225600 | null, "token_counters": true,
     "models": {"<model>": {"input_tokens": ..., "output_tokens": ...,
                            "cached_input_tokens": ..., "requests_running": ...,
                            "requests_waiting": ..., "kv_cache_usage_ratio": ...,
                            "prefill_seconds": ..., "decode_seconds": ...}},
     "warnings": ["..."]}

with ``""`` for servers without a model label and ``null`` for what the server does not
expose (never 0). Model names are whole in JSON; the table shortens filesystem paths to their
last part. Bad input exits 1 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import urlsplit

from pydantic import ValidationError

from agent.config import ScrapeSettings, ServerSettings
from agent.readings import ServerReading, TokenReading
from agent.servers.parser import ExpositionError, ParseLimits
from agent.servers.profiles import (
    ENGINE_NAMES,
    NO_TOKEN_COUNTERS,
    ExpositionResult,
    read_exposition_detailed,
)
from agent.servers.scraper import ScrapeError, ServerScraper

__all__ = ["display_model_names", "inspect_command", "render_json", "render_table"]

EXIT_OK = 0
EXIT_BAD_INPUT = 1

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# A Windows drive path or a path from the root, home or current directory.
_PATH_RE = re.compile(r"(?:[/~.]|[A-Za-z]:[\\/])")
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")
_BINARY_SAMPLE_BYTES = 4096


class _InputError(Exception):
    """A source that cannot be read; the message is the one line shown to the user."""


def inspect_command(
    source: str,
    engine: str,
    as_json: bool,
    stdin: BinaryIO,
    stdout: TextIO,
    stderr: TextIO,
    ca_file: Path | None = None,
) -> int:
    """Run ``tokenergy inspect``.

    Args:
        source: A file path, an ``http://`` or ``https://`` URL, or ``-`` for stdin.
        engine: ``auto`` or an engine name.
        as_json: Print JSON instead of a table.
        stdin: Binary standard input (read when ``source`` is ``-``).
        stdout: Where the result goes.
        stderr: Where the one-line error goes.
        ca_file: CA bundle (PEM) to verify an https source; None = the system store.

    Returns:
        0 on success, 1 when the source cannot be read or is not a readable exposition.
    """
    scrape = ScrapeSettings()
    limits = ParseLimits.from_settings(scrape)
    where = _where(source)
    try:
        if engine != "auto" and engine not in ENGINE_NAMES:
            raise _InputError(
                f"unknown engine {engine!r}; use auto or one of: {', '.join(ENGINE_NAMES)}"
            )
        scheme = _SCHEME_RE.match(source)
        if scheme is not None and scheme.group(1).lower() not in ("http", "https"):
            raise _InputError(
                f"unsupported URL scheme {scheme.group(1)!r} in {source}: use an http:// or "
                "https:// URL, a file, or - for standard input"
            )
        content_type: str | None = None
        if scheme is not None:
            body, content_type = _fetch(source, engine, scrape, ca_file)
        elif source == "-":
            body = _read_limited(stdin, limits.max_body_bytes, where)
        else:
            body = _read_file(Path(source), limits.max_body_bytes)
        _check_text(body, where)
        result = read_exposition_detailed(body, engine, limits, content_type)
    except _InputError as exc:
        stderr.write(f"tokenergy inspect: {exc}\n")
        return EXIT_BAD_INPUT
    except ExpositionError as exc:
        stderr.write(f"tokenergy inspect: {where}: {exc}\n")
        return EXIT_BAD_INPUT
    if as_json:
        stdout.write(render_json(result) + "\n")
    else:
        stdout.write(render_table(result))
    return EXIT_OK


def _where(source: str) -> str:
    return "standard input" if source == "-" else source


def _check_text(body: bytes, where: str) -> None:
    """Refuse binary data in one line, without echoing any of it."""
    if not body.strip():
        raise _InputError(f"{where}: empty body (no metrics at all)")
    sample = body[:_BINARY_SAMPLE_BYTES]
    # A few odd characters are tolerated: the cut at the sample's end may split one UTF-8
    # character, and the parser names a lone bad byte with its offset.
    text = sample.decode("utf-8", errors="replace")
    odd = sum(1 for c in text if c == "\ufffd" or (c < " " and c not in _TEXT_CONTROLS))
    if b"\0" in sample or odd > max(2, len(text) // 100):
        raise _InputError(
            f"{where}: binary data ({len(body)} bytes), not a Prometheus text exposition"
        )


def _fetch(
    url: str, engine: str, scrape: ScrapeSettings, ca_file: Path | None = None
) -> tuple[bytes, str | None]:
    try:
        server = ServerSettings.model_validate(
            {"name": "inspect", "url": url, "engine": engine, "ca_file": ca_file}
        )
        host = urlsplit(url).hostname
    except ValidationError as exc:
        raise _InputError(f"bad URL {url!r}: {exc.errors()[0]['msg']}") from None
    except ValueError as exc:
        raise _InputError(f"bad URL {url!r}: {exc}") from None
    if not host:
        raise _InputError(f"bad URL {url!r}: no host")
    scraper = ServerScraper(server, scrape)
    try:
        fetched = scraper.fetch()
        return fetched.body, fetched.content_type
    except ScrapeError as exc:
        raise _InputError(f"{url}: {exc}") from None
    finally:
        scraper.close()


def _read_limited(stream: BinaryIO, limit: int, what: str) -> bytes:
    try:
        data = stream.read(limit + 1)
    except OSError as exc:
        raise _InputError(f"cannot read {what}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise _InputError(f"{what} is over max_body_bytes={limit}")
    return data


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as handle:
            return _read_limited(handle, limit, str(path))
    except IsADirectoryError:
        raise _InputError(f"{path} is a directory, not an exposition file") from None
    except OSError as exc:
        raise _InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def _number(value: float | None) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if value.is_integer() else value


def _model_json(m: TokenReading) -> dict[str, float | int | None]:
    return {
        "input_tokens": _number(m.input_tokens),
        "output_tokens": _number(m.output_tokens),
        "cached_input_tokens": _number(m.cached_input_tokens),
        "requests_running": _number(m.requests_running),
        "requests_waiting": _number(m.requests_waiting),
        "kv_cache_usage_ratio": _number(m.kv_cache_usage_ratio),
        "prefill_seconds": _number(m.prefill_seconds),
        "decode_seconds": _number(m.decode_seconds),
    }


def render_json(result: ExpositionResult | ServerReading) -> str:
    """The ``--json`` document of a reading.

    Args:
        result: A reading with its warnings (or a bare reading: no warnings).

    Returns:
        JSON text: engine, start time (Unix s, or null), whether the server has token
        counters, per model every field of the table (null when not exposed), and the
        warnings.
    """
    if isinstance(result, ServerReading):
        result = ExpositionResult(result)
    reading = result.reading
    document = {
        "engine": reading.engine,
        "start_time_seconds": _number(reading.start_time_seconds),
        "token_counters": result.has_token_counters,
        "models": {m.model: _model_json(m) for m in reading.models},
        "warnings": list(result.warnings),
    }
    return json.dumps(document, sort_keys=False)


def _cell(value: float | None, ratio: bool = False) -> str:
    shown = _number(value)
    if shown is None:
        return "-"
    if ratio:
        return f"{float(shown):.2f}"
    return f"{shown:,}" if isinstance(shown, int) else f"{shown:,.2f}"


def _short_name(model: str) -> str:
    if not _PATH_RE.match(model):
        return model
    tail = re.split(r"[\\/]+", model.rstrip("\\/"))[-1]
    return tail if tail not in ("", ".", "..", "~") else model


def display_model_names(models: Iterable[str]) -> dict[str, str]:
    """Names to show for models: filesystem paths shortened to their last part.

    Shortening is for display only (labels and JSON keep the whole name). Hugging Face ids
    such as ``org/model`` are not paths and stay whole; two paths that would look the same
    once shortened both stay whole.

    Args:
        models: Model names as the server labels them.

    Returns:
        Model name -> the name to show.
    """
    names = list(dict.fromkeys(models))
    short = {m: _short_name(m) for m in names}
    # A short name that collides with another model's (short or whole) name would mislead.
    seen = collections.Counter(short.values())
    return {m: s if seen[s] == 1 and (s == m or s not in short) else m for m, s in short.items()}


def _model_cell(model: str, shown: str) -> str:
    if model == "":
        return "(no model label)"
    # Escape control characters so a hostile model name cannot rewrite the terminal.
    escaped = json.dumps(shown, ensure_ascii=False)[1:-1]
    return escaped if len(escaped) <= 60 else escaped[:57] + "..."


def _start_line(seconds: float) -> str:
    try:
        stamp = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return f"server start: {seconds:.0f} (Unix s)"
    return f"server start: {stamp:%Y-%m-%dT%H:%M:%SZ} ({seconds:.0f} Unix s)"


def render_table(result: ExpositionResult | ServerReading, warnings: tuple[str, ...] = ()) -> str:
    """A small human-readable table of a reading.

    Args:
        result: A reading with its warnings (or a bare reading).
        warnings: Notes to print under the table, for a bare reading.

    Returns:
        The text, newline-terminated. A server with no token counters gets one line saying
        so instead of a table of unknowns.
    """
    if isinstance(result, ServerReading):
        result = ExpositionResult(result, warnings)
    reading = result.reading
    lines = [f"engine: {reading.engine}"]
    if reading.start_time_seconds is not None:
        lines.append(_start_line(reading.start_time_seconds))
    notes = [w for w in result.warnings if not w.startswith(NO_TOKEN_COUNTERS)]
    if not result.has_token_counters:
        lines.extend(w for w in result.warnings if w.startswith(NO_TOKEN_COUNTERS))
    elif not reading.models:
        lines.append("no models reported yet")
    else:
        lines.extend(_table(reading.models))
    lines.extend(f"warning: {w}" for w in notes)
    return "\n".join(lines) + "\n"


def _table(models: tuple[TokenReading, ...]) -> list[str]:
    phases = any(m.prefill_seconds is not None or m.decode_seconds is not None for m in models)
    header: tuple[str, ...] = (
        "model",
        "input tokens",
        "output tokens",
        "cached input",
        "running",
        "waiting",
        "kv cache",
    )
    if phases:
        header += ("prefill s", "decode s")
    shown = display_model_names(m.model for m in models)
    rows = []
    for m in models:
        row: tuple[str, ...] = (
            _model_cell(m.model, shown[m.model]),
            _cell(m.input_tokens),
            _cell(m.output_tokens),
            _cell(m.cached_input_tokens),
            _cell(m.requests_running),
            _cell(m.requests_waiting),
            _cell(m.kv_cache_usage_ratio, ratio=True),
        )
        if phases:
            row += (_cell(m.prefill_seconds), _cell(m.decode_seconds))
        rows.append(row)
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def fmt(row: tuple[str, ...]) -> str:
        first = row[0].ljust(widths[0])
        rest = "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        return f"{first}  {rest}".rstrip()

    return [fmt(header), *(fmt(r) for r in rows)]
