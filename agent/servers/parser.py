r"""Fast, selective reader of the Prometheus text format (0.0.4) and OpenMetrics text.

Pure module: no I/O, no clock, no threads.

Only the sample names a :class:`Scanner` is built for are parsed. A body is read as it
arrives, in pieces of whole lines (:class:`ExpositionReader`: the scraper receives each
network read straight into the reader's buffer), so no copy of a 1-2 MB body is ever
held. In each piece the comment lines are found with ``memchr`` on ``#``; they delimit the
family blocks. A block of an unwanted family is skipped without reading its lines (see
:class:`ExpositionReader` for when that is safe); in the others one compiled regular
expression, anchored on ``\n``, visits every line start in C and stops only at lines that
begin with a wanted name (in any spelling the escaping scheme allows, also as an OpenMetrics
quoted name ``{"name", ...}``), at ``# HELP``/``# TYPE`` of a wanted family and at lines that
cannot start an exposition line. Only those lines are decoded and parsed in Python, so
samples may precede their TYPE line and headerless samples may follow any block. Lines of
the common shape ``name{labels} value`` are split by the scan itself, and each distinct
label text is parsed once per server (:class:`ParseMemo`). A block of such lines only is
read by one ``findall``; in a histogram whose ``_sum`` alone is wanted, the ``_sum`` lines
are found with ``find`` and the buckets never visited. A 1.4 MB vLLM body with thousands of
histogram buckets costs about 0.7 ms of CPU, over 100x less than prometheus_client (see
``tests/benchmarks/bench_parser.py``).

Formats and name escaping (:meth:`Scanner.parse` ``content_type``):

* ``application/openmetrics-text`` means OpenMetrics: the body must end with ``# EOF``.
  ``text/plain`` means the classic format, where ``# EOF`` is an ordinary comment. Without a
  content type (or with another one) the format is sniffed: a ``# EOF`` line ends the body.
* prometheus_client 0.23+ escapes the names of OpenMetrics sample lines
  (``sglang:prompt_tokens_total`` arrives as ``sglang_prompt_tokens_total``) but not of
  ``# TYPE`` lines. The ``escaping`` parameter of the content type (``allow-utf-8``,
  ``underscores``, ``dots``, ``values``; the Prometheus content-negotiation spec, and
  ``prometheus_client/openmetrics/exposition.py``) selects the spellings looked for: the
  name as written first, then its escaped forms. With no ``escaping`` parameter (or no
  content type) ``underscores`` is assumed, as prometheus_client does; ``allow-utf-8`` reads
  names as written only. Under ``dots`` and ``values`` label names are unescaped too.
  Samples are returned under the name the caller asked for; when several spellings have
  series, the first spelling in that order wins (the others are not merged in).

Validation policy (what is refused, and where):

* The whole body: larger than ``max_body_bytes``; not UTF-8; a line longer than
  ``max_line_bytes``; a body whose first non-blank character is ``<`` (an HTML error page,
  refused as "not a Prometheus exposition"); a body that does not end with a newline (the
  format requires one, and a truncated body usually lacks it) unless its last line is
  ``# EOF``; text after an OpenMetrics ``# EOF`` line; an OpenMetrics body (by content
  type) without ``# EOF``. These checks run in C over every byte (memchr,
  ``bytes.isascii``); they hold for bytes whose lines are never parsed.
* Lines of the blocks that are scanned (wanted families, headerless samples): a line that
  does not start with ``#``, a metric-name character or ``{`` after optional blanks is
  refused as "not a Prometheus exposition". The lines of a skipped block are not looked at,
  nor the lines of a histogram block where only ``_sum``/``_count`` are wanted, besides
  those holding the wanted names.
* Lines of wanted families are validated in full: metric name, label names (plain or
  quoted), quoting and escapes of label values (``\\\\``, ``\\"``, ``\\n``; other backslash
  sequences are kept as written, as prometheus_client does; a raw carriage return inside a
  quoted value is kept), duplicate label names, the value (a decimal or exponent float,
  ``NaN``, ``+Inf``, ``-Inf``; no underscores, no hex) and an optional timestamp
  (validated, then dropped), plus an optional OpenMetrics exemplar (dropped). More than
  ``max_series_per_family`` series of one wanted name is refused. CRLF line ends are
  accepted; leading blanks on a line are ignored, as prometheus_client does.
* Lines of other families are not validated beyond the whole-body checks (like Prometheus's
  own scrape-path parser, this one is "less strict for the sake of efficiency").
* Every refusal names the line when it can be counted for free, else the byte offset (see
  :class:`ExpositionReader`).
* A repeated series (same name and label set) keeps its first value; later ones are dropped
  and counted in :attr:`Exposition.duplicates` (Prometheus drops duplicates the same way).

Every refusal is a :class:`ParseError` naming the line number (1-based) or, in a streamed
body past its first piece, the byte offset, and the problem.

Why find the blocks rather than scan every line start (as the release before did): the
vLLM body's 10,700 lines cost the line scan 1.2 ms, while the 166 comment lines that
delimit its 83 family blocks are found with ``memchr`` in 0.05 ms; the wanted families'
blocks are then read by a ``findall`` (counters, gauges) or by ``find`` on the ``_sum``
names (two histograms of 578 lines each). And why not ``bytes.find`` each wanted name:
one pass per spelling, 4 ms for the 27 spellings of the vLLM profile on a 1.4 MB body.

Work bound (the CPU-time budget): every repeat in these regular expressions is of a single
character class, and what follows a run can never start with a character of that run (no
nested or adjacent quantifiers matching the same characters; ``tests/servers/
test_parser.py`` checks this on the compiled patterns). So the engine never gives a run back
successfully: a match attempt is linear in the bytes it reads, and it keeps no backtracking
stack that grows with the line. The scan makes one attempt per newline, confined to its
line (the ``findall`` of a block too); ``find`` on a wanted name searches each line up to its
first hit only; finding comment lines costs one ``memchr`` per ``#`` and, past 64 ``#`` inside lines
in one piece, one regex attempt per newline; each wanted line is parsed once, in time
linear in its length, with no regex call holding the GIL for longer than one line. A parse
is therefore O(body bytes), bounded by ``max_body_bytes`` and ``max_line_bytes``: about 1 ms
per MB of a real body; the worst
hostile line measured (256 KiB of distinct label pairs, all parsed) costs about 35 ms, so a
16 MiB body of such lines about 2 s, in slices that release the GIL. The limits are the
budget: no clock is read. ``tests/benchmarks/bench_parser.py`` times the hostile lines.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from typing import Any, AnyStr, NamedTuple, cast

from agent.config import ScrapeSettings

__all__ = [
    "DEFAULT_LIMITS",
    "ESCAPING_SCHEMES",
    "PIECE_BYTES",
    "Exposition",
    "ExpositionError",
    "ExpositionReader",
    "ParseError",
    "ParseLimits",
    "ParseMemo",
    "Sample",
    "Scanner",
    "body_bytes",
    "family_candidates",
    "name_spellings",
]


class ExpositionError(Exception):
    """An exposition that cannot be read: the base of every parser and profile error."""


class ParseError(ExpositionError):
    """A body that is not a valid exposition.

    Attributes:
        line: 1-based line number of the problem, or None when it concerns the whole body
            or was not counted (see :class:`ExpositionReader`).
        offset: Byte offset of the problem in the body, when known.
        problem: What is wrong, without the line prefix.
    """

    def __init__(self, problem: str, line: int | None = None, offset: int | None = None) -> None:
        self.line = line
        self.offset = offset
        self.problem = problem
        if line is not None:
            text = f"line {line}: {problem}"
        elif offset is not None:
            text = f"byte {offset}: {problem}"
        else:
            text = problem
        super().__init__(text)


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
_Head = tuple[bytes, Labels]  # a line's name as spelled, and its parsed labels
# A family block: its key, its name (`:` read as `_`), whether it is read, its needles
# (read sparse) and its findall pattern (read dense); see ExpositionReader._new_block.
_BlockInfo = tuple[bytes, bytes, bool, tuple[bytes, ...] | None, re.Pattern[bytes] | None]
# One HELP or TYPE line: True for TYPE, the family as spelled, the text.
_Meta = tuple[bool, str, str]


class Sample(NamedTuple):
    """One series of a wanted sample name (a named tuple: cheap to build, immutable).

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
        samples: Wanted sample name (as asked for, whatever its spelling in the body) -> its
            series, in body order (duplicates removed).
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
_SUFFIX_WORDS = frozenset(s[1:].encode() for s in (*_SUFFIXES, "_gsum", "_gcount"))


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


ESCAPING_SCHEMES = ("allow-utf-8", "underscores", "dots", "values")
"""Values of the ``escaping`` content-type parameter (Prometheus content negotiation)."""

_DEFAULT_ESCAPING = "underscores"


