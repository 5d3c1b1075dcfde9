"""Frozen copy of the exposition parser before issue 16: the "ours (old)" baseline.

Not a benchmark itself: ``bench_parser.py`` times it beside the current parser on the same
bodies. Kept verbatim (apart from this docstring) from ``agent/servers/parser.py`` at commit
b1300da, including its quadratic regular expressions, so that the comparison stays honest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.config import ScrapeSettings

__all__ = [
    "DEFAULT_LIMITS",
    "Exposition",
    "ExpositionError",
    "ParseError",
    "ParseLimits",
    "Sample",
    "Scanner",
    "family_candidates",
    "parse_exposition",
]


class ExpositionError(Exception):
    """An exposition that cannot be read: the base of every parser and profile error."""


class ParseError(ExpositionError):
    """A body that is not a valid exposition.

    Attributes:
        line: 1-based line number of the problem, or None when it concerns the whole body.
        problem: What is wrong, without the line prefix.
    """

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.line = line
        self.problem = problem
        super().__init__(f"line {line}: {problem}" if line is not None else problem)


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Limits that bound the work and memory spent on one body.

    Attributes:
        max_body_bytes: Largest body accepted, bytes (after any decompression).
        max_line_bytes: Longest line accepted, bytes, newline excluded.
        max_series_per_family: Most series accepted for one wanted sample name.
    """

    max_body_bytes: int = 16 * 1024 * 1024
    max_line_bytes: int = 256 * 1024
    max_series_per_family: int = 10_000

    @classmethod
    def from_settings(cls, scrape: ScrapeSettings) -> ParseLimits:
        """Build the limits from the ``[scrape]`` settings.

        Args:
            scrape: The scrape section of the configuration.

        Returns:
            The parser limits it names.
        """
        return cls(
            max_body_bytes=scrape.max_body_bytes,
            max_line_bytes=scrape.max_line_bytes,
            max_series_per_family=scrape.max_series_per_family,
        )


