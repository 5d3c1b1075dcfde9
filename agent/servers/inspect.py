"""``tokenergy inspect SOURCE``: read one exposition and show what tokenergy makes of it.

SOURCE is a file, an ``http(s)://`` URL or ``-`` (standard input). The command prints the
detected engine and the token counters per model, as a small table or (``--json``) as
``{"engine": ..., "models": {"<model>": {"input_tokens": ..., "output_tokens": ...,
"cached_input_tokens": ...}}}`` with ``""`` for servers without a model label and ``null`` for
what the server does not expose. Bad input exits 1 with one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import BinaryIO, TextIO
from urllib.parse import urlsplit

from pydantic import ValidationError

from agent.config import ScrapeSettings, ServerSettings
from agent.readings import ServerReading
from agent.servers.parser import ExpositionError, ParseLimits
from agent.servers.profiles import ENGINE_NAMES, read_exposition_detailed
from agent.servers.scraper import ScrapeError, ServerScraper

__all__ = ["inspect_command", "render_json", "render_table"]

EXIT_OK = 0
EXIT_BAD_INPUT = 1


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
    try:
        if engine != "auto" and engine not in ENGINE_NAMES:
            raise _InputError(
                f"unknown engine {engine!r}; use auto or one of: {', '.join(ENGINE_NAMES)}"
            )
        if source.startswith(("http://", "https://")):
            body = _fetch(source, engine, scrape, ca_file)
        elif source == "-":
            body = _read_limited(stdin, limits.max_body_bytes, "standard input")
        else:
            body = _read_file(Path(source), limits.max_body_bytes)
        result = read_exposition_detailed(body, engine, limits)
    except _InputError as exc:
        stderr.write(f"tokenergy inspect: {exc}\n")
        return EXIT_BAD_INPUT
    except ExpositionError as exc:
        stderr.write(f"tokenergy inspect: {_where(source)}: {exc}\n")
        return EXIT_BAD_INPUT
    reading = result.reading
    if as_json:
        stdout.write(render_json(reading) + "\n")
    else:
        stdout.write(render_table(reading, result.warnings))
    return EXIT_OK


def _where(source: str) -> str:
    return "standard input" if source == "-" else source


def _fetch(url: str, engine: str, scrape: ScrapeSettings, ca_file: Path | None = None) -> bytes:
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
        # TODO(parser): hand fetched.content_type to the parser once it takes one.
        return scraper.fetch().body
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


def render_json(reading: ServerReading) -> str:
    """The ``--json`` document of a reading.

    Args:
        reading: A server reading.

    Returns:
        JSON text: engine and, per model, input, output and cached input tokens (null when
        not exposed).
    """
    models = {
        m.model: {
            "input_tokens": _number(m.input_tokens),
            "output_tokens": _number(m.output_tokens),
            "cached_input_tokens": _number(m.cached_input_tokens),
        }
        for m in reading.models
    }
    return json.dumps({"engine": reading.engine, "models": models}, sort_keys=False)


def _cell(value: float | None, ratio: bool = False) -> str:
    shown = _number(value)
    if shown is None:
        return "-"
    if ratio:
        return f"{float(shown):.2f}"
    return f"{shown:,}" if isinstance(shown, int) else f"{shown:,.2f}"


def _model_cell(model: str) -> str:
    if model == "":
        return "(no model label)"
    # Escape control characters so a hostile model name cannot rewrite the terminal.
    escaped = json.dumps(model, ensure_ascii=False)[1:-1]
    return escaped if len(escaped) <= 60 else escaped[:57] + "..."


def render_table(reading: ServerReading, warnings: tuple[str, ...] = ()) -> str:
    """A small human-readable table of a reading.

    Args:
        reading: A server reading.
        warnings: Notes to print under the table.

    Returns:
        The text, newline-terminated.
    """
    lines = [f"engine: {reading.engine}"]
    if reading.start_time_seconds is not None:
        lines.append(f"server start: {reading.start_time_seconds:.0f} (Unix s)")
    header = (
        "model",
        "input tokens",
        "output tokens",
        "cached input",
        "running",
        "waiting",
        "kv cache",
    )
    rows = [
        (
            _model_cell(m.model),
            _cell(m.input_tokens),
            _cell(m.output_tokens),
            _cell(m.cached_input_tokens),
            _cell(m.requests_running),
            _cell(m.requests_waiting),
            _cell(m.kv_cache_usage_ratio, ratio=True),
        )
        for m in reading.models
    ]
    if not rows:
        lines.append("no models reported yet")
    else:
        widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

        def fmt(row: tuple[str, ...]) -> str:
            first = row[0].ljust(widths[0])
            rest = "  ".join(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
            return f"{first}  {rest}".rstrip()

        lines.append(fmt(header))
        lines.extend(fmt(r) for r in rows)
    lines.extend(f"warning: {w}" for w in warnings)
    return "\n".join(lines) + "\n"