def _values_escape(name: str) -> str:
    # prometheus_client escapes every OpenMetrics sample name under `values`: "U__", `_`
    # doubled, other characters outside [a-zA-Z0-9_] as _<hex code point>_.
    out = ["U__"]
    for i, ch in enumerate(name):
        if ch == "_":
            out.append("__")
        elif ch.isascii() and (ch.isalpha() or (ch.isdigit() and i > 0)):
            out.append(ch)
        else:
            out.append(f"_{ord(ch):x}_")
    return "".join(out)


def name_spellings(name: str, escaping: str = _DEFAULT_ESCAPING) -> tuple[str, ...]:
    """Spellings a legacy metric name can take in a body under one escaping scheme.

    Args:
        name: A metric or family name as a profile asks for it (legacy character set).
        escaping: One of :data:`ESCAPING_SCHEMES`.

    Returns:
        The name itself first, then its escaped forms (prometheus_client's sample lines,
        then its TYPE lines and the classic format), without repeats.
    """
    spellings = [name]
    if escaping == "underscores":
        spellings.append(name.replace(":", "_"))
    elif escaping == "dots":
        doubled = name.replace("_", "__")
        spellings += [doubled.replace(":", "__"), doubled]
    elif escaping == "values":
        spellings.append(_values_escape(name))
    return tuple(dict.fromkeys(spellings))


def _unescape_label_name(name: str, escaping: str) -> str:
    """Undo ``dots``/``values`` escaping of a label name (Go's ``model.UnescapeName``).

    A name that is not validly escaped is returned as it is, as Go does.
    """
    if escaping == "dots":
        return name.replace("_dot_", ".").replace("__", "_")
    if escaping != "values" or not name.startswith("U__"):
        return name
    rest = name[3:]
    out: list[str] = []
    last = 0
    for match in _VALUES_CODE_RE.finditer(rest):
        if "_" in rest[last : match.start()]:
            return name  # a lone underscore
        out.append(rest[last : match.start()])
        code = match.group(1)
        if code is None:
            out.append("_")
        else:
            point = int(code, 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                return name
            out.append(chr(point))
        last = match.end()
    if "_" in rest[last:]:
        return name
    out.append(rest[last:])
    return "".join(out)


def _content_type(value: str | None) -> tuple[str | None, str]:
    """Format (``openmetrics``, ``text`` or None = sniff) and escaping of a Content-Type."""
    if not value:
        return None, _DEFAULT_ESCAPING
    media, *params = value.split(";")
    media = media.strip().lower()
    fmt = {"application/openmetrics-text": "openmetrics", "text/plain": "text"}.get(media)
    escaping = _DEFAULT_ESCAPING
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "escaping":
            val = val.strip().strip('"').lower()
            # An unknown scheme reads as the default, as prometheus_client answers it.
            escaping = val if val in ESCAPING_SCHEMES else _DEFAULT_ESCAPING
    return fmt, escaping


# --- regular expressions ---------------------------------------------------------------
# Each is unambiguous: adjacent or nested quantifiers never match the same characters,
# so a failing attempt is linear in what it read (see "Work bound" in the module docstring).

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
# Label sets are matched on a copy of the line whose backslash escapes are replaced by two
# NULs (same length), so a quoted value is just `"[^"]*"`: single-character runs only, which
# the regex engine scans in a tight loop with no backtracking stack (a group repeated per
# escape grows that stack with the line and slows down on a 256 KiB value).
_ESCAPED_CHAR_RE = re.compile(r"\\.")
_PAIR_RE = re.compile(
    r'[ \t]*(?:([a-zA-Z_][a-zA-Z0-9_]*)|"([^"]*)")[ \t]*=[ \t]*"([^"]*)"[ \t]*([,}])'
)
_BLANKS_RE = re.compile(r"[ \t]*")
_RAW_BLANKS_RE = re.compile(rb"[ \t]*")
_NON_BLANK_RE = re.compile(rb"\S")
# Family blocks: the name of a HELP/TYPE/UNIT line, a comment line after the line scan, the
# sample name at the start of a line.
# The next HELP, TYPE or UNIT line of the same family, as clients write it (one space
# apart), optional: a whole header is one step. Any other next line is a step of its own.
_SAME_META = rb'(?:# (?:HELP|TYPE|UNIT) (?:"\1"|\2(?=[ \t\r\n]))[^\n]*\n)?'
_META_RE = re.compile(
    rb'#[ \t]+(?:HELP|TYPE|UNIT)[ \t]+(?:"([^"\n]*)"[^\n]*|([^ \t\r\n"]+)(?:[ \t\r"][^\n]*)?)\n'
    + _SAME_META
    + _SAME_META
)
_COMMENT_RE = re.compile(rb"\n[ \t]*#")
_NOT_IN_VALUE = re.compile(rb"[\t\r#_]")
_LINE_NAME_RE = re.compile(rb"[a-zA-Z_:][a-zA-Z0-9_:]*(?=[ \t{\r\n])")
_VALUES_CODE_RE = re.compile(r"_(?:_|([0-9a-fA-F]{1,6})_)")

# Groups of a line-start match (see Scanner._compile).


_Node = dict[str, "_Node"]


def _trie(words: Iterable[str]) -> bytes:
    """A regex alternation of ``words`` shaped as a trie: one character test per level.

    The flat alternation of 50 names costs 50 tests at every line of a body; the trie costs
    about one per character of the longest common prefix. Longer words come first so that a
    word is never shadowed by its own prefix (the caller's look-ahead makes it backtrack).
    """
    root: _Node = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: _Node) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:
            alts.append("")
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    return emit(root).encode("utf-8") if root else b"(?!)"


def _skip(blanks: re.Pattern[AnyStr], text: AnyStr, pos: int) -> int:
    """Offset of the first character after the blanks (spaces, tabs) at ``pos``."""
    match = blanks.match(text, pos)
    return match.end() if match is not None else pos


def _unescape(value: str, quotes: bool = True) -> str:
    r"""Undo ``\\``, ``\n`` and (``quotes``) ``\"``; other backslashes stay as written.

    Splitting on ``\\`` first reads the escapes left to right, as a tokenizer does, in C.
    """
    if "\\" not in value:
        return value
    parts = value.split("\\\\")
    if quotes:
        parts = [p.replace("\\n", "\n").replace('\\"', '"') for p in parts]
    else:
        parts = [p.replace("\\n", "\n") for p in parts]
    return "\\".join(parts)


def _parse_float(token: str) -> float | None:
    if "_" in token:
        return None
    try:
        return float(token)
    except ValueError:
        return None


def _describe_start(line: bytes | bytearray) -> str:
    shown = line.strip()[:40].decode("utf-8", "replace")
    return repr(shown)


def _found(
    raw: bytes | bytearray, pos: int, end: int, needles: tuple[bytes, ...], compiled: _Compiled
) -> Iterator[re.Match[bytes]]:
    """Matches of ``compiled.rest`` at the lines holding one of ``needles``, in order.

    The lines are those of ``raw[pos:end]`` after the first; ``rest`` says whether each is
    a wanted one. Each line is searched up to its first hit only, so the work stays linear
    in the bytes whatever a hostile line repeats.
    """
    newlines: Iterable[int]
    if len(needles) == 1:  # the common case: no merge
        newlines = _lines_holding(raw, pos, end, needles[0])
    else:
        newlines = heapq.merge(*(_lines_holding(raw, pos, end, needle) for needle in needles))
    match = compiled.rest.match
    last = -1
    for newline in newlines:
        if newline != last:  # a line holding two needles is read once
            last = newline
            found = match(raw, newline, end)
            if found is not None:
                yield found


def _lines_holding(raw: bytes | bytearray, pos: int, end: int, needle: bytes) -> Iterator[int]:
    """The newline before each line of ``raw[pos:end]``, after the first, holding ``needle``."""
    find = raw.find
    at = find(needle, pos, end)
    while at >= 0:
        newline = raw.rfind(b"\n", pos, at)
        if newline >= 0:
            yield newline
        line_end = find(b"\n", at, end)
        if line_end < 0:
            return
        at = find(needle, line_end, end)


def _nth_line(raw: bytes | bytearray, pos: int, index: int) -> int:
    """Start of the line ``index`` (from 0) of the lines from ``pos``."""
    for _ in range(index):
        pos = raw.find(b"\n", pos) + 1
    return pos