DEFAULT_LIMITS = ParseLimits()

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of a wanted sample name.

    Attributes:
        labels: Label pairs sorted by label name, values unescaped.
        value: The sample value (may be NaN or infinite; callers decide).
    """

    labels: Labels
    value: float

    def label(self, name: str, default: str | None = None) -> str | None:
        """Return the value of one label, or ``default`` when the series lacks it."""
        for key, value in self.labels:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class Exposition:
    """What was read of a body, for the wanted names only.

    Attributes:
        samples: Wanted sample name -> its series, in body order (duplicates removed).
        types: Family name -> TYPE (``counter``, ``gauge``, ``histogram``...), for the
            families of wanted names that declare one.
        helps: Family name -> HELP text (unescaped), likewise.
        duplicates: Number of repeated series that were dropped.
    """

    samples: Mapping[str, tuple[Sample, ...]] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)
    helps: Mapping[str, str] = field(default_factory=dict)
    duplicates: int = 0

    def get(self, name: str) -> tuple[Sample, ...]:
        """Series of one sample name; empty when absent."""
        return self.samples.get(name, ())

    def declared(self, name: str) -> bool:
        """True when the sample name has series or its family has a HELP/TYPE line."""
        if name in self.samples:
            return True
        return any(f in self.types or f in self.helps for f in family_candidates(name))


_SUFFIXES = ("_total", "_sum", "_count", "_bucket", "_created", "_info")


def family_candidates(name: str) -> tuple[str, ...]:
    """Family names whose HELP/TYPE may describe a sample name.

    Args:
        name: A sample name such as ``vllm:prompt_tokens_total`` or ``x_sum``.

    Returns:
        The name itself, then the name without a known suffix when it has one.
    """
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return (name, name[: -len(suffix)])
    return (name,)


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_NAME_RE = re.compile(_NAME + r"\Z")
# One quoted label value, with escapes; the unrolled loop keeps 1 MiB values linear.
_QUOTED = r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_LINE_RE = re.compile(
    rf"({_NAME})[ \t]*"
    rf"(?:\{{((?:[^}}\"\n]|{_QUOTED})*)\}})?"
    r"[ \t]+([^ \t\r]+)"
    r"(?:[ \t]+([^ \t\r#][^ \t\r]*))?"
    r"(?:[ \t]+#[ \t].*)?"
    r"[ \t\r]*\Z"
)
_LABEL_RE = re.compile(
    r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"([^"\\\n]*(?:\\.[^"\\\n]*)*)"[ \t]*(,|\Z)'
)
_ESCAPE_RE = re.compile(r'\\[\\n"]')
_HELP_ESCAPE_RE = re.compile(r"\\[\\n]")
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
_LEADING_BLANKS_RE = re.compile(r"(?m)^[ \t]+")
# A line is plausible when it is blank, a comment, or starts like a metric name (or `{`,
# the quoted-name syntax of newer servers); anything else means this is not an exposition.
_BAD_FIRST_RE = re.compile(rb"[^\s#a-zA-Z_:{]")
_LINE_START_RE = re.compile(rb"\n(?:([ \t])|(# EOF)|[^\s#a-zA-Z_:{])")


def _unescape(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], value) if "\\" in value else value


def _line_number(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parse_float(token: str) -> float | None:
    if "_" in token:
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _describe_start(line: bytes) -> str:
    shown = line.strip()[:40].decode("utf-8", "replace")
    return repr(shown)


class Scanner:
    """A reader compiled once for a fixed set of wanted sample names.

    Args:
        names: Exact sample names to read, e.g. ``vllm:prompt_tokens_total`` or
            ``tgi_request_input_length_sum``. HELP and TYPE lines of their families are read
            too (see :func:`family_candidates`).

    Raises:
        ValueError: When a name is not a valid metric name.
    """

    def __init__(self, names: Iterable[str]) -> None:
        wanted = sorted(set(names))
        for name in wanted:
            if not _NAME_RE.match(name):
                raise ValueError(f"not a metric name: {name!r}")
        self.names: frozenset[str] = frozenset(wanted)
        families = sorted({f for n in wanted for f in family_candidates(n)})
        # Longest first so that a name is never shadowed by its own prefix.
        # "(?!)" never matches: a scanner for no names skips every line.
        sample_alt = "|".join(re.escape(n) for n in sorted(wanted, key=len, reverse=True))
        sample_alt = sample_alt or "(?!)"
        family_alt = "|".join(re.escape(f) for f in sorted(families, key=len, reverse=True))
        family_alt = family_alt or "(?!)"
        # Anchored on "\n" (the body is scanned with a "\n" in front) so the regex engine
        # can jump from newline to newline; the look-ahead stops `x` matching `x_sum`.
        self._pattern = re.compile(
            rf"\n(?:({sample_alt})(?=[{{ \t\n])|#[ \t]+(HELP|TYPE)[ \t]+({family_alt})(?=[ \t\n]))"
        )

    def parse(self, body: bytes | str, limits: ParseLimits = DEFAULT_LIMITS) -> Exposition:
        """Read the wanted series of one body.

        Args:
            body: The exposition, as bytes (UTF-8) or text.
            limits: Size limits.

        Returns:
            The wanted series, with HELP and TYPE of their families.

        Raises:
            ParseError: When the body breaks the validation policy (see the module docstring).
        """
        raw = _as_bytes(body)
        text = _checked_text(raw, limits)
        return self._scan(text, limits)

    def _scan(self, text: str, limits: ParseLimits) -> Exposition:
        samples: dict[str, list[Sample]] = {}
        seen: dict[str, set[Labels]] = {}
        types: dict[str, str] = {}
        helps: dict[str, str] = {}
        duplicates = 0
        haystack = "\n" + text
        max_series = limits.max_series_per_family
        for match in self._pattern.finditer(haystack):
            start = match.start() + 1
            end = haystack.find("\n", start)
            line = haystack[start:end]
            name = match.group(1)
            if name is None:
                _read_meta(line, match.group(2), match.group(3), types, helps)
                continue
            parsed = _parse_line(line)
            if isinstance(parsed, str):
                raise ParseError(parsed, _line_number(text, start - 1))
            labels, value = parsed
            known = seen.setdefault(name, set())
            if labels in known:
                duplicates += 1
                continue
            if len(known) >= max_series:
                raise ParseError(
                    f"more than max_series_per_family={max_series} series of {name}",
                    _line_number(text, start - 1),
                )
            known.add(labels)
            samples.setdefault(name, []).append(Sample(labels, value))
        return Exposition(
            samples={k: tuple(v) for k, v in samples.items()},
            types=types,
            helps=helps,
            duplicates=duplicates,
        )


def parse_exposition(
    body: bytes | str, names: Iterable[str], limits: ParseLimits = DEFAULT_LIMITS
) -> Exposition:
    """Read the wanted sample names of one body (compiles a :class:`Scanner` each call).

    Args:
        body: The exposition, as bytes (UTF-8) or text.
        names: Exact sample names to read.
        limits: Size limits.

    Returns:
        The wanted series.

    Raises:
        ParseError: When the body is not a valid exposition.
    """
    return Scanner(names).parse(body, limits)


def _as_bytes(body: bytes | str) -> bytes:
    if isinstance(body, bytes):
        return body
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParseError(
            "text is not encodable as UTF-8 (lone surrogate)", _line_number(body, exc.start)
        ) from None


def _long_line_start(raw: bytes, limit: int) -> int | None:
    """Start offset of a line longer than ``limit`` bytes, or None.

    A line of more than ``limit`` bytes contains a whole aligned chunk of ``ceil((limit +
    1) / 2)`` bytes, so only chunks without a newline (one memchr each) need a closer look.
    """
    step = (limit + 2) // 2
    size = len(raw)
    for start in range(0, size - step + 1, step):
        end = start + step
        if raw.find(b"\n", start, end) >= 0:
            continue
        line_start = raw.rfind(b"\n", 0, start) + 1
        line_end = raw.find(b"\n", end)
        if (line_end if line_end >= 0 else size) - line_start > limit:
            return line_start
    return None


def _checked_text(raw: bytes, limits: ParseLimits) -> str:
    """Apply the whole-body checks and return the text up to any ``# EOF``."""
    if len(raw) > limits.max_body_bytes:
        raise ParseError(
            f"body is {len(raw)} bytes, over the limit max_body_bytes={limits.max_body_bytes}"
        )
    if not raw.strip():
        return ""
    if raw.lstrip()[:1] == b"<":
        raise ParseError(
            "not a Prometheus exposition: the body looks like HTML or XML "
            f"(starts with {_describe_start(raw.lstrip()[:60])})",
            raw.count(b"\n", 0, len(raw) - len(raw.lstrip())) + 1,
        )
    long_start = _long_line_start(raw, limits.max_line_bytes)
    if long_start is not None:
        line_end = raw.find(b"\n", long_start)
        length = (line_end if line_end >= 0 else len(raw)) - long_start
        raise ParseError(
            f"line is {length} bytes, over the limit max_line_bytes={limits.max_line_bytes}",
            raw.count(b"\n", 0, long_start) + 1,
        )
    end, blanks = _check_line_starts(raw)
    body = raw[:end] if end < len(raw) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
            raw.count(b"\n", 0, exc.start) + 1,
        ) from None
    if end == len(raw) and not text.endswith("\n"):
        raise ParseError(
            "body does not end with a newline (truncated?)", _line_number(text, len(text))
        )
    if blanks:
        # Leading blanks are legal; removing them keeps line numbers and lets the scanner
        # anchor on a newline followed directly by the name.
        text = _LEADING_BLANKS_RE.sub("", text)
    return text


def _check_line_starts(raw: bytes) -> tuple[int, bool]:
    """Check how every line starts, in one C-speed pass over the body.

    Returns:
        The offset where the exposition ends (an OpenMetrics ``# EOF`` line, else the body
        length) and whether some line starts with blanks.

    Raises:
        ParseError: When a line cannot start an exposition line, or text follows ``# EOF``.
    """
    blanks = False
    # Anchored on b"\n" (with one prepended) rather than (?m)^, which is several times
    # slower in CPython's re. Positions in `haystack` are offsets of line starts in `raw`.
    haystack = b"\n" + raw
    for match in _LINE_START_RE.finditer(haystack):
        start = match.start()
        line_end = raw.find(b"\n", start)
        line = raw[start : line_end if line_end >= 0 else len(raw)]
        if match.group(1) is not None:
            blanks = True
            stripped = line.lstrip(b" \t")
            if not stripped or _BAD_FIRST_RE.match(stripped) is None:
                continue
        elif match.group(2) is not None:
            if line.rstrip() != b"# EOF":
                continue
            rest = raw[start + len(line) :]
            if rest.strip():
                raise ParseError("text after '# EOF'", raw.count(b"\n", 0, start) + 2)
            return start, blanks
        raise ParseError(
            "not a Prometheus exposition: line starts with "
            f"{_describe_start(line)}, expected a metric name or '#'",
            raw.count(b"\n", 0, start) + 1,
        )
    return len(raw), blanks