def _line_no(raw: bytes | bytearray, pos: int) -> int:
    return raw.count(b"\n", 0, pos) + 1


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The line-start scanner of one escaping scheme."""

    first: re.Pattern[bytes]  # matched at offset 0 (the first line)
    rest: re.Pattern[bytes]  # searched: every other line start, after its b"\n"
    # A spelling -> (name, rank in the name's spellings, preferred first) of each wanted
    # name spelled so (`vllm_x` spells both `vllm:x` and `vllm_x`); families likewise.
    sample_owners: Mapping[bytes, tuple[tuple[str, int], ...]]
    family_owners: Mapping[str, tuple[tuple[str, int], ...]]
    # Group numbers; a match's lastindex (the group that closed last) says the line kind.
    # Groups 1..quoted-1 are sample lines, four per first character of the wanted
    # spellings: label text and value of the common shape, or the rest of the line.
    quoted: int  # a quoted sample name
    meta: int  # HELP or TYPE
    family: int  # the family of a HELP/TYPE line (its lastindex)
    eof: int  # `# EOF`
    odd: int  # blanks, `\v`, `\f`, or a character that cannot start a line
    # Family keys (see _family_key) whose blocks are read; None: every block is (the
    # `dots` and `values` escapings spell names in ways the keys do not follow).
    wanted_keys: frozenset[bytes] | None
    # Family key -> what its only wanted lines hold (see _needles), for the keys
    # whose wanted names are all aggregates (`_sum`, `_count`) of a histogram or summary:
    # a few lines of a large block, found with `find` (see ExpositionReader).
    sparse: Mapping[bytes, tuple[bytes, ...]]
    # Family key -> what the lines of all its wanted names hold, where each is long enough
    # to search for: a block of the key that is no wanted name's family (`x_created`,
    # which prometheus_client writes as a family of its own beside a wanted `x_total`) is
    # read by those, as a sparse block.
    needles: Mapping[bytes, tuple[bytes, ...]]
    # Wanted names' families as block names (`:` read as `_`); None when not keyed.
    block_names: frozenset[bytes] | None
    # Family key -> its wanted names' lines of the common shape (labels optional), at line
    # starts: a block of those lines only (a counter's or gauge's) is read with one findall.
    dense: Mapping[bytes, re.Pattern[bytes]]


class ParseMemo:
    """What the parser derived from one server's bytes, kept across that server's scrapes.

    A server writes the same label sets, families and HELP/TYPE lines at every scrape: each
    label text is parsed, each family name reduced to its key and to how its block is read,
    each wanted family's HELP and TYPE lines read, and each line head ``name{labels}`` of a
    wanted block matched, once per server rather than once per scrape. Only results of pure
    functions of the bytes (and of the scanner, which keys the tables) are kept, so a memo
    never changes what a body reads as.
    Each table is cleared when it holds more than ``max_entries`` after a parse (a server
    whose label sets churn), and every table when their keys hold more than ``max_bytes``
    in all (a server whose lines are long as well: 10,000 label texts of 256 KiB would be
    2.5 GB).

    Args:
        max_entries: Largest size of one table kept between scrapes.
        max_bytes: Most bytes of keys kept between scrapes, all tables together.
    """

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries = 0  # entries at the last trim: the keys are weighed only after growth
        self._labels: dict[str, dict[bytes, Labels]] = {}
        self._heads: dict[tuple[str, re.Pattern[bytes]], dict[bytes, _Head]] = {}
        self._blocks: dict[tuple[str, re.Pattern[bytes]], dict[bytes, _BlockInfo]] = {}
        self._metas: dict[tuple[str, re.Pattern[bytes]], dict[bytes, tuple[_Meta, ...]]] = {}
        self.family_keys: dict[bytes, bytes] = {}

    def labels(self, escaping: str) -> dict[bytes, Labels]:
        """Label text (bytes, with braces) -> parsed labels, under one escaping scheme."""
        table = self._labels.get(escaping)
        if table is None:
            table = self._labels[escaping] = {}
        return table

    def heads(self, escaping: str, pattern: re.Pattern[bytes]) -> dict[bytes, _Head]:
        """Line head ``name{labels}`` -> (name, parsed labels), under one escaping scheme.

        Only heads that ``pattern`` (a block's findall pattern, see ``_Compiled.dense``)
        matched, and whose labels parsed, are put in.
        """
        table = self._heads.get((escaping, pattern))
        if table is None:
            table = self._heads[escaping, pattern] = {}
        return table

    def blocks(self, escaping: str, pattern: re.Pattern[bytes]) -> dict[bytes, _BlockInfo]:
        """Family name (of a HELP/TYPE/UNIT line) -> how its block is read, for one scanner.

        ``pattern`` is the scanner's first-line pattern (``_Compiled.first``): what a block
        is depends on the names the scanner wants.
        """
        table = self._blocks.get((escaping, pattern))
        if table is None:
            table = self._blocks[escaping, pattern] = {}
        return table

    def metas(self, escaping: str, pattern: re.Pattern[bytes]) -> dict[bytes, tuple[_Meta, ...]]:
        """A wanted family's HELP/TYPE/UNIT lines (their bytes) -> what they read as."""
        table = self._metas.get((escaping, pattern))
        if table is None:
            table = self._metas[escaping, pattern] = {}
        return table

    def trim(self) -> None:
        """Clear the tables that grew past ``max_entries``; all of them past ``max_bytes``."""
        tables = self._tables()
        entries = 0
        for table in tables:
            if len(table) > self.max_entries:
                table.clear()
            entries += len(table)
        if entries != self._entries:  # something was added (or cleared): weigh the keys
            if self.held_bytes > self.max_bytes:
                for table in tables:
                    table.clear()
                entries = 0
            self._entries = entries

    @property
    def held_bytes(self) -> int:
        """Bytes of the keys held, all tables together."""
        return sum(sum(map(len, table)) for table in self._tables())

    def _tables(self) -> list[dict[bytes, Any]]:
        return [
            self.family_keys,
            *self._labels.values(),
            *self._heads.values(),
            *self._blocks.values(),
            *self._metas.values(),
        ]


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
        self._families = sorted({f for n in wanted for f in family_candidates(n)})
        # One scanner per escaping scheme, compiled on first use (at most four).
        self._compiled: dict[str, _Compiled] = {}
        self._get_compiled(_DEFAULT_ESCAPING)

    def _get_compiled(self, escaping: str) -> _Compiled:
        compiled = self._compiled.get(escaping)
        if compiled is None:
            compiled = self._compiled[escaping] = self._compile(escaping)
        return compiled

    def _compile(self, escaping: str) -> _Compiled:
        samples = {n: name_spellings(n, escaping) for n in self.names}
        families = {f: name_spellings(f, escaping) for f in self._families}
        spellings = {s for spelled in samples.values() for s in spelled}
        family_trie = _trie({s for spelled in families.values() for s in spelled})
        # Every top-level branch starts with a literal character or a set, which the regex
        # engine tests before entering the branch: a line of an unwanted family costs a few
        # character tests. Hence one branch per first character of the wanted spellings,
        # each with its own group for the rest of the line (the name ends where it starts).
        branches = [
            # The name in group 4i+1; the common shape `{labels} value` (no timestamp, one
            # space, no `}` in a value) in groups 4i+2 and 4i+3; anything else in 4i+4.
            rb"("
            + re.escape(first).encode()
            + _trie(s[1:] for s in spellings if s[0] == first)
            + rb")(?=[ \t{\r\n])"
            + rb"(?:(\{[^}\n]*\}) ([^ \t\r\n#_][^ \t\n#_]*)(?![^\n])|([^\n]*))"
            for first in sorted({s[0] for s in spellings})
        ]
        quoted = 4 * len(branches) + 1
        branches += [
            rb'\{[ \t]*"(' + _trie(spellings) + rb')"',
            rb'#(?:[ \t]+(HELP|TYPE)[ \t]+"?(' + family_trie + rb')"?(?=[ \t\r\n])| (EOF))',
            # Anything else but a newline: blanks, `\v`, `\f`, or not an exposition.
            rb"[^\n\r#a-zA-Z_:{]()",
        ]
        inner = rb"(?:" + rb"|".join(branches) + rb")"
        keyed = escaping not in ("dots", "values")
        needles = _needles(samples) if keyed else {}
        sparse = {
            key: found
            for key, found in needles.items()
            if all(n.endswith(_SPARSE_SUFFIXES) for n in self.names if _key(n) == key)
        }
        return _Compiled(
            first=re.compile(inner),
            rest=re.compile(rb"\n" + inner),
            sample_owners={
                spelling.encode(): owners for spelling, owners in _owners(samples).items()
            },
            family_owners=_owners(families),
            quoted=quoted,
            meta=quoted + 1,
            family=quoted + 2,
            eof=quoted + 3,
            odd=quoted + 4,
            wanted_keys=frozenset(
                _family_key(f.encode()) for n in self.names for f in (n, *family_candidates(n))
            )
            if keyed
            else None,
            sparse=sparse,
            needles=needles,
            block_names=frozenset(f.replace(":", "_").encode() for f in families)
            if keyed
            else None,
            dense={
                key: re.compile(
                    rb"(?m)^(" + _trie(names) + rb")(\{[^}\n]*\})? ([^ \t\r\n#_][^ \t\n#_]*)$"
                )
                for key, names in _by_key(spellings).items()
            }
            if keyed
            else {},
        )

    def parse(
        self,
        body: bytes | str,
        limits: ParseLimits = DEFAULT_LIMITS,
        content_type: str | None = None,
    ) -> Exposition:
        """Read the wanted series of one whole body.

        Args:
            body: The exposition, as bytes (UTF-8) or text.
            limits: Size limits.
            content_type: The response's Content-Type header, when known; it sets the format
                and the escaping of names (see the module docstring). None = sniff.

        Returns:
            The wanted series, with HELP and TYPE of their families, under the names asked
            for.

        Raises:
            ParseError: When the body breaks the validation policy (see the module docstring);
                its ``line`` is always known.
        """
        reader = self.reader(limits, content_type, whole=True)
        reader.read_whole(body_bytes(body))
        return reader.close()

    def reader(
        self,
        limits: ParseLimits = DEFAULT_LIMITS,
        content_type: str | None = None,
        whole: bool = False,
        memo: ParseMemo | None = None,
        buffer: bytearray | None = None,
    ) -> ExpositionReader:
        """A reader of one body that arrives in pieces (see :class:`ExpositionReader`).

        Args:
            limits: Size limits.
            content_type: The response's Content-Type header, or None to sniff.
            whole: True when the body will be fed in one piece (line numbers in every error).
            memo: The server's parse memo, kept by the caller across scrapes; None = none.
            buffer: A receive buffer kept by the caller across scrapes; None = a new one.

        Returns:
            A new reader; feed it the body's bytes, then close it.
        """
        fmt, escaping = _content_type(content_type)
        compiled = self._get_compiled(escaping)
        return ExpositionReader(compiled, fmt, escaping, limits, whole, memo, buffer)


class ExpositionReader:
    """Reads one body fed in pieces of any size, keeping only the current piece in memory.

    A scrape feeds each network read (64 KiB) as it arrives, so no copy of a 1-2 MB body is
    ever made: memory stays flat whatever the body size, and the process does not fault in a
    fresh body-sized buffer at every scrape. Pieces are cut after their last newline; the
    partial line carries over to the next piece.

    Family blocks are skipped whole: prometheus_client, the Go client, llama.cpp, TGI and
    Triton write each family as one group of lines after its ``# HELP``/``# TYPE`` lines (the
    text format requires it: "all lines for a given metric must be provided as one single
    group"; OpenMetrics: families "MUST NOT be interleaved"). Comment lines are found with
    ``memchr`` on ``#``; a block of an unwanted family is skipped without reading its lines
    when its last line is still a sample of that family (a sample without HELP/TYPE that
    follows the group is then absent). Otherwise, and in blocks of wanted families, every
    line start is visited by the line scanner, with two shortcuts that read the same lines:

    - a block whose lines are all wanted ones of the common shape (``name{labels} value``,
      labels optional: a counter's or gauge's) is read by one ``findall``; at any other
      line the block goes back to the line scanner;
    - in a block where only aggregates are wanted (a histogram's ``_sum``), the lines
      holding their names are found with ``find``, as for an unwanted block when its last
      line is still the family's: a bucket line is then never visited, nor checked. So is
      a block of a wanted name's family key that is no wanted name's family
      (prometheus_client writes ``x_created`` as a family of its own beside ``x_total``).

    Lines that read as they are (one name, labels and values that read, no duplicate) are
    read in C, and from a server's second scrape on without the regex: a line whose head
    ``name{labels}`` the memo has seen is split at its last space (see :class:`ParseMemo`).
    A family's HELP, TYPE and UNIT lines, one after the other, are taken in one step; how a
    family's block is read, and what a wanted family's HELP and TYPE lines say, are looked
    up in the memo by their bytes: a body's 80-odd families cost a dictionary lookup each.

    So a body whose samples come in any order is still read in full, and only a sample of a
    wanted name inserted between two samples of one skipped family, which breaks the rule
    above, can be missed.

    Errors name the line while it can be counted for free (the first piece, or a body fed
    whole), else the byte offset: counting the lines of every piece would cost a third of
    the parse. ``tokenergy inspect URL`` reads the body whole and names the line.

    Args:
        compiled: The line scanner of the body's escaping scheme.
        fmt: ``openmetrics``, ``text`` or None (sniff).
        escaping: The name escaping scheme.
        limits: Size limits.
        whole: True when the body is fed in one piece.
        memo: The server's parse memo, or None.
        buffer: The receive buffer to use (a server's, reused across its scrapes; one
            reader at a time), or None for a new one of :data:`PIECE_BYTES`.
    """

    def __init__(
        self,
        compiled: _Compiled,
        fmt: str | None,
        escaping: str,
        limits: ParseLimits,
        whole: bool = False,
        memo: ParseMemo | None = None,
        buffer: bytearray | None = None,
    ) -> None:
        self.compiled = compiled
        self.fmt = fmt
        self.escaping = escaping
        self.limits = limits
        self.max_series = limits.max_series_per_family
        self._whole = whole
        # Keyed by the spelling's bytes; resolved to the names asked for at the end.
        self.series: dict[bytes, list[Sample]] = {}
        self.seen: dict[bytes, set[Labels]] = {}
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.duplicates = 0
        # Label text (bytes, with braces) -> parsed labels: a real body repeats one label
        # set per rank in every family, and a server at every scrape.
        self._memo = memo if memo is not None else ParseMemo()
        self._memo.trim()  # also after a scrape that failed before close()
        self.label_cache = self._memo.labels(escaping)
        self.label_cache[b""] = ()  # a line without labels (see _Compiled.dense)
        self._keys = self._memo.family_keys
        self._blocks = self._memo.blocks(escaping, compiled.first)
        self._metas = self._memo.metas(escaping, compiled.first)
        self.raw: bytes | bytearray = b""  # the piece being read: its first _end bytes
        self._end = 0
        self._size = 0  # bytes fed so far
        self._offset = 0  # offset of the current piece in the body
        self._pieces = 0  # pieces read before the current one
        self._started = False  # a piece was begun
        self._first_piece = b""  # kept only when fed whole, to number the lines of the tail
        # The receive buffer: a partial line at its front (_filled bytes), which starts at
        # _consumed in the body; a body read whole keeps its partial last line apart.
        self._buf = buffer
        self._filled = 0
        self._consumed = 0
        self._whole_tail = b""
        self._content = False  # a non-blank byte was seen
        self._eof = False
        # The family of the block being read (HELP/TYPE/UNIT name), its key, and whether
        # its lines must be scanned.
        self._block_family: bytes | None = None
        self._block_key: bytes | None = None
        self._block_name: bytes | None = None
        self._scan_block = True
        self._sparse: tuple[bytes, ...] | None = None  # the block's needles (sparse)
        self._dense: re.Pattern[bytes] | None = None  # its pattern (dense)

    @property
    def blank(self) -> bool:
        """True while the body fed so far holds nothing but whitespace."""
        if self._content:
            return False
        return _NON_BLANK_RE.search(self._partial()) is None

    def space(self) -> memoryview:
        """Room at the end of the reader's buffer for the next bytes of the body.

        Receive into it (``readinto``), release the view, then :meth:`commit` what was
        written: the body is never copied from the network buffer again.

        Returns:
            A writable view of the free end of the buffer (never empty).
        """
        buf = self._buf
        if buf is None:
            buf = self._buf = bytearray(PIECE_BYTES)
        if self._filled == len(buf):
            # One partial line fills the buffer: a bigger one, as long as the line may be
            # (commit refuses it past max_line_bytes, so this stays bounded).
            size = min(2 * len(buf), self.limits.max_line_bytes + 1)
            grown = bytearray(max(size, len(buf) + 1))
            grown[: self._filled] = buf
            self._buf = buf = grown
        return memoryview(buf)[self._filled :]

    def commit(self, count: int) -> None:
        """Read the ``count`` bytes just written into :meth:`space`.

        Every whole line is read at once; a partial last line waits for the rest.

        Args:
            count: Bytes written, 0 or more.

        Raises:
            ParseError: When the body read so far breaks the validation policy.
        """
        if count <= 0:
            return
        self._size += count
        limit = self.limits.max_body_bytes
        if self._size > limit:
            raise ParseError(
                f"body is at least {self._size} bytes, over the limit max_body_bytes={limit}"
            )
        buf = self._buf
        assert buf is not None  # space() made it
        old = self._filled
        filled = self._filled = old + count
        cut = buf.rfind(b"\n", old, filled) + 1
        if cut:
            self._read_piece(buf, cut, self._consumed)
            rest = filled - cut
            if rest:
                view = memoryview(buf)
                view[:rest] = view[cut:filled]  # the partial line moves to the front
                view.release()
            self._filled = rest
            self._consumed += cut
        if self._filled > self.limits.max_line_bytes:
            self._long_partial()

    def feed(self, data: bytes) -> None:
        """Read the next bytes of the body (copied into the reader's buffer).

        Args:
            data: The next bytes, any length.

        Raises:
            ParseError: When the body read so far breaks the validation policy.
        """
        view = memoryview(data)
        while view:
            room = self.space()
            count = min(len(room), len(view))
            room[:count] = view[:count]
            room.release()
            self.commit(count)
            view = view[count:]

    def read_whole(self, body: bytes) -> None:
        """Read a whole body in one piece (every error then names its line).

        Args:
            body: The body.

        Raises:
            ParseError: When the body breaks the validation policy.
        """
        self._size = len(body)
        limit = self.limits.max_body_bytes
        if self._size > limit:
            raise ParseError(f"body is {self._size} bytes, over the limit max_body_bytes={limit}")
        cut = body.rfind(b"\n") + 1
        if cut:
            self._read_piece(body, cut, 0)
        self._whole_tail = body[cut:]
        self._consumed = cut
        if len(self._whole_tail) > self.limits.max_line_bytes:
            self._long_partial()

    def close(self) -> Exposition:
        """Finish the body: read its last line and check how it ends.

        Returns:
            The wanted series, with HELP and TYPE of their families.

        Raises:
            ParseError: When the body is truncated or otherwise breaks the validation policy.
        """
        last = self._partial()
        self._filled = 0
        self._whole_tail = b""
        if last:
            if self._eof:
                self._after_eof(last, 0, len(last))
            elif self.fmt != "text" and last.rstrip() == b"# EOF":
                line = last + b"\n"
                self._read_piece(line, len(line), self._consumed)
            elif self._content or _NON_BLANK_RE.search(last) is not None:
                self._begin(last, self._consumed)
                raise self._fail("body does not end with a newline (truncated?)", 0)
        self._memo.trim()
        if self.fmt == "openmetrics" and not self._eof:
            if not self._content:
                raise ParseError("OpenMetrics body does not end with '# EOF' (truncated?)")
            raise ParseError(
                "OpenMetrics body does not end with '# EOF' (truncated?)",
                *self._where(len(self.raw[: self._end].rstrip())),
            )
        return self._result()

    # -- pieces ------------------------------------------------------------------------------

    def _partial(self) -> bytes:
        """The partial last line read so far (no newline yet)."""
        if self._whole_tail:
            return self._whole_tail
        return bytes(self._buf[: self._filled]) if self._buf is not None else b""

    def _long_partial(self) -> None:
        """Refuse a partial line over the limit (whole: unless the body is blank)."""
        partial = self._partial()
        if self._whole and not self._content and _NON_BLANK_RE.search(partial) is None:
            return  # a blank body is empty, not malformed; a stream cannot know yet
        limit = self.limits.max_line_bytes
        self._begin(partial, self._consumed)
        size = len(partial) if self._whole else f"at least {len(partial)}"
        raise self._fail(f"line is {size} bytes, over the limit max_line_bytes={limit}", 0)

    def _begin(self, raw: bytes | bytearray, offset: int) -> None:
        """Make ``raw`` the current piece (offsets and line numbers count from it)."""
        if self._started:
            if self._whole and self._pieces == 0:
                self._first_piece = bytes(self.raw[: self._end])
            self._pieces += 1
        self._started = True
        self.raw = raw
        self._end = len(raw)
        self._offset = offset

    def _where(self, pos: int) -> tuple[int | None, int]:
        """``(line, offset)`` of ``pos`` in the current piece; line None when not counted."""
        offset = self._offset + pos
        if self._pieces == 0:
            return _line_no(self.raw, pos), offset
        if self._whole and self._pieces == 1:
            return self._first_piece.count(b"\n") + _line_no(self.raw, pos), offset
        return None, offset

    def _fail(self, problem: str, pos: int) -> ParseError:
        return ParseError(problem, *self._where(pos))

    def _read_piece(self, raw: bytes | bytearray, end: int, offset: int) -> None:
        """Check and read one piece: the whole lines ``raw[:end]``, at ``offset`` in the body."""
        self._begin(raw, offset)
        self._end = end
        if self._eof:
            self._after_eof(raw, 0, end)
            return
        if not self._content:
            first = _NON_BLANK_RE.search(raw, 0, end)
            if first is None:
                return  # blank lines only
            self._content = True
            at = first.start()
            if raw[at : at + 1] == b"<":
                raise self._fail(
                    "not a Prometheus exposition: the body looks like HTML or XML "
                    f"(starts with {_describe_start(raw[at : min(at + 60, end)])})",
                    at,
                )
        limit = self.limits.max_line_bytes
        long_start = _long_line_start(raw, limit, end)
        if long_start is not None:
            line_end = raw.find(b"\n", long_start, end)
            length = (line_end if line_end >= 0 else end) - long_start
            raise self._fail(
                f"line is {length} bytes, over the limit max_line_bytes={limit}", long_start
            )
        bad = _utf8_error(raw, end)
        if bad is not None:
            offset = self._offset + bad
            raise self._fail(f"not UTF-8: byte 0x{raw[bad]:02x} at offset {offset}", bad)
        self._read_lines(raw, end)

    def _after_eof(self, raw: bytes | bytearray, pos: int, end: int) -> None:
        """Refuse anything but blanks after an OpenMetrics ``# EOF`` line."""
        text = _NON_BLANK_RE.search(raw, pos, end)
        if text is not None:
            raise self._fail("text after '# EOF'", text.start())

    def _read_lines(self, raw: bytes | bytearray, end: int) -> None:
        """Read ``raw[:end]``: comment lines one by one, blocks between them scanned or skipped.

        One loop with its helpers inlined: it runs for every comment line of the body
        (about 150 in a vLLM body), so each call saved is measurable.
        """
        find = raw.find
        rfind = raw.rfind
        blanks = _RAW_BLANKS_RE.match
        meta_match = _META_RE.match
        pos = 0
        misses = 0  # `#` met inside lines (label values, exemplars) in this piece
        while pos < end:
            # The next comment line: memchr on `#`, or, after many `#` inside lines, the
            # line scan, so that a body of exemplars costs no more than one pass.
            search = pos
            while True:
                if search >= end:
                    comment = end
                    break
                if raw[search] == _HASH:  # HELP then TYPE: the common next comment line
                    comment = search
                    break
                if misses >= _MAX_HASH_MISSES:
                    comment = _comment_by_scan(raw, search, end)
                    break
                hit = find(b"#", search, end)
                if hit < 0:
                    comment = end
                    break
                comment = rfind(b"\n", search, hit) + 1 or search
                if comment == hit or _end(blanks(raw, comment)) == hit:
                    break
                misses += 1
                search = find(b"\n", hit, end) + 1 or end
            if comment > pos:
                if self._scan_block:
                    self._block(raw, pos, comment)
                elif not self._ends_in_family(raw, pos, comment):  # a headerless sample after it
                    self._scan(raw, pos, comment, self.compiled.rest.finditer(raw, pos, comment))
            if comment >= end:
                return
            at = comment if raw[comment] == _HASH else _end(blanks(raw, comment))
            meta = meta_match(raw, at, end)
            if meta is not None:
                family = meta.group(2)
                if family is None:
                    family = meta.group(1)  # a quoted name
                if family != self._block_family:
                    self._new_block(family)
                pos = meta.end()
                if self._scan_block:  # HELP and TYPE of a wanted family
                    lines = bytes(raw[comment:pos])
                    metas = self._metas.get(lines)
                    if metas is None:
                        self._read_metas(raw, comment, pos, lines)
                    else:
                        for is_type, name, text in metas:
                            (self.types if is_type else self.helps).setdefault(name, text)
                continue
            line_end = find(b"\n", comment, end)
            if (
                at == comment
                and self.fmt != "text"
                and raw.startswith(b"# EOF", comment)
                and raw[comment:line_end].rstrip() == b"# EOF"
            ):
                self._eof = True
                self._after_eof(raw, line_end, end)
                return
            pos = line_end + 1

    def _new_block(self, family: bytes) -> None:
        """Enter the block of ``family`` (named by a HELP, TYPE or UNIT line)."""
        info = self._blocks.get(family)
        if info is None:
            info = self._block_info(family)
            if len(self._blocks) < self._memo.max_entries:
                self._blocks[family] = info
        self._block_family = family
        self._block_key, self._block_name, self._scan_block, self._sparse, self._dense = info

    def _block_info(self, family: bytes) -> _BlockInfo:
        """How the block of ``family`` is read (kept in the memo: a pure function of it)."""
        key = self._keys.get(family)
        if key is None:
            key = self._key_of(family)
        # `x_total` of a histogram has samples `x_total_bucket`, `x_total_created`.
        name = family.replace(b":", b"_")
        compiled = self.compiled
        wanted = compiled.wanted_keys
        if not (wanted is None or key in wanted or name in wanted):
            return key, name, False, None, None  # never looked at (see _block)
        sparse = compiled.sparse.get(key)
        blocks = compiled.block_names
        if sparse is None and blocks is not None and name not in blocks:
            sparse = compiled.needles.get(key)  # no wanted name's family (see _Compiled)
        return key, name, True, sparse, compiled.dense.get(key) or compiled.dense.get(name)

    def _read_metas(self, raw: bytes | bytearray, pos: int, end: int, lines: bytes) -> None:
        """Read the HELP/TYPE lines ``raw[pos:end]`` of a wanted family; memo them by ``lines``."""
        first = self.compiled.first.match
        found: list[_Meta] = []
        while pos < end:
            match = first(raw, pos, end)
            if match is not None:
                meta = self._line(pos, match)
                if meta is not None:
                    found.append(meta)
            pos = raw.find(b"\n", pos, end) + 1
        if len(self._metas) < self._memo.max_entries:
            self._metas[lines] = tuple(found)

    def _key_of(self, name: bytes) -> bytes:
        """The family key of ``name``, kept in the memo while it has room.

        A body of 500,000 one-line families must not grow the memo to as many entries.
        """
        key = _family_key(name)
        if len(self._keys) < self._memo.max_entries:
            self._keys[name] = key
        return key

    def _block(self, raw: bytes | bytearray, pos: int, end: int) -> None:
        """Read the lines ``pos:end`` (no comment among them) of a wanted family's block.

        A skipped family's block is checked by :meth:`_read_lines` itself (a call less for
        each of a body's 60-odd skipped blocks).
        """
        if self._sparse is not None:
            if self._ends_in_family(raw, pos, end):
                self._read_sparse(raw, pos, end)  # the wanted aggregates' lines (see the class)
            else:
                self._scan(raw, pos, end, self.compiled.rest.finditer(raw, pos, end))
            return
        dense = self._dense
        if dense is None:
            self._scan(raw, pos, end, self.compiled.rest.finditer(raw, pos, end))
            return
        # In windows of whole lines: findall's list stays small whatever the block.
        while pos < end:
            stop = end
            if end - pos > _DENSE_WINDOW:
                stop = raw.find(b"\n", pos + _DENSE_WINDOW, end) + 1 or end
            if not self._read_dense(raw, pos, stop, dense):
                self._scan(raw, pos, stop, self.compiled.rest.finditer(raw, pos, stop))
            pos = stop

    def _ends_in_family(self, raw: bytes | bytearray, pos: int, end: int) -> bool:
        """Whether the last non-blank line of ``raw[pos:end]`` is a sample of the block's family."""
        last_end = end - 1
        if last_end > pos and raw[last_end - 1] in _BLANK_BYTES:  # blank lines or blanks
            for _ in range(_MAX_TRAILING_BLANKS):
                if last_end <= pos or raw[last_end - 1] not in _BLANK_BYTES:
                    break
                last_end -= 1
        start = raw.rfind(b"\n", pos, last_end) + 1 or pos
        name = _LINE_NAME_RE.match(raw, start, last_end + 1)
        if name is None:
            return False
        text = name.group()
        key = self._keys.get(text)
        if key is None:
            key = self._key_of(text)
        return key == self._block_key or key == self._block_name

    def _scan(
        self,
        raw: bytes | bytearray,
        pos: int,
        end: int,
        matches: Iterable[re.Match[bytes]],
    ) -> None:
        """Read the first line of ``raw[pos:end]`` and the lines ``matches`` stopped at.

        ``matches`` are of ``compiled.rest``, each at the newline before its line.
        """
        compiled = self.compiled
        quoted = compiled.quoted
        cache_get = self.label_cache.get
        seen_get = self.seen.get
        series = self.series
        max_series = self.max_series
        first = compiled.first.match(raw, pos, end)
        if first is not None:
            self._line(pos, first)
        for match in matches:
            group = match.lastindex or 0  # every branch has a group
            if group < quoted and group & 3 == 3:
                # The common shape: labels parsed once per distinct label text.
                spelling, text, number = match.group(group - 2, group - 1, group)
                labels = cache_get(text)
                if labels is None:
                    labels = self._new_labels(text)
                if labels is not None:
                    try:
                        value = float(number)  # a trailing \r is stripped
                    except ValueError:
                        pass
                    else:
                        known = seen_get(spelling)
                        # First series of a name, a duplicate or the limit: the long way.
                        if known is None or labels in known or len(known) >= max_series:
                            self._add(spelling, labels, value, match.start() + 1)
                        else:
                            known.add(labels)
                            series[spelling].append(_sample(Sample, (labels, value)))
                        continue
            self._line(match.start() + 1, match)

    def _read_dense(
        self, raw: bytes | bytearray, pos: int, end: int, dense: re.Pattern[bytes]
    ) -> bool:
        """Read the lines ``raw[pos:end]`` when all are wanted ones of the common shape.

        One ``findall`` reads all the lines in C: what :meth:`_scan` does line by line, less
        the match objects. From a line whose labels or value do not read, the rest of the
        block goes to :meth:`_scan`, which reports it.

        Returns:
            False, with nothing read, when a line is of another kind.
        """
        found = self._read_clean(raw, pos, end, dense)
        if found is None:
            return True
        if not found:
            return False
        cache_get = self.label_cache.get
        seen_get = self.seen.get
        series = self.series
        max_series = self.max_series
        for index, (spelling, text, number) in enumerate(found):
            labels = cache_get(text)
            if labels is None:
                labels = self._new_labels(text)
            try:
                if labels is None:
                    raise ValueError(text)
                value = float(number)  # a trailing \r is stripped
            except ValueError:
                start = _nth_line(raw, pos, index)
                self._scan(raw, start, end, self.compiled.rest.finditer(raw, start, end))
                return True
            known = seen_get(spelling)
            if known is None or labels in known or len(known) >= max_series:
                self._add(spelling, labels, value, _nth_line(raw, pos, index))
            else:
                known.add(labels)
                series[spelling].append(_sample(Sample, (labels, value)))
        return True

    def _read_clean(
        self, raw: bytes | bytearray, pos: int, end: int, dense: re.Pattern[bytes]
    ) -> list[tuple[bytes, bytes, bytes]] | None:
        """Read the lines ``raw[pos:end]`` in C when all are wanted ones, read as they are.

        Read as they are: of the common shape, one name, labels and values that read, no
        duplicate, under the limit (a server's every scrape but its first).

        Returns:
            None when read. Otherwise, with nothing read: the findall's matches when all the
            lines are of the common shape, else an empty list.
        """
        heads = self._memo.heads(self.escaping, dense)
        if heads and self._read_known(raw, pos, end, heads):
            return None
        found: list[tuple[bytes, bytes, bytes]] = dense.findall(raw, pos, end)
        if len(found) != raw.count(b"\n", pos, end):
            return []
        spellings, texts, numbers = zip(*found, strict=True)
        sets = list(map(self.label_cache.get, texts))
        if None not in sets:
            label_sets = cast(list[Labels], sets)
            if self._add_all(spellings, label_sets, numbers):
                # Bounded as the label sets are: trimmed after the parse (ParseMemo.trim).
                pairs = zip(spellings, label_sets, strict=True)
                heads.update(zip(map(add, spellings, texts), pairs, strict=True))
                return None
        return found

    def _read_sparse(self, raw: bytes | bytearray, pos: int, end: int) -> None:
        """Read the wanted lines of ``raw[pos:end]``, a block that ends in its family.

        Those lines are the ones holding the block's needles (see ``_Compiled.sparse``):
        gathered and read in C by :meth:`_read_clean` when they read as they are, else
        visited one by one. The block's first line is read either way, as :meth:`_scan`
        reads it.
        """
        needles = self._sparse
        assert needles is not None
        dense = self._dense
        if dense is not None and len(needles) == 1:
            needle = needles[0]
            first_end = raw.find(b"\n", pos, end)
            if raw.find(needle, pos, first_end) < 0:  # else in body order, below
                lines = b"".join(
                    raw[newline + 1 : raw.find(b"\n", newline + 1, end) + 1]
                    for newline in _lines_holding(raw, first_end, end, needle)
                )
                if not lines or self._read_clean(lines, 0, len(lines), dense) is None:
                    first = self.compiled.first.match(raw, pos, end)
                    if first is not None:
                        self._line(pos, first)
                    return
        self._scan(raw, pos, end, _found(raw, pos, end, needles, self.compiled))

    def _read_known(
        self,
        raw: bytes | bytearray,
        pos: int,
        end: int,
        heads: dict[bytes, _Head],
    ) -> bool:
        """Read the lines ``raw[pos:end]`` when each is a ``name{labels}`` seen before.

        A server writes the same heads at every scrape, with new values: a split and a
        lookup per line read them without the regex. ``heads`` holds only heads that the
        block's findall pattern matched and whose labels parsed, so a line read here is one
        that :meth:`_read_dense` would read the same way.

        Returns:
            False, with nothing read, when a line is not one of those.
        """
        lines = bytes(raw[pos:end]).split(b"\n")
        lines.pop()  # after the last newline
        texts, _, numbers = zip(*map(bytes.rpartition, lines, repeat(b" ")), strict=True)
        known = list(map(heads.get, texts))
        # A value the findall pattern would refuse (float() takes `1_0` and blanks) or
        # CRLF (the findall reads those).
        if None in known or _NOT_IN_VALUE.search(b" ".join(numbers)) is not None:
            return False
        spellings, labels = zip(*known, strict=True)
        return self._add_all(spellings, labels, numbers)

    def _add_all(
        self,
        spellings: tuple[bytes, ...],
        labels: list[Labels] | tuple[Labels, ...],
        numbers: tuple[bytes, ...],
    ) -> bool:
        """Add the series of a block's lines in C, in the common case.

        The common case: one name, all values read, no duplicate, under the limit.

        Returns:
            False, with nothing added, in any other case (the caller reads line by line).
        """
        spelling = spellings[0]
        if spellings.count(spelling) != len(spellings):
            return False
        try:
            values = list(map(float, numbers))  # a trailing \r is stripped
        except ValueError:
            return False
        new = set(labels)
        if len(new) != len(labels):
            return False
        known = self.seen.get(spelling)
        if known is None:
            if len(new) > self.max_series:
                return False
            self.seen[spelling] = new
            series = self.series[spelling] = []
        elif known.isdisjoint(new) and len(known) + len(new) <= self.max_series:
            known |= new
            series = self.series[spelling]
        else:
            return False
        series.extend(map(_sample, repeat(Sample), zip(labels, values, strict=True)))
        return True

    def _new_labels(self, text: bytes) -> Labels | None:
        """Parse and cache one label text ``{...}``; None when it is not a whole valid set."""
        decoded = text.decode("utf-8")
        parsed = _parse_labels(decoded, 0, self.escaping)
        if isinstance(parsed, str) or parsed[1] != len(decoded):
            return None  # the slow path reports the problem with its line
        self.label_cache[text] = parsed[0]
        return parsed[0]

    def _line(self, start: int, match: re.Match[bytes]) -> _Meta | None:
        """Read the line starting at ``start`` that ``match`` stopped at.

        Returns:
            What a HELP or TYPE line reads as (kept in ``types`` or ``helps`` too), else None.
        """
        raw = self.raw
        compiled = self.compiled
        group = match.lastindex or 0
        name_at = start
        if group == compiled.odd:
            odd = raw[start : start + 1]
            if odd in b"\x0b\x0c":
                return None  # whitespace, as prometheus_client reads it
            if odd not in b" \t":
                end = raw.find(b"\n", start)
                raise self._fail(
                    "not a Prometheus exposition: line starts with "
                    f"{_describe_start(raw[start : end if end >= 0 else self._end])}, "
                    "expected a metric name or '#'",
                    start,
                )
            # Leading blanks (rare): match again after them; the line starts at `start`.
            name_at = _end(_RAW_BLANKS_RE.match(raw, start))
            if name_at >= self._end or raw[name_at] in b"\r\n":
                return None
            relocated = compiled.first.match(raw, name_at)
            if relocated is None:
                return None
            group, match = relocated.lastindex or 0, relocated
            if group == compiled.odd:
                return None  # `\v`/`\f` after blanks: prometheus_client strips those too
        if group == compiled.eof:
            return None  # comment lines are read by _comment; never reached from a block
        if group == compiled.family:
            return self._read_meta(start, match)
        self._read_sample(start, name_at, match, group)
        return None

    def _read_meta(self, start: int, match: re.Match[bytes]) -> _Meta:
        raw = self.raw
        end = raw.find(b"\n", start)
        line = raw[start : end if end >= 0 else self._end].decode("utf-8")
        compiled = self.compiled
        kind = match.group(compiled.meta).decode("ascii")
        family = match.group(compiled.family)
        meta = _read_meta(line, kind, family.decode("utf-8"))
        (self.types if meta[0] else self.helps).setdefault(meta[1], meta[2])
        return meta

    def _read_sample(self, start: int, name_at: int, match: re.Match[bytes], group: int) -> None:
        raw = self.raw
        end = raw.find(b"\n", start, self._end)
        end = self._end if end < 0 else end
        if group == self.compiled.quoted:
            spelling = match.group(group)
            line = raw[name_at:end].decode("utf-8").rstrip(" \t\r")
            parsed = _parse_quoted_sample(line, self.escaping)
        else:
            # The name's group comes before the label text (fast shape) or the rest.
            spelling = match.group(group - 2 if group & 3 == 3 else group - 3)
            line = raw[name_at:end].decode("utf-8").rstrip(" \t\r")
            parsed = _parse_sample(line, len(spelling), self.label_cache, self.escaping)
        if isinstance(parsed, str):
            raise self._fail(parsed, start)
        self._add(spelling, parsed[0], parsed[1], start)

    def _add(self, spelling: bytes, labels: Labels, value: float, start: int) -> None:
        known = self.seen.get(spelling)
        if known is None:
            known = self.seen[spelling] = set()
            self.series[spelling] = []
        if labels in known:
            self.duplicates += 1
            return
        if len(known) >= self.max_series:
            raise self._fail(
                f"more than max_series_per_family={self.max_series} series of "
                f"{spelling.decode('utf-8')}",
                start,
            )
        known.add(labels)
        self.series[spelling].append(_sample(Sample, (labels, value)))

    def _result(self) -> Exposition:
        """The series, TYPEs and HELPs found, under the names asked for.

        Where several spellings of one name were found, the first in its spellings' order
        wins (the others are not merged in). Visits what was found, not every name wanted.
        """
        owners = self.compiled.sample_owners
        samples: dict[str, tuple[Sample, ...]] = {}
        ranks: dict[str, int] = {}
        for spelling, found in self.series.items():
            if found:
                for name, rank in owners.get(spelling, ()):
                    if rank < ranks.get(name, _LAST):
                        ranks[name] = rank
                        samples[name] = tuple(found)
        return Exposition(
            samples=samples,
            types=_by_owner(self.types, self.compiled.family_owners),
            helps=_by_owner(self.helps, self.compiled.family_owners),
            duplicates=self.duplicates,
        )


_LAST = 1 << 30  # a rank after every spelling's


def _owners(spelled: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[tuple[str, int], ...]]:
    """Spelling -> (name, rank of the spelling among the name's) for every name spelled so."""
    owners: dict[str, list[tuple[str, int]]] = {}
    for name, spellings in spelled.items():
        for rank, spelling in enumerate(spellings):
            owners.setdefault(spelling, []).append((name, rank))
    return {spelling: tuple(found) for spelling, found in owners.items()}


def _by_owner(
    found: Mapping[str, str], owners: Mapping[str, tuple[tuple[str, int], ...]]
) -> dict[str, str]:
    """``found`` (by spelling) under the names asked for, the best-ranked spelling winning."""
    out: dict[str, str] = {}
    ranks: dict[str, int] = {}
    for spelling, value in found.items():
        for name, rank in owners.get(spelling, ()):
            if rank < ranks.get(name, _LAST):
                ranks[name] = rank
                out[name] = value
    return out


PIECE_BYTES = 64 * 1024
"""Size of a reader's receive buffer, bytes: one network read. glibc serves blocks under
128 KiB from its heap; larger ones are fresh mappings, page-faulted in at every scrape."""

# Builds a Sample in C (the named tuple's own __new__ is a Python function): 250 per scrape.
_sample = tuple.__new__

# A comment line is found by memchr on `#`; past this many `#` inside lines in one piece
# (OpenMetrics exemplars on every bucket), by the line scan instead.
_MAX_HASH_MISSES = 64
# Bytes of a wanted block read by one findall at most (whole lines; a few hundred series).
_DENSE_WINDOW = 16 * 1024
# Blank lines looked through at the end of a skipped block before scanning it instead.
_MAX_TRAILING_BLANKS = 64
_BLANK_BYTES = frozenset(b" \t\r\n")
_HASH = ord("#")


def _comment_by_scan(raw: bytes | bytearray, pos: int, end: int) -> int:
    """Start of the first comment line at or after the line start ``pos``, else ``end``."""
    if pos == 0 and raw.startswith(b"#", _end(_RAW_BLANKS_RE.match(raw, 0))):
        return 0
    found = _COMMENT_RE.search(raw, pos - 1 if pos else 0, end)
    return found.start() + 1 if found is not None else end


def _end(match: re.Match[bytes] | None) -> int:
    assert match is not None  # a pattern of `*` runs always matches
    return match.end()


def _family_key(name: bytes) -> bytes:
    """What a family's name and its samples' names share.

    ``:`` reads as ``_`` (prometheus_client escapes sample names, not TYPE lines) and one
    known suffix is removed: ``x_total``, ``x_created`` and ``x_bucket`` all give ``x``.
    """
    name = name.replace(b":", b"_")
    head, _, suffix = name.rpartition(b"_")
    return head if head and suffix in _SUFFIX_WORDS else name


_SPARSE_SUFFIXES = ("_sum", "_count", "_gsum", "_gcount")
_MIN_NEEDLE = 8  # shorter: hits in label values would cost more than the line scan


def _needles(samples: Mapping[str, tuple[str, ...]]) -> dict[bytes, tuple[bytes, ...]]:
    """Family key -> what the lines of its wanted names hold, where each is long enough.

    A histogram's block holds a ``_sum`` line per label set among a dozen or more
    ``_bucket`` lines: where only aggregates are wanted, ``find`` on their names reads the
    block several times faster than visiting every line. A name's needle is what all its
    spellings end with, so one search finds it plain, escaped, quoted or after blanks.

    Args:
        samples: Wanted name -> its spellings.
    """
    found: dict[bytes, tuple[bytes, ...]] = {}
    for key, names in _by_key(samples).items():
        ends = {_common_end(samples[name]).encode() for name in names}
        # A line holding `vllm_x_sum` holds `x_sum`: one search for both.
        needles = tuple(sorted(e for e in ends if not any(o != e and o in e for o in ends)))
        if all(len(needle) >= _MIN_NEEDLE for needle in needles):
            found[key] = needles
    return found


def _key(name: str) -> bytes:
    return _family_key(name.encode())


def _by_key(names: Iterable[str]) -> dict[bytes, list[str]]:
    """``names`` grouped by family key (see :func:`_family_key`)."""
    by_key: dict[bytes, list[str]] = {}
    for name in names:
        by_key.setdefault(_key(name), []).append(name)
    return by_key


def _common_end(spellings: Iterable[str]) -> str:
    """The longest text every one of ``spellings`` ends with."""
    texts = list(spellings)
    size = min(len(t) for t in texts)
    while size and any(t[-size:] != texts[0][-size:] for t in texts):
        size -= 1
    return texts[0][len(texts[0]) - size :]


def body_bytes(body: bytes | str) -> bytes:
    """The body as UTF-8 bytes.

    Raises:
        ParseError: When text holds a lone surrogate (not encodable as UTF-8).
    """
    if isinstance(body, bytes):
        return body
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParseError(
            "text is not encodable as UTF-8 (lone surrogate)", body.count("\n", 0, exc.start) + 1
        ) from None


def _long_line_start(raw: bytes | bytearray, limit: int, size: int) -> int | None:
    """Start offset of a line of ``raw[:size]`` longer than ``limit`` bytes, or None.

    A line of more than ``limit`` bytes contains a whole aligned chunk of ``ceil((limit +
    1) / 2)`` bytes, so only chunks without a newline (one memchr each) need a closer look.
    """
    step = (limit + 2) // 2
    for start in range(0, size - step + 1, step):
        end = start + step
        if raw.find(b"\n", start, end) >= 0:
            continue
        line_start = raw.rfind(b"\n", 0, start) + 1
        line_end = raw.find(b"\n", end, size)
        if (line_end if line_end >= 0 else size) - line_start > limit:
            return line_start
    return None


# Non-ASCII bodies are validated in pieces cut after a newline (never inside a character),
# so the check needs no copy of the whole body.
_UTF8_PIECE = 1 << 20


def _utf8_error(raw: bytes | bytearray, size: int) -> int | None:
    """Offset of the first byte of ``raw[:size]`` that is not UTF-8, or None."""
    if raw.isascii():
        return None  # all of it (a buffer's stale end included): no slice needed
    if len(raw) > size and raw[:size].isascii():
        return None  # the non-ASCII was in the stale end (an earlier body's)
    start = 0
    while start < size:
        cut = raw.find(b"\n", min(start + _UTF8_PIECE, size), size)
        end = size if cut < 0 else cut + 1
        try:
            raw[start:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            return start + exc.start
        start = end
    return None


def _read_meta(line: str, kind: str, family: str) -> _Meta:
    """What a HELP or TYPE line of ``family`` says: (is a TYPE, family, the text)."""
    parts = line.split(None, 3)
    rest = parts[3] if len(parts) > 3 else ""
    if kind == "TYPE":
        return True, family, rest.strip()
    rest = rest.rstrip("\r")  # CRLF line ends
    return False, family, _unescape(rest, quotes=False)


def _parse_sample(
    line: str, pos: int, cache: dict[bytes, Labels], escaping: str
) -> tuple[Labels, float] | str:
    """Parse one sample line whose name ends at ``pos``; ``(labels, value)`` or the problem.

    ``line`` starts with the name and has no trailing blanks or carriage return. A label set
    that parses is cached by its text: a cached text is a whole valid label set, and any
    line that starts with it parses the same way up to its closing brace.
    """
    brace = _skip(_BLANKS_RE, line, pos)
    if brace < len(line) and line[brace] == "{":
        parsed = _parse_labels(line, brace, escaping)
        if isinstance(parsed, str):
            return parsed
        labels, pos = parsed
        cache[line[brace:pos].encode("utf-8")] = labels
        return _parse_tail(line, pos, labels, True)
    return _parse_tail(line, pos, (), False)


def _parse_quoted_sample(line: str, escaping: str) -> tuple[Labels, float] | str:
    """Parse a sample line with the OpenMetrics quoted name: ``{"name", label="v"} 1``."""
    brace = line.find("{")
    quote = line.find('"', brace)
    after = line.find('"', quote + 1) + 1  # wanted names hold no quote or backslash
    pos = _skip(_BLANKS_RE, line, after)
    if line[pos : pos + 1] == "}":
        return _parse_tail(line, pos + 1, (), True)
    if line[pos : pos + 1] != ",":
        return _label_problem(line, _neutral(line), pos)
    parsed = _parse_labels(line, pos, escaping)
    if isinstance(parsed, str):
        return parsed
    labels, pos = parsed
    return _parse_tail(line, pos, labels, True)


def _neutral(line: str) -> str:
    """``line`` with each backslash escape replaced by two NULs (offsets unchanged)."""
    return _ESCAPED_CHAR_RE.sub("\x00\x00", line) if "\\" in line else line


def _parse_labels(line: str, brace: int, escaping: str) -> tuple[Labels, int] | str:
    """Parse the label pairs after ``line[brace]`` (``{`` or ``,``) up to the closing ``}``.

    Returns:
        The sorted labels and the offset after ``}``, or the problem.
    """
    neutral = _neutral(line)
    pos = _skip(_BLANKS_RE, line, brace + 1)
    if line[pos : pos + 1] == "}":
        return (), pos + 1
    pairs: dict[str, str] = {}
    unescape_names = escaping in ("dots", "values")
    while True:
        match = _PAIR_RE.match(neutral, pos)
        if match is None:
            return _label_problem(line, neutral, pos)
        if match.start(1) >= 0:
            name = line[match.start(1) : match.end(1)]
            if unescape_names:
                name = _unescape_label_name(name, escaping)
        else:
            name = _unescape(line[match.start(2) : match.end(2)])
        if name in pairs:
            return f"duplicate label name {name!r}"
        pairs[name] = _unescape(line[match.start(3) : match.end(3)])
        pos = match.end()
        if match.group(4) == "}":
            break
        pos = _skip(_BLANKS_RE, line, pos)
        if line[pos : pos + 1] == "}":
            pos += 1
            break
    return tuple(sorted(pairs.items())), pos


def _label_problem(line: str, neutral: str, pos: int) -> str:
    """Explain why the label set of ``line`` did not parse at ``pos``."""
    # Between quotes alternately: the set is closed when a `}` lies outside every quote.
    parts = neutral[neutral.find("{") + 1 :].split('"')
    if any("}" in part for part in parts[::2]):
        return f"malformed label pair near {line[pos : pos + 40]!r}"
    if len(parts) % 2 == 0:
        return "unterminated quoted label value"
    return "label set is not closed with '}'"


def _parse_tail(line: str, pos: int, labels: Labels, braces: bool) -> tuple[Labels, float] | str:
    """Parse value, optional timestamp and optional exemplar after the name or labels."""
    tail = line[pos:]
    if not tail:
        if braces:
            return "malformed label set or missing value after the labels"
        return f"sample {line[:60]!r} has no value"
    if tail[0] not in " \t":
        return f"malformed sample line {line[:60]!r}"
    hash_at = tail.find("#")
    if hash_at >= 0:
        # OpenMetrics exemplar: " # {labels} value [timestamp]", dropped.
        if tail[hash_at - 1] not in " \t" or tail[hash_at + 1 : hash_at + 2] not in ("", " ", "\t"):
            return f"malformed sample line {line[:60]!r}"
        tail = tail[:hash_at]
    core = tail.strip(" \t")
    fields = core.split()
    if len(fields) == 1 and fields[0] == core:
        value_text, stamp_text = core, None
    elif (
        len(fields) == 2
        and core.startswith(fields[0])
        and core.endswith(fields[1])
        and not core[len(fields[0]) : len(core) - len(fields[1])].strip(" \t")
    ):
        value_text, stamp_text = fields
    elif not fields:
        return f"sample {line[:60]!r} has no value"
    else:
        return f"malformed sample line {line[:60]!r}"
    value = _parse_float(value_text)
    if value is None:
        return f"invalid sample value {value_text[:40]!r}"
    if stamp_text is not None and _parse_float(stamp_text) is None:
        return f"invalid timestamp {stamp_text[:40]!r}"
    return labels, value