def _read_meta(
    line: str, kind: str, family: str, types: dict[str, str], helps: dict[str, str]
) -> None:
    parts = line.split(None, 3)
    rest = parts[3] if len(parts) > 3 else ""
    if kind == "TYPE":
        types.setdefault(family, rest.strip())
    else:
        rest = rest.rstrip("\r")  # CRLF line ends
        helps.setdefault(family, _HELP_ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], rest))


def _parse_line(line: str) -> tuple[Labels, float] | str:
    """Parse one sample line; return ``(labels, value)`` or the problem as a string."""
    match = _LINE_RE.match(line)
    if match is None:
        return _diagnose(line)
    _, label_text, value_text, stamp_text = match.groups()
    labels: Labels = ()
    if label_text:
        parsed = _parse_labels(label_text)
        if isinstance(parsed, str):
            return parsed
        labels = parsed
    value = _parse_float(value_text)
    if value is None:
        return f"invalid sample value {value_text[:40]!r}"
    if stamp_text is not None and _parse_float(stamp_text) is None:
        return f"invalid timestamp {stamp_text[:40]!r}"
    return labels, value


def _parse_labels(text: str) -> Labels | str:
    pairs: dict[str, str] = {}
    pos = 0
    end = len(text)
    if not text.strip():
        return ()
    while pos < end:
        match = _LABEL_RE.match(text, pos)
        if match is None:
            shown = text[pos : pos + 40]
            return f"malformed label pair near {shown!r}"
        name, value, comma = match.groups()
        if name in pairs:
            return f"duplicate label name {name!r}"
        pairs[name] = _unescape(value)
        pos = match.end()
        if not comma:
            break
        if text[pos:].strip() == "":
            break
    if pos < end and text[pos:].strip():
        return f"unexpected text in labels near {text[pos : pos + 40]!r}"
    return tuple(sorted(pairs.items()))


def _diagnose(line: str) -> str:
    """Explain why a sample line did not match the grammar."""
    brace = line.find("{")
    if brace >= 0 and not re.search(rf"\{{(?:[^}}\"\n]|{_QUOTED})*\}}", line[brace:]):
        if line.count('"') % 2:
            return "unterminated quoted label value"
        return "label set is not closed with '}'"
    if brace >= 0:
        return "malformed label set or missing value after the labels"
    parts = line.split()
    if len(parts) < 2:
        return f"sample {line[:60]!r} has no value"
    return f"malformed sample line {line[:60]!r}"
