"""The selective exposition parser.

Valid input, refusals, limits, agreement with the client, hostile lines (linear work),
OpenMetrics escaping and content types.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ScrapeSettings
from agent.servers.parser import (
    ESCAPING_SCHEMES,
    Exposition,
    ExpositionError,
    ParseError,
    ParseLimits,
    ParseMemo,
    Scanner,
    family_candidates,
    name_spellings,
)
from agent.servers.profiles import PROFILES, read_exposition
from agent.servers.scraper import ACCEPT


def _parse(body: str | bytes, names: list[str], limits: ParseLimits | None = None) -> Exposition:
    return Scanner(names).parse(body, limits or ParseLimits())


def _values(body: str | bytes, name: str) -> list[tuple[dict[str, str], float]]:
    exp = _parse(body, [name])
    return [(dict(s.labels), s.value) for s in exp.get(name)]


@pytest.mark.parametrize(
    ("body", "name", "expected"),
    [
        ("a 1\n", "a", [({}, 1.0)]),
        ("a{} 1\n", "a", [({}, 1.0)]),
        ('a{b="c"} 2.5\n', "a", [({"b": "c"}, 2.5)]),
        ('a{b="c",} 2.5\n', "a", [({"b": "c"}, 2.5)]),
        ('a{ b = "c" , d="e" } 3\n', "a", [({"b": "c", "d": "e"}, 3.0)]),
        ('a{b="x\\"y\\\\z\\nw"} 1\n', "a", [({"b": 'x"y\\z\nw'}, 1.0)]),
        ('a{b="keep \\t as is"} 1\n', "a", [({"b": "keep \\t as is"}, 1.0)]),
        ('a{b="}{,= #"} 1\n', "a", [({"b": "}{,= #"}, 1.0)]),
        ("a 1.048576e+06\n", "a", [({}, 1048576.0)]),
        ("a 1.84339e+06\n", "a", [({}, 1843390.0)]),
        ("a -3E-2\n", "a", [({}, -0.03)]),
        ("a +Inf\n", "a", [({}, math.inf)]),
        ("a -Inf\n", "a", [({}, -math.inf)]),
        ("a 7 1767225600000\n", "a", [({}, 7.0)]),
        ("a 7 1767225600.5\n", "a", [({}, 7.0)]),
        ('vllm:x_total{engine="0"} 4\n', "vllm:x_total", [({"engine": "0"}, 4.0)]),
        ("a_total 1\na 2\na_created 3\n", "a", [({}, 2.0)]),
        ('a\t{b="c"}\t5\n', "a", [({"b": "c"}, 5.0)]),
        ("  a 6\n\t# comment\n", "a", [({}, 6.0)]),
        ("a 1\r\nb 2\r\n", "a", [({}, 1.0)]),
        ('a{b="x\ry"} 1\r\n', "a", [({"b": "x\ry"}, 1.0)]),
        ("# HELP a help\n# TYPE a counter\na 8\n# EOF\n", "a", [({}, 8.0)]),
        ("a 8\n# EOF", "a", [({}, 8.0)]),
        ('a 1 # {trace_id="x"} 2.0 3\n', "a", [({}, 1.0)]),
        ("# a 1\nb 2\n", "a", []),
        ("", "a", []),
        ("\n\n", "a", []),
        ('x_bucket{le="1"} 1\nx_sum 4\nx_count 1\n', "x_sum", [({}, 4.0)]),
    ],
)
def test_reads_valid_lines(
    body: str, name: str, expected: list[tuple[dict[str, str], float]]
) -> None:
    assert _values(body, name) == expected


def test_nan_is_read_as_nan() -> None:
    ((_, value),) = _values("a NaN\n", "a")
    assert math.isnan(value)


def test_reads_help_and_type_of_wanted_families_only() -> None:
    body = (
        "# HELP a_total Tokens \\\\ and\\nmore\n# TYPE a_total counter\na_total 1\n"
        "# HELP h Latency\n# TYPE h histogram\nh_sum 2\n# TYPE other gauge\nother 1\n"
    )
    exp = _parse(body, ["a_total", "h_sum"])
    assert exp.types == {"a_total": "counter", "h": "histogram"}
    assert exp.helps == {"a_total": "Tokens \\ and\nmore", "h": "Latency"}
    assert exp.declared("h_sum") and exp.declared("a_total")
    assert not Scanner(["other"]).parse("# TYPE x gauge\n").declared("other")


def test_family_candidates_strip_one_known_suffix() -> None:
    assert family_candidates("x_total") == ("x_total", "x")
    assert family_candidates("x_bucket") == ("x_bucket", "x")
    assert family_candidates("x") == ("x",)
    assert family_candidates("_total") == ("_total",)


def test_skips_prefixes_of_wanted_names() -> None:
    body = "a_total_extra 5\na_totally 6\na_total 7\n"
    assert _values(body, "a_total") == [({}, 7.0)]


def test_duplicate_series_keep_the_first_and_are_counted() -> None:
    body = 'a{x="1",y="2"} 1\na{y="2",x="1"} 9\na{x="2"} 3\n'
    exp = _parse(body, ["a"])
    assert [s.value for s in exp.get("a")] == [1.0, 3.0]
    assert exp.duplicates == 1


@pytest.mark.parametrize(
    ("body", "line", "fragment"),
    [
        ('a 1\na{b="c} 1\n', 2, "unterminated quoted label value"),
        ("a{b=c} 1\n", 1, "malformed label pair"),
        ('a{b="c" d="e"} 1\n', 1, 'malformed label pair near \'b="c" d'),
        ('a{b="c",b="d"} 1\n', 1, "duplicate label name 'b'"),
        ('a{b="c"\n', 1, "label set is not closed"),
        ("a\n", 1, "has no value"),
        ("a 1_000\n", 1, "invalid sample value '1_000'"),
        ("a 0x10\n", 1, "invalid sample value '0x10'"),
        ("a one\n", 1, "invalid sample value 'one'"),
        ("a 1 soon\n", 1, "invalid timestamp 'soon'"),
        ('a{1b="c"} 1\n', 1, "malformed label pair"),
        ("x 1\n\n\na 1", 4, "does not end with a newline"),
        ("a 1\n# EOF\nb 2\n", 3, "text after '# EOF'"),
        ("a 1\n<b>oops</b>\n", 2, "not a Prometheus exposition"),
        ('a 1\n{"json": true}\nb\n', 3, "has no value"),
        ("a 1\n\x00a 2\n", 2, "not a Prometheus exposition"),
        ("a 1\r2\n", 1, "malformed sample line"),
    ],
)
def test_refuses_malformed_input_naming_the_line(body: str, line: int, fragment: str) -> None:
    with pytest.raises(ParseError) as info:
        _parse(body, ["a", "b"])
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


def test_malformed_lines_of_other_families_are_not_validated() -> None:
    # Only wanted lines are fully parsed; this mirrors Prometheus's fast scrape parser.
    assert _values('other{b="c} 1\na 2\n', "a") == [({}, 2.0)]


def test_html_error_page_is_not_an_exposition() -> None:
    page = b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    with pytest.raises(ParseError, match="not a Prometheus exposition: the body looks like HTML"):
        _parse(page, ["a"])


def test_undecodable_bytes_are_a_parse_error_with_the_line() -> None:
    with pytest.raises(ParseError, match=r"line 2: not UTF-8: byte 0xff"):
        _parse(b'a 1\nb{x="\xff"} 2\n', ["a"])


def test_lone_surrogate_text_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not encodable as UTF-8"):
        _parse('a{x="\ud800"} 1\n', ["a"])


def test_body_size_limit() -> None:
    limits = ParseLimits(max_body_bytes=10)
    assert _parse("a 1\n", ["a"], limits).get("a")
    with pytest.raises(ParseError, match="over the limit max_body_bytes=10"):
        _parse("a 1\nb 22222\n", ["a"], limits)


@pytest.mark.parametrize("limit", [1, 2, 7, 8, 9, 100])
def test_line_length_limit_is_exact(limit: int) -> None:
    ok = "x" * (limit - 2) + " 1\n" if limit >= 3 else "a 1\n"
    long_line = "y" * (limit - 1) + " 1"  # limit + 1 bytes
    limits = ParseLimits(max_line_bytes=max(limit, 3))
    if limit >= 3:
        _parse("a 1\n" + ok, ["a"], limits)
    with pytest.raises(ParseError) as info:
        _parse("a 1\n" + long_line + "\nb 2\n", ["a"], ParseLimits(max_line_bytes=limit))
    if limit >= 3:
        assert info.value.line == 2
        assert f"max_line_bytes={limit}" in str(info.value)


def test_one_mib_label_value_is_refused_by_default_and_read_when_allowed() -> None:
    huge = "a" * (1024 * 1024)
    body = (
        "# TYPE vllm:lora_requests_info gauge\n"
        f'vllm:lora_requests_info{{running="{huge}"}} 1\nx 2\n'
    )
    with pytest.raises(ParseError, match=r"line 2: line is 1048\d+ bytes, over the limit"):
        _parse(body, ["x"])
    roomy = ParseLimits(max_line_bytes=2 * 1024 * 1024)
    exp = _parse(body, ["vllm:lora_requests_info", "x"], roomy)
    assert exp.get("vllm:lora_requests_info")[0].labels == (("running", huge),)
    assert exp.get("x")[0].value == 2.0


def test_series_per_family_limit() -> None:
    body = "".join(f'a{{i="{i}"}} 1\n' for i in range(5))
    assert len(_parse(body, ["a"], ParseLimits(max_series_per_family=5)).get("a")) == 5
    with pytest.raises(ParseError, match=r"line 5: more than max_series_per_family=4 series of a"):
        _parse(body, ["a"], ParseLimits(max_series_per_family=4))


def test_limits_from_settings() -> None:
    scrape = ScrapeSettings(max_body_bytes=5, max_line_bytes=6, max_series_per_family=7)
    assert ParseLimits.from_settings(scrape) == ParseLimits(5, 6, 7)


def test_parse_error_is_an_exposition_error() -> None:
    assert issubclass(ParseError, ExpositionError)


def test_scanner_refuses_invalid_wanted_names() -> None:
    with pytest.raises(ValueError, match="not a metric name"):
        Scanner(["a b"])


# --- agreement with prometheus_client on generated valid expositions -------------------

_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
_label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: not n.startswith("__")
)
_label_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r"), max_size=12
)
_values_st = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12).map(float),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@st.composite
def _expositions(draw: st.DrawFn) -> tuple[str, dict[str, list[tuple[dict[str, str], float]]]]:
    families = draw(st.lists(_names, min_size=1, max_size=5, unique=True))
    # Interleaved: sample lines of every family shuffled together, no HELP/TYPE (the
    # classic format's parsers accept that; each run of a name becomes its own family).
    interleave = draw(st.booleans())
    lines: list[str] = []
    samples: list[tuple[str, str, dict[str, str], float]] = []
    for family in families:
        kind = draw(st.sampled_from(["gauge", "untyped", "histogram", "summary", "none"]))
        if kind != "none" and not interleave:
            lines.append(f"# HELP {family} {_escape(draw(_label_values))}")
            lines.append(f"# TYPE {family} {kind}")
        suffixes = {"histogram": ["_bucket", "_sum", "_count"], "summary": ["", "_sum", "_count"]}
        for suffix in suffixes.get(kind, [""]):
            name = family + suffix
            label_sets = draw(
                st.lists(
                    st.dictionaries(_label_names, _label_values, max_size=3),
                    max_size=4,
                    unique_by=lambda d: tuple(sorted(d.items())),
                )
            )
            for labels in label_sets:
                if suffix == "_bucket":
                    labels = {**labels, "le": "+Inf"}
                value = draw(_values_st)
                stamp = draw(st.sampled_from(["", " 1767225600000"]))
                items = list(labels.items())
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
                braces: bool = draw(st.booleans())
                text_labels = "{" + inner + "}" if items or braces else ""
                line = f"{name}{text_labels} {_fmt(value)}{stamp}"
                if interleave:
                    samples.append((line, name, dict(labels), value))
                else:
                    lines.append(line)
                    samples.append(("", name, dict(labels), value))
        if draw(st.booleans()) and not interleave:
            lines.append("")
    if interleave:
        samples = draw(st.permutations(samples))
        lines = [line for line, *_ in samples]
    truth: dict[str, list[tuple[dict[str, str], float]]] = {}
    for _, name, labels, value in samples:
        truth.setdefault(name, []).append((labels, value))
    return "\n".join(lines) + "\n", truth


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expositions(), st.data())
def test_agrees_with_prometheus_client(
    case: tuple[str, dict[str, list[tuple[dict[str, str], float]]]], data: st.DataObject
) -> None:
    text, truth = case
    reference: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            reference.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    wanted = data.draw(st.lists(st.sampled_from(sorted(truth) or ["unused"]), max_size=4))
    exp = _parse(text, wanted)
    for name in wanted:
        ours = [(dict(s.labels), s.value) for s in exp.get(name)]
        theirs = reference.get(name, [])
        assert len(ours) == len(theirs) == len(truth.get(name, []))
        for (l1, v1), (l2, v2) in zip(ours, theirs, strict=True):
            assert l1 == l2
            assert _same(v1, float(v2))


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), st.lists(_names, max_size=3))
def test_arbitrary_text_returns_or_raises_parse_error(text: str, wanted: list[str]) -> None:
    try:
        exp = _parse(text, wanted)
    except ParseError as exc:
        assert str(exc)
    else:
        assert set(exp.samples) <= set(wanted)


_exposition_alphabet = st.sampled_from(
    [*'abcx_:{}="\\, \t\n#1.e+-EOFNaInf', "# HELP ", "# TYPE ", "# EOF", "\r", "\xff"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.lists(_exposition_alphabet, max_size=80).map(
            lambda p: "".join(p).encode("utf-8", "surrogateescape")
        ),
    )
)
def test_arbitrary_bytes_returns_or_raises_parse_error(body: bytes) -> None:
    try:
        exp = _parse(body, ["a", "x_total", "b:c"], ParseLimits(max_line_bytes=64))
    except ParseError as exc:
        assert str(exc)
    else:
        for samples in exp.samples.values():
            assert all(isinstance(s.value, float) for s in samples)


# --- extraction details: label cache, interleaving, bytes never decoded ----------------


def test_a_cached_label_set_never_hides_a_malformed_line() -> None:
    # The second line starts with the same label text as the first; its tail is bad.
    body = 'a{x="1"} 1\nb{x="1"} 2 3 4\n'
    with pytest.raises(ParseError, match="line 2: malformed sample line"):
        _parse(body, ["a", "b"])
    with pytest.raises(ParseError, match="line 2: malformed sample line"):
        _parse('a{x="1"} 1\nb{x="1"}2\n', ["a", "b"])


def test_a_brace_inside_a_quoted_value_is_not_the_end_of_the_labels() -> None:
    body = 'a{x="}"} 1\nb{x="}"} 2\nb{x="}",y="2"} 3\n'
    exp = _parse(body, ["a", "b"])
    assert [(s.labels, s.value) for s in exp.get("b")] == [
        ((("x", "}"),), 2.0),
        ((("x", "}"), ("y", "2")), 3.0),
    ]


def test_interleaved_families_and_samples_before_type_are_all_read() -> None:
    body = (
        'a{x="1"} 1\nb 2\n# TYPE a counter\n# HELP a Help.\na{x="2"} 3\nother 4\n'
        'a{x="3"} 5\n# TYPE b gauge\n'
    )
    exp = _parse(body, ["a", "b"])
    assert [s.value for s in exp.get("a")] == [1.0, 3.0, 5.0]
    assert exp.types == {"a": "counter", "b": "gauge"}
    assert exp.helps == {"a": "Help."}


def test_a_line_after_blanks_is_read_and_numbered_from_its_start() -> None:
    assert _values(' \t a{x="1"} 1\n', "a") == [({"x": "1"}, 1.0)]
    with pytest.raises(ParseError, match="line 2: "):
        _parse("b 1\n   a{x=1} 1\n", ["a"])
    # Vertical tab and form feed start a line as whitespace, as prometheus_client strips them.
    assert _values("\x0bz 1\n\x0ca 2\n", "a") == []


def test_sample_is_an_immutable_named_tuple_with_a_label_lookup() -> None:
    (sample,) = _parse('a{x="1"} 2\n', ["a"]).get("a")
    assert sample.labels == (("x", "1"),) and sample.value == 2.0
    assert sample.label("x") == "1" and sample.label("y", "none") == "none"
    with pytest.raises(AttributeError):
        sample.value = 3.0  # type: ignore[misc]


# --- hostile input (issue 12): linear work, structurally -------------------------------

_LINE = 256 * 1024  # the default max_line_bytes: the longest line a body may hold
_NAME_B = b"vllm:prompt_tokens_total"


def _fill(head: bytes, unit: bytes, tail: bytes) -> bytes:
    """A line of exactly ``_LINE`` bytes: ``head``, ``unit`` repeated, ``tail``."""
    count = (_LINE - len(head) - len(tail)) // len(unit)
    line = head + unit * count + tail
    return line + b" " * (_LINE - len(line)) if tail == b"" else line


def _pairs_line() -> bytes:
    pairs = b",".join(b'l%d="v"' % i for i in range(_LINE // 8))
    inner = pairs[: pairs.rfind(b",", 0, _LINE - len(_NAME_B) - 8)]
    line = _NAME_B + b"{" + inner + b"} 1"
    return line + b" " * (_LINE - len(line))  # trailing blanks are allowed


_HOSTILE: dict[str, tuple[bytes, str | None]] = {
    # The two lines of issue 12: minutes each with the old backtracking regexes.
    "name then blanks": (_fill(_NAME_B, b" ", b""), "has no value"),
    "name then braces": (_fill(_NAME_B, b"{", b" 1"), "label set is not closed"),
    "name then quotes": (_fill(_NAME_B + b"{", b'"', b"} 1"), "malformed label pair"),
    "unterminated escapes": (_fill(_NAME_B + b'{a="', b"x\\", b""), "unterminated quoted"),
    "escaped value": (_fill(_NAME_B + b'{a="', b"\\\\", b'"} 1'), None),
    "blanks between value and junk": (_fill(_NAME_B + b" 1", b" ", b"x y"), "malformed sample"),
    "thousands of label pairs": (_pairs_line(), None),
    "comment of blanks": (_fill(b"#", b" ", b"x"), None),
    "blanks before a name": (_fill(b"", b" ", _NAME_B + b" 1"), None),
    "help of blanks": (_fill(b"# HELP vllm:prompt_tokens", b" ", b"x"), None),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", sorted(_HOSTILE))
def test_hostile_256_kib_line_is_read_or_refused_promptly(kind: str) -> None:
    # A regression guard with a generous timeout (the old parser took minutes on the
    # first four); the linear-work guarantee itself is test_regexes_cannot_backtrack.
    line, problem = _HOSTILE[kind]
    assert len(line) == _LINE
    body = b"a 1\n" + line + b"\n"
    scanner = Scanner(["vllm:prompt_tokens_total", "a"])
    if problem is None:
        exp = scanner.parse(body)
        assert exp.get("a")[0].value == 1.0
    else:
        with pytest.raises(ParseError, match=problem) as info:
            scanner.parse(body)
        assert info.value.line == 2


def test_hostile_label_pairs_are_all_read() -> None:
    exp = Scanner(["vllm:prompt_tokens_total"]).parse(_pairs_line() + b"\n")
    (sample,) = exp.get("vllm:prompt_tokens_total")
    assert len(sample.labels) > 20_000
    assert sample.label("l0") == "v"


_re_parser: Any = importlib.import_module(
    "re._parser" if sys.version_info >= (3, 11) else "sre_parse"
)
_re_constants: Any = importlib.import_module(
    "re._constants" if sys.version_info >= (3, 11) else "sre_constants"
)
_ALPHABET = frozenset(range(256))
_CATEGORIES = {
    "CATEGORY_SPACE": "s",
    "CATEGORY_NOT_SPACE": "S",
    "CATEGORY_DIGIT": "d",
    "CATEGORY_NOT_DIGIT": "D",
    "CATEGORY_WORD": "w",
    "CATEGORY_NOT_WORD": "W",
}  # every pattern here is ASCII-based: this decides overlap


def _charset(op: Any, arg: Any) -> frozenset[int] | None:
    """Characters (0..255) one single-character item matches, or None if not one."""
    c = _re_constants
    if op is c.LITERAL:
        return frozenset([arg])
    if op is c.NOT_LITERAL:
        return _ALPHABET - {arg}
    if op is c.ANY:
        return _ALPHABET - {10}
    if op is c.IN:
        chars: set[int] = set()
        negate = False
        for item_op, item_arg in arg:
            if item_op is c.NEGATE:
                negate = True
            elif item_op is c.LITERAL:
                chars.add(item_arg)
            elif item_op is c.RANGE:
                chars.update(range(item_arg[0], min(item_arg[1], 255) + 1))
            elif item_op is c.CATEGORY:
                probe = re.compile(f"[\\{_CATEGORIES[str(item_arg)]}]")
                chars.update(i for i in range(256) if probe.match(chr(i)))
            else:
                raise AssertionError(f"unexpected set item {item_op}")
        return _ALPHABET - chars if negate else frozenset(chars)
    return None


def _first(items: list[Any], rest: list[list[Any]]) -> frozenset[int]:
    """Characters that can start a match of ``items`` followed by the ``rest`` sequences."""
    c = _re_constants
    if not items:
        return _first(rest[0], rest[1:]) if rest else frozenset()
    op, arg = items[0]
    following = [items[1:], *rest]
    single = _charset(op, arg)
    if single is not None:
        return single
    if op in (c.MAX_REPEAT, c.MIN_REPEAT):
        low, _, body = arg
        first = _first(list(body), [])
        return first | _first(items[1:], rest) if low == 0 else first
    if op is c.SUBPATTERN:
        return _first(list(arg[-1]), following)
    if op is c.BRANCH:
        return frozenset().union(*(_first(list(alt), following) for alt in arg[1]))
    if op in (c.AT, c.ASSERT, c.ASSERT_NOT):
        return _first(items[1:], rest)
    if op is c.GROUPREF:
        return _ALPHABET  # a backreference may start with anything
    raise AssertionError(f"unexpected op {op}")


def _backtracking_problems(items: list[Any], rest: list[list[Any]]) -> list[str]:
    """Repeats that could backtrack: repeated groups, or a run the next item can continue."""
    c = _re_constants
    problems: list[str] = []
    for i, (op, arg) in enumerate(items):
        following = [items[i + 1 :], *rest]
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            _, high, body = arg
            (item,) = list(body) if len(body) == 1 else [(None, None)]
            run = _charset(*item) if item[0] is not None else None
            if high > 1 and run is None:
                problems.append(f"a repeated group or sequence: {list(body)!r}")
            elif high > 1 and run is not None:
                overlap = run & _first(items[i + 1 :], rest)
                if overlap:
                    problems.append(
                        f"a run of {sorted(run)[:5]}... can continue into the next item"
                    )
            elif high <= 1:
                problems += _backtracking_problems(list(body), following)  # an optional part
        elif op is c.SUBPATTERN:
            problems += _backtracking_problems(list(arg[-1]), following)
        elif op is c.BRANCH:
            for alt in arg[1]:
                problems += _backtracking_problems(list(alt), following)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            problems += _backtracking_problems(list(arg[1]), [])
    return problems


def _check_linear(pattern: re.Pattern[Any]) -> list[str]:
    flags = pattern.flags
    parsed = _re_parser.parse(pattern.pattern, flags)
    return _backtracking_problems(list(parsed), [])


def _module_patterns(module: ModuleType) -> dict[str, re.Pattern[Any]]:
    return {k: v for k, v in vars(module).items() if isinstance(v, re.Pattern)}


# Any call that runs or compiles a pattern (re.escape of trusted names is not one).
_USES_RE = re.compile(r"\bre\.(?:compile|match|search|fullmatch|sub|subn|findall|finditer|split)\(")
_AUDITED = (
    "agent.servers.parser",
    "agent.servers.inspect",
    "agent.plan.scenario",
    "agent.discovery.environ",
    "agent.logs",
    "exporters.http",
    "exporters.webconfig",
)


def test_every_regex_module_is_audited() -> None:
    root = Path(__file__).resolve().parents[2]
    with_regexes = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for top in ("agent", "exporters")
        for path in (root / top).rglob("*.py")
        if _USES_RE.search(path.read_text(encoding="utf-8"))
    }
    assert with_regexes == set(_AUDITED)


@pytest.mark.parametrize("module_name", _AUDITED)
def test_regexes_cannot_backtrack(module_name: str) -> None:
    # Every repeat is of one character class (no repeated groups, so nothing nested), and
    # what follows a run can never start with a character of the run: the engine never
    # gives a run back successfully, so a match attempt is linear in what it reads.
    module = importlib.import_module(module_name)
    patterns = _module_patterns(module)
    assert patterns
    for name, pattern in patterns.items():
        assert _check_linear(pattern) == [], name


def test_the_checker_fails_on_the_parser_before_issue_12() -> None:
    # The frozen pre-issue copy kept for the benchmark: its sample-line regex runs `[ \t]*`
    # into `[ \t]+`, and its label regexes repeat groups (the 1.6 s and 3.5 s of issue 12).
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_extract_old_parser.py"
    spec = importlib.util.spec_from_file_location("_old_parser_for_audit", path)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = old
    spec.loader.exec_module(old)
    problems = {name: _check_linear(p) for name, p in _module_patterns(old).items()}
    assert any("continue into" in p for p in problems["_LINE_RE"])
    assert any("repeated group" in p for p in problems["_LINE_RE"])
    assert _check_linear(re.compile(r"[ \t]*[a-z]+=")) == []


@pytest.mark.parametrize("escaping", [None, *ESCAPING_SCHEMES])
def test_compiled_scanners_cannot_backtrack(escaping: str | None) -> None:
    scanner = Scanner(n for profiles in PROFILES.values() for p in profiles for n in p.names)
    content_type = None if escaping is None else f"text/plain; escaping={escaping}"
    scanner.parse(b"a 1\n", content_type=content_type)
    for compiled in scanner._compiled.values():
        assert _check_linear(compiled.first) == []
        assert _check_linear(compiled.rest) == []
        for dense in compiled.dense.values():
            assert _check_linear(dense) == []


# --- OpenMetrics, content type and escaped names (issue 11) ----------------------------

_OM_LATEST = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_WANTED = ["sglang:prompt_tokens_total", "sglang:prompt_tokens_created", "sglang:num_running_reqs"]


def _sglang_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    prompt = Counter(
        "sglang:prompt_tokens", "Prompt tokens.", labelnames=["model_name"], registry=registry
    )
    prompt.labels(model_name="m1").inc(42)
    prompt.labels(model_name="m2").inc(7)
    generation = Counter(
        "sglang:generation_tokens", "Generated tokens.", ["model_name"], registry=registry
    )
    generation.labels(model_name="m1").inc(5)
    running = Gauge("sglang:num_running_reqs", "Running.", ["model_name"], registry=registry)
    running.labels(model_name="m1").set(3)
    # A UTF-8 name and label name: quoted under allow-utf-8, escaped otherwise.
    Gauge("my.metric", "UTF-8 name.", ["model.name"], registry=registry).labels("m1").set(1)
    return registry


_ACCEPTS = [
    ACCEPT,  # the scraper's: prometheus_client >= 0.23 answers OpenMetrics, underscores
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
]


def _by_model(exp: Exposition, name: str) -> dict[str | None, float]:
    return {s.label("model_name"): s.value for s in exp.get(name)}


@pytest.mark.parametrize("accept", _ACCEPTS)
def test_reads_real_prometheus_client_output_for_every_accept(accept: str) -> None:
    encoder, content_type = choose_encoder(accept)
    body = encoder(_sglang_registry())
    exp = Scanner(_WANTED).parse(body, content_type=content_type)
    assert _by_model(exp, "sglang:prompt_tokens_total") == {"m1": 42.0, "m2": 7.0}
    assert _by_model(exp, "sglang:num_running_reqs") == {"m1": 3.0}
    assert exp.declared("sglang:prompt_tokens_total")
    assert exp.types.get("sglang:num_running_reqs") == "gauge"
    if "openmetrics" in content_type:
        assert set(_by_model(exp, "sglang:prompt_tokens_created")) == {"m1", "m2"}
        assert exp.types.get("sglang:prompt_tokens") == "counter"
    else:
        assert exp.types.get("sglang:prompt_tokens_total") == "counter"


def test_the_scraper_accept_gets_the_classic_text_with_colons() -> None:
    # The scraper asks for what every engine serves: prometheus_client answers the classic
    # text format and keeps the colons, whatever its version.
    encoder, content_type = choose_encoder(ACCEPT)
    body = encoder(_sglang_registry()).decode()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'sglang:prompt_tokens_total{model_name="m1"} 42.0' in body
    reading = read_exposition(body, "sglang", content_type=content_type)
    assert {m.model: m.input_tokens for m in reading.models} == {"m1": 42.0, "m2": 7.0}


def test_an_openmetrics_answer_with_escaped_names_reads_the_same() -> None:
    # The case of issue 11: a server that answers OpenMetrics anyway (prometheus_client >=
    # 0.23 whenever Accept lists it): sample names lose their colon, TYPE lines keep it.
    encoder, content_type = choose_encoder("application/openmetrics-text;version=1.0.0")
    body = encoder(_sglang_registry()).decode()
    assert "escaping=underscores" in content_type
    assert 'sglang_prompt_tokens_total{model_name="m1"} 42.0' in body
    assert "# TYPE sglang:prompt_tokens counter" in body
    reading = read_exposition(body, "sglang", content_type=content_type)
    assert {m.model: m.input_tokens for m in reading.models} == {"m1": 42.0, "m2": 7.0}
    assert {m.model: m.output_tokens for m in reading.models} == {"m1": 5.0, "m2": 0.0}
    # Sniffing (no content type) reads it the same way.
    assert read_exposition(body, "sglang") == reading


@pytest.mark.parametrize(
    ("escaping", "name", "label"),
    [
        ("values", "U__my_2e_metric", "model.name"),
        ("dots", "my_dot_metric", "model.name"),
        ("underscores", "my_metric", "model_name"),  # lossy: nothing to undo
    ],
)
def test_label_names_are_unescaped_as_the_content_type_says(
    escaping: str, name: str, label: str
) -> None:
    encoder, content_type = choose_encoder(
        f"application/openmetrics-text;version=1.0.0;escaping={escaping}"
    )
    body = encoder(_sglang_registry())
    (sample,) = Scanner([name]).parse(body, content_type=content_type).get(name)
    assert sample.labels == ((label, "m1"),)


def test_quoted_utf8_names_and_label_names() -> None:
    encoder, content_type = choose_encoder(
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"
    )
    text = encoder(_sglang_registry()).decode()
    assert Scanner(_WANTED).parse(text, content_type=content_type).get("sglang:num_running_reqs")
    line = next(x for x in text.splitlines() if x.startswith('{"my.metric"'))
    assert line == '{"my.metric","model.name"="m1"} 1.0'
    # Not a legacy name, so no profile asks for it; the same line with a legacy name is read.
    body = line.replace('"my.metric"', '"wanted"') + "\n# EOF\n"
    (sample,) = Scanner(["wanted"]).parse(body, content_type=content_type).get("wanted")
    assert sample.labels == (("model.name", "m1"),)


_PRE_023 = """\
# HELP sglang:prompt_tokens Prompt tokens.
# TYPE sglang:prompt_tokens counter
sglang:prompt_tokens_total{model_name="m1"} 42.0
sglang:prompt_tokens_created{model_name="m1"} 1.7e+09
# EOF
"""


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (_PRE_023, _OM_LATEST),  # prometheus_client < 0.23: colons everywhere
        (_PRE_023, None),
        (_PRE_023.replace("sglang:", "sglang_"), _OM_LATEST),  # TYPE line escaped too
        (_PRE_023.replace("sglang:prompt_tokens_", "sglang_prompt_tokens_"), None),
        (_PRE_023.replace("sglang:prompt_tokens_total", '{"sglang:prompt_tokens_total"'), None),
    ],
)
def test_openmetrics_fixtures_give_the_names_asked_for(body: str, content_type: str | None) -> None:
    body = body.replace('"sglang:prompt_tokens_total"{', '"sglang:prompt_tokens_total",')
    exp = Scanner(_WANTED).parse(body, content_type=content_type)
    assert _by_model(exp, "sglang:prompt_tokens_total") == {"m1": 42.0}
    assert exp.types == {"sglang:prompt_tokens": "counter"}
    assert exp.helps == {"sglang:prompt_tokens": "Prompt tokens."}


def test_the_spelling_as_written_wins_over_an_escaped_one() -> None:
    body = "a:b_total 1\na_b_total 2\n"
    assert _values(body, "a:b_total") == [({}, 1.0)]
    assert _values(body, "a_b_total") == [({}, 2.0)]
    assert _values("a_b_total 2\n", "a:b_total") == [({}, 2.0)]
    # allow-utf-8 promises names as written: no escaped spelling is looked for.
    exp = Scanner(["a:b_total"]).parse(
        "a_b_total 2\n", content_type="text/plain; escaping=allow-utf-8"
    )
    assert exp.get("a:b_total") == ()


def test_quoted_names_of_other_families_do_not_break_parsing() -> None:
    body = '{"my.metric", label="x"} 1\n{"other"} 2\n# TYPE "my.metric" gauge\na 3\n'
    assert _values(body, "a") == [({}, 3.0)]
    assert _values('{ "a" , b="c" } 4\n{"a"} 5\n', "a") == [({"b": "c"}, 4.0), ({}, 5.0)]
    with pytest.raises(ParseError, match="line 1: malformed label"):
        _parse('{"a" b="c"} 4\n', ["a"])


def test_format_comes_from_the_content_type() -> None:
    body = 'a 1\n# EOF\na{x="2"} 2\n'
    # In the classic format `# EOF` is a comment.
    exp = Scanner(["a"]).parse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
    assert [s.value for s in exp.get("a")] == [1.0, 2.0]
    with pytest.raises(ParseError, match="line 3: text after '# EOF'"):
        Scanner(["a"]).parse(body, content_type=_OM_LATEST)
    with pytest.raises(ParseError, match="does not end with '# EOF'"):
        Scanner(["a"]).parse("a 1\n", content_type=_OM_LATEST)
    with pytest.raises(ParseError, match="does not end with a newline"):
        Scanner(["a"]).parse("a 1\n# EOF", content_type="text/plain")
    # Unknown media types and escaping values fall back to sniffing and underscores.
    assert Scanner(["a:b"]).parse("a_b 1\n# EOF\n", content_type="x/y; escaping=nope").get("a:b")


@pytest.mark.parametrize(
    ("name", "escaping", "expected"),
    [
        ("sglang:prompt_tokens_total", "underscores", ("sglang_prompt_tokens_total",)),
        (
            "sglang:prompt_tokens_total",
            "dots",
            ("sglang__prompt__tokens__total", "sglang:prompt__tokens__total"),
        ),
        ("sglang:prompt_tokens_total", "values", ("U__sglang_3a_prompt__tokens__total",)),
        ("sglang:prompt_tokens_total", "allow-utf-8", ()),
        ("plain_name", "underscores", ()),
    ],
)
def test_name_spellings(name: str, escaping: str, expected: tuple[str, ...]) -> None:
    assert name_spellings(name, escaping) == (name, *expected)


_legacy_names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True).filter(
    lambda n: not n.startswith("__") and not n.endswith(("_total", "_created"))
)


@settings(max_examples=60, deadline=None)
@given(_legacy_names, st.sampled_from(_ACCEPTS), st.integers(0, 10**9))
def test_any_counter_name_survives_any_escaping(name: str, accept: str, value: int) -> None:
    registry = CollectorRegistry()
    try:
        counter = Counter(name, "Help.", ["model_name"], registry=registry)
    except ValueError:
        return  # a name prometheus_client itself refuses (reserved suffixes, and so on)
    counter.labels(model_name="m").inc(value)
    encoder, content_type = choose_encoder(accept)
    exp = Scanner([f"{name}_total"]).parse(encoder(registry), content_type=content_type)
    assert _by_model(exp, f"{name}_total") == {"m": float(value)}


# --- streaming (issue 16): any split of the body reads the same; blocks skipped whole --------

_FIXTURES = Path(__file__).parent / "fixtures"


def _streamed(
    body: bytes,
    names: list[str],
    cuts: list[int],
    content_type: str | None = None,
    memo: ParseMemo | None = None,
) -> Exposition:
    reader = Scanner(names).reader(ParseLimits(), content_type, memo=memo)
    last = 0
    for cut in sorted(set(cuts)):
        reader.feed(body[last:cut])
        last = cut
    reader.feed(body[last:])
    return reader.close()


def _outcome(parse: Any) -> tuple[str, Any]:
    try:
        exp = parse()
    except ParseError as exc:
        return "error", exc.problem
    # repr: NaN == NaN is False, and a body may hold NaN samples.
    samples = {k: [(s.labels, repr(s.value)) for s in v] for k, v in exp.samples.items()}
    return "ok", (samples, dict(exp.types), dict(exp.helps), exp.duplicates)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expositions(), st.data())
def test_any_split_reads_what_the_whole_body_reads(
    case: tuple[str, dict[str, list[tuple[dict[str, str], float]]]], data: st.DataObject
) -> None:
    text, truth = case
    body = text.encode("utf-8")
    wanted = data.draw(st.lists(st.sampled_from(sorted(truth) or ["unused"]), max_size=4))
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    whole = _outcome(lambda: _parse(body, wanted))
    assert _outcome(lambda: _streamed(body, wanted, cuts)) == whole


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_exposition_alphabet, max_size=80).map(
        lambda p: "".join(p).encode("utf-8", "surrogateescape")
    ),
    st.lists(st.integers(0, 400), max_size=8),
    st.sampled_from([None, "text/plain; version=0.0.4", "application/openmetrics-text"]),
)
def test_any_split_of_hostile_bytes_fails_or_reads_as_the_whole(
    body: bytes, cuts: list[int], content_type: str | None
) -> None:
    names = ["a", "x_total", "b:c"]
    whole = _outcome(lambda: Scanner(names).parse(body, ParseLimits(), content_type))
    streamed = _outcome(lambda: _streamed(body, names, cuts, content_type))
    # The same answer, or both refuse (a split may meet another problem first).
    assert streamed == whole or (streamed[0] == whole[0] == "error")


def _real_bodies() -> list[Path]:
    return sorted((_FIXTURES / "real").glob("*.prom")) + sorted(_FIXTURES.glob("*.txt"))


@pytest.mark.parametrize("path", _real_bodies(), ids=lambda p: p.name)
@pytest.mark.parametrize("piece", [1, 7, 4096, 65536])
def test_real_bodies_read_the_same_in_pieces(path: Path, piece: int) -> None:
    body = path.read_bytes()
    names = [n for profiles in PROFILES.values() for p in profiles for n in p.names]
    whole = _outcome(lambda: Scanner(names).parse(body))
    streamed = _outcome(lambda: _streamed(body, names, list(range(piece, len(body), piece))))
    assert streamed == whole
    assert whole[0] == "ok" and whole[1][0]  # every real body has series of some profile


@pytest.mark.parametrize("path", _real_bodies(), ids=lambda p: p.name)
def test_real_bodies_read_the_same_by_a_warm_memo(path: Path) -> None:
    # A server's third scrape reads its lines by the heads its memo learned: the same
    # series as a fresh read of the captured body, in 256 KiB pieces as a scrape feeds them.
    body = path.read_bytes()
    names = [n for profiles in PROFILES.values() for p in profiles for n in p.names]
    memo = ParseMemo()
    for _ in range(3):
        warm = _outcome(lambda: _read_with(memo, names, body, 256 * 1024))
    assert warm == _outcome(lambda: Scanner(names).parse(body))
    assert any(memo._heads.values())  # the heads path ran on this body


def test_a_sample_after_an_unwanted_block_without_its_own_header_is_read() -> None:
    # The block of `other` ends with samples of `a` (no HELP/TYPE): it is scanned, not skipped.
    body = "# HELP other x\n# TYPE other gauge\nother 1\nother 2\na 5\n# TYPE z gauge\nz 1\n"
    assert _values(body, "a") == [({}, 5.0)]
    body = "# TYPE other histogram\nother_bucket 1\nother_count 1\n\n\na 6\n\n"
    assert _values(body, "a") == [({}, 6.0)]


def test_hash_inside_lines_and_exemplars_on_every_line_read_the_same_as_the_whole() -> None:
    exemplar = ' # {trace_id="abc"} 0.5 1.0'
    lines = ["# TYPE h histogram"]
    lines += [f'h_bucket{{le="{i}",v="#{i}"}} {i}{exemplar}' for i in range(300)]
    lines += ['a{v="#"} 7', "# TYPE z gauge", "z 1", "# EOF"]
    body = ("\n".join(lines) + "\n").encode()
    whole = Scanner(["a", "z"]).parse(body)
    assert [s.value for s in whole.get("a")] == [7.0]
    assert [s.value for s in whole.get("z")] == [1.0]
    assert _streamed(body, ["a", "z"], list(range(100, len(body), 997))) == whole


def test_streamed_errors_name_the_byte_offset_past_the_first_piece() -> None:
    good = b"".join(b'a{i="%d"} 1\n' % i for i in range(1000))
    body = good + b"a 1 soon\n"
    with pytest.raises(ParseError) as whole:
        Scanner(["a"]).parse(body)
    assert whole.value.line == 1001
    with pytest.raises(ParseError) as streamed:
        _streamed(body, ["a"], [4096])
    assert streamed.value.line is None
    assert streamed.value.offset == len(good)
    assert str(streamed.value) == f"byte {len(good)}: invalid timestamp 'soon'"


def test_streamed_limits_hold_across_pieces() -> None:
    limits = ParseLimits(max_body_bytes=100, max_line_bytes=20)
    reader = Scanner(["a"]).reader(limits)
    reader.feed(b"a 1\n" + b"b" * 15)
    with pytest.raises(ParseError, match="line is at least 21 bytes, over the limit"):
        reader.feed(b"b" * 6)
    reader = Scanner(["a"]).reader(limits)
    reader.feed(b"a 1\n" * 25)
    with pytest.raises(ParseError, match="body is at least 104 bytes, over the limit"):
        reader.feed(b"a 1\n")


def test_the_memo_stays_bounded_by_a_body_of_many_families() -> None:
    memo = ParseMemo(max_entries=100)
    body = "".join(f"# TYPE f{i} gauge\nf{i} 1\n" for i in range(1000)) + 'a{x="1"} 2\n'
    reader = Scanner(["a"]).reader(memo=memo)
    reader.feed(body.encode())
    assert len(memo.family_keys) <= 100  # while the body is read, not only after
    exp = reader.close()
    assert [s.value for s in exp.get("a")] == [2.0]
    # Kept for the next scrape: what the body taught, within the bound.
    # (and no labels: read as none, whatever the body)
    assert memo.labels("underscores") == {b'{x="1"}': (("x", "1"),), b"": ()}


def test_the_memo_stays_bounded_in_bytes_when_long_lines_churn() -> None:
    # A server whose every scrape brings new long label sets, HELP texts and family names:
    # kept whole up to 10,000 entries a table, such keys would be gigabytes.
    memo = ParseMemo(max_bytes=200_000)
    held = []
    for scrape in range(40):
        pad = f"{scrape:04d}" + "x" * 20_000
        body = (
            f"# HELP a {pad}\n# TYPE a gauge\n"
            + "".join(f'a{{k="{pad}{i}"}} {i}\n' for i in range(3))
            + f"# TYPE f_{pad} gauge\nf_{pad} 1\n"
        ).encode()
        exp = _read_with(memo, ["a"], body, 4096)
        assert [s.value for s in exp.get("a")] == [0.0, 1.0, 2.0]
        assert exp.helps == {"a": pad}
        held.append(memo.held_bytes)
    assert max(held) <= 200_000 + 2 * len(body)
    assert held.count(0) < len(held)  # remembered between scrapes while under the bound


# --- blocks read whole (dense) or by their wanted lines only (sparse) ------------------

_HISTOGRAM = (
    "# HELP x_seconds Time.\n# TYPE x_seconds histogram\n"
    'x_seconds_bucket{m="a",le="1"} 1\n'
    'x_seconds_bucket{m="a",v="x_seconds_sum x_seconds_sum",le="+Inf"} 2\n'
    'x_seconds_sum{m="a"} 1.5\n'
    'x_seconds_count{m="a"} 2\n'
    'x_seconds_bucket{m="b",le="+Inf"} 1\n'
    '  x_seconds_sum{m="b"} 2.5\n'
    'x_seconds_bucket{m="c",le="+Inf"} 1\n'
    '{"x_seconds_sum",m="c"} 3.5\n'
    'x_seconds_sum{m="d",v="x_seconds_sum"} 4.5 1767225600000\n'
    'x_seconds_sum_more{m="e"} 9\n'
    "# TYPE z gauge\nz 1\n"
)


def _sums(exp: Exposition, name: str) -> dict[str | None, float]:
    return {s.label("m"): s.value for s in exp.get(name)}


def test_a_histogram_sum_is_found_plain_after_blanks_quoted_and_with_its_name_in_a_label() -> None:
    # Only `_sum` is wanted in the block: its lines are found by name, not by visiting the
    # bucket lines. Reading the buckets too (every line visited) must give the same sums.
    expected = {"a": 1.5, "b": 2.5, "c": 3.5, "d": 4.5}
    sparse = Scanner(["x_seconds_sum"]).parse(_HISTOGRAM)
    assert _sums(sparse, "x_seconds_sum") == expected
    assert sparse.duplicates == 0
    every_line = Scanner(["x_seconds_sum", "x_seconds_bucket"]).parse(_HISTOGRAM)
    assert _sums(every_line, "x_seconds_sum") == expected
    assert sparse.types == {"x_seconds": "histogram"}
    body = _HISTOGRAM.encode()
    assert _streamed(body, ["x_seconds_sum"], list(range(7, len(body), 31))) == sparse


def test_a_line_repeating_a_wanted_name_is_searched_once() -> None:
    # A hostile bucket line holding the wanted name 20,000 times: each line is searched up
    # to its first hit, and nothing is read twice.
    noise = "x_seconds_sum" * 20_000
    body = (
        "# TYPE x_seconds histogram\n"
        f'x_seconds_bucket{{v="{noise}",le="1"}} 1\n'
        f'x_seconds_sum{{v="{noise}"}} 5\n'
        "x_seconds_count 1\n"
    )
    exp = Scanner(["x_seconds_sum"]).parse(body)
    assert [s.value for s in exp.get("x_seconds_sum")] == [5.0]
    assert exp.duplicates == 0


def test_a_sample_after_a_histogram_block_without_its_own_header_is_read() -> None:
    body = "# TYPE x_seconds histogram\nx_seconds_bucket 1\nx_seconds_sum 2\na 5\n# TYPE z gauge\n"
    exp = Scanner(["x_seconds_sum", "a"]).parse(body)
    assert [s.value for s in exp.get("x_seconds_sum")] == [2.0]
    assert [s.value for s in exp.get("a")] == [5.0]


_COUNTER = "# HELP a_total A.\n# TYPE a_total counter\n" + "".join(
    f'a_total{{i="{i}"}} {i}\n' for i in range(6)
)


@pytest.mark.parametrize(
    ("line", "values", "duplicates"),
    [
        ('a_total{i="9"} 9', [0, 1, 2, 9, 3, 4, 5], 0),  # every line of the common shape
        ('a_total{i="1"} 7', [0, 1, 2, 3, 4, 5], 1),  # a duplicate
        ('a_total{i="9"} 9 1767225600000', [0, 1, 2, 9, 3, 4, 5], 0),  # a timestamp
        ('a_total{i="9",} 9', [0, 1, 2, 9, 3, 4, 5], 0),  # a trailing comma
        ("a_total 9", [0, 1, 2, 9, 3, 4, 5], 0),  # no labels
        ('b{i="9"} 9', [0, 1, 2, 3, 4, 5], 0),  # another name
    ],
)
def test_a_counter_block_reads_the_same_whatever_its_lines(
    line: str, values: list[int], duplicates: int
) -> None:
    lines = _COUNTER.splitlines()
    body = "\n".join([*lines[:5], line, *lines[5:]]) + "\n"
    exp = Scanner(["a_total"]).parse(body)
    assert [s.value for s in exp.get("a_total")] == values
    assert exp.duplicates == duplicates
    headerless = Scanner(["a_total"]).parse("\n".join([*lines[2:5], line, *lines[5:]]) + "\n")
    assert headerless.get("a_total") == exp.get("a_total")


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('a_total{i="9} 9', "unterminated quoted label value"),
        ('a_total{i="9",i="8"} 9', "duplicate label name 'i'"),
        ('a_total{i="9"} 1e', "invalid sample value '1e'"),
    ],
)
def test_an_error_in_a_counter_block_names_its_line(line: str, fragment: str) -> None:
    lines = _COUNTER.splitlines()
    body = "\n".join([*lines[:5], line, *lines[5:]]) + "\n"
    with pytest.raises(ParseError, match=fragment) as info:
        Scanner(["a_total"]).parse(body)
    assert info.value.line == 6


def test_the_series_limit_in_a_counter_block_names_the_line_over_it() -> None:
    with pytest.raises(ParseError, match="more than max_series_per_family=4") as info:
        Scanner(["a_total"]).parse(_COUNTER, ParseLimits(max_series_per_family=4))
    assert info.value.line == 7


def test_a_counter_block_larger_than_one_findall_window_is_read_whole() -> None:
    # 3,000 series (60 KB): read in windows of whole lines; a duplicate across windows is
    # still one, and an error far in is still named by its line.
    lines = ["# TYPE a_total counter", *(f'a_total{{i="{i}"}} {i}' for i in range(3000))]
    body = "\n".join([*lines, 'a_total{i="7"} 1']) + "\n"
    exp = Scanner(["a_total"]).parse(body)
    assert [s.value for s in exp.get("a_total")] == [float(i) for i in range(3000)]
    assert exp.duplicates == 1
    lines[2500] = 'a_total{i="x} 1'
    with pytest.raises(ParseError, match="unterminated quoted label value") as info:
        Scanner(["a_total"]).parse("\n".join(lines) + "\n")
    assert info.value.line == 2501


def test_a_line_holding_two_wanted_aggregates_is_read_once() -> None:
    body = (
        "# TYPE x_seconds histogram\n"
        'x_seconds_bucket{le="+Inf"} 1\n'
        'x_seconds_sum{v="x_seconds_count"} 2\n'
        'x_seconds_count{v="x_seconds_sum"} 1\n'
    )
    exp = Scanner(["x_seconds_sum", "x_seconds_count"]).parse(body)
    assert [s.value for s in exp.get("x_seconds_sum")] == [2.0]
    assert [s.value for s in exp.get("x_seconds_count")] == [1.0]
    assert exp.duplicates == 0


# --- what a server's memo keeps across scrapes (heads of lines read before) ---------------

# What a next scrape may write in place of a value: values that read, values the fast
# paths must refuse exactly as the line scanner does, timestamps, blanks, CRLF.
_NEXT_VALUES = st.sampled_from(
    ["7", "-0.5", "NaN", "+Inf", "1e3", "1_0", "", "#", "2\t", "3 1767225600000", "4\r", " 5"]
)


@st.composite
def _next_scrape(draw: st.DrawFn, body: str) -> str:
    """``body`` as the same server writes it later: some values changed, some lines repeated."""
    lines = body.split("\n")
    out: list[str] = []
    for line in lines[:-1]:
        if line and not line.startswith("#") and draw(st.booleans()):
            head, _, _ = line.rpartition(" ")
            line = f"{head} {draw(_NEXT_VALUES)}"
        out.append(line)
        if draw(st.integers(0, 9)) == 0:
            out.append(line)  # a duplicate
    return "\n".join(out) + "\n"


def _read_with(memo: ParseMemo, names: list[str], body: bytes, piece: int) -> Exposition:
    return _streamed(body, names, list(range(piece, len(body), piece)), memo=memo)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expositions(), st.data())
def test_a_warm_memo_reads_what_a_fresh_one_reads(
    case: tuple[str, dict[str, list[tuple[dict[str, str], float]]]], data: st.DataObject
) -> None:
    # Two scrapes teach the memo the body's label sets and line heads; the third body,
    # with values changed (some to what must be refused) and lines repeated, must read as
    # it reads with nothing learned: same series, same duplicates, same error.
    text, truth = case
    names = sorted(truth) or ["unused"]
    sums = [n for n in names if n.endswith(("_sum", "_count"))]
    wanted = data.draw(st.sampled_from([names, sums or names]))
    later = data.draw(_next_scrape(text)).encode()
    piece = data.draw(st.sampled_from([7, 64, 1 << 20]))
    memo = ParseMemo()
    for _ in range(2):
        _outcome(lambda: _read_with(memo, wanted, text.encode(), piece))
    fresh = _outcome(lambda: Scanner(wanted).parse(later))
    warm = _outcome(lambda: _read_with(memo, wanted, later, piece))
    assert warm == fresh or (piece < 1 << 20 and warm[0] == fresh[0] == "error")


def test_a_warm_memo_refuses_a_value_the_line_scanner_refuses() -> None:
    body = "# TYPE a_total counter\n" + "".join(f'a_total{{i="{i}"}} {i}\n' for i in range(4))
    memo = ParseMemo()
    for _ in range(3):  # the last scrapes read by the heads learned
        exp = _read_with(memo, ["a_total"], body.encode(), 1 << 20)
        assert [s.value for s in exp.get("a_total")] == [0.0, 1.0, 2.0, 3.0]
    for value, problem in [("1_0", "invalid sample value '1_0'"), ("5\t", None)]:
        later = body.replace('a_total{i="2"} 2', f'a_total{{i="2"}} {value}').encode()
        fresh = _outcome(lambda b=later: Scanner(["a_total"]).parse(b))
        warm = _outcome(lambda b=later: _read_with(memo, ["a_total"], b, 1 << 20))
        assert warm == fresh
        if problem is not None:
            assert fresh == ("error", problem)


def test_the_heads_a_memo_keeps_stay_bounded() -> None:
    # 60 label sets under two names of one family key: 120 heads, more than the memo keeps.
    memo = ParseMemo(max_entries=100)
    body = (
        "# TYPE x_total counter\n"
        + "".join(f'x_total{{i="{i}"}} {i}\n' for i in range(60))
        + "# TYPE x_created gauge\n"
        + "".join(f'x_created{{i="{i}"}} 1.7e9\n' for i in range(60))
    )
    for _ in range(3):
        exp = _read_with(memo, ["x_total", "x_created"], body.encode(), 1 << 20)
        assert (len(exp.get("x_total")), len(exp.get("x_created"))) == (60, 60)
        assert memo.labels("underscores")  # 60 label sets: kept
        assert all(len(table) <= 100 for table in memo._heads.values())


def _error_line(parse: Any) -> int | None:
    try:
        parse()
    except ParseError as exc:
        return exc.line
    return None


_OM_COUNTER = (
    "# TYPE x counter\n"
    + "".join(f'x_total{{i="{i}"}} {i}\nx_created{{j="{i}"}} 1.7e9\n' for i in range(3))
    + "# EOF\n"
)
_SUM_FIRST = (
    "# TYPE x_seconds histogram\n"
    'x_seconds_sum{m="a"} 1\n'
    'x_seconds_bucket{m="a",le="+Inf"} 1\n'
    'x_seconds_sum{m="b"} 2\n'
    'x_seconds_sum{m="c"} 3\n'
    'x_seconds_bucket{m="c",le="+Inf"} 1\n'
)
_COUNTER_LINES = _COUNTER.splitlines()


def _counter_with(line: str) -> str:
    return "\n".join([*_COUNTER_LINES[:5], line, *_COUNTER_LINES[5:]]) + "\n"


@pytest.mark.parametrize(
    ("clean", "names", "later", "limits"),
    [
        *(
            (_COUNTER, ["a_total"], _counter_with(line), None)
            for line in [
                'a_total{i="1"} 7',  # a duplicate
                'a_total{i="9"} 9 1767225600000',
                'a_total{i="9",} 9',
                "a_total 9",
                'b{i="9"} 9',
                'a_total{i="9} 9',
                'a_total{i="9",i="8"} 9',
                'a_total{i="9"} 1e',
                'a_total{i="0"} 1_0',
            ]
        ),
        (_COUNTER, ["a_total"], _COUNTER, ParseLimits(max_series_per_family=4)),
        (_OM_COUNTER, ["x_total", "x_created"], _OM_COUNTER, None),  # two names, one block
        (_SUM_FIRST, ["x_seconds_sum"], _SUM_FIRST.replace("} 3", "} 4"), None),
        *(
            (_SUM_FIRST, ["x_seconds_sum", "z"], _SUM_FIRST.replace("x_seconds_sum{m=", f, 1), None)
            for f in ("z{m=", "!{m=")  # the block's first line: another name, not a name
        ),
        (_HISTOGRAM, ["x_seconds_sum"], _HISTOGRAM.replace("1.5", "1_5"), None),
        (_HISTOGRAM, ["x_seconds_sum"], _HISTOGRAM, ParseLimits(max_series_per_family=2)),
    ],
)
def test_a_warm_memo_reads_each_case_as_a_fresh_one(
    clean: str, names: list[str], later: str, limits: ParseLimits | None
) -> None:
    # The fast paths run only on what a memo has learned: warm it with the clean body, then
    # read the case as a scrape reads it, and as a fresh reader reads it.
    memo = ParseMemo()
    for _ in range(2):
        assert _outcome(lambda: _read_with(memo, names, clean.encode(), 1 << 20))[0] == "ok"

    def warm() -> Exposition:
        reader = Scanner(names).reader(limits or ParseLimits(), memo=memo, whole=True)
        reader.read_whole(later.encode())
        return reader.close()

    def fresh() -> Exposition:
        return Scanner(names).parse(later, limits or ParseLimits())

    assert _outcome(warm) == _outcome(fresh)
    assert _error_line(warm) == _error_line(fresh)


# --- a family's HELP, TYPE and UNIT lines read in one step --------------------------------


def test_a_header_of_a_longer_name_is_not_taken_for_the_same_family() -> None:
    # `a` is a prefix of `ab_total`: the TYPE line is another family's, read as such.
    body = "# HELP a skipped\n# TYPE ab_total counter\nab_total 1\n"
    exp = Scanner(["ab_total"]).parse(body)
    assert exp.types == {"ab_total": "counter"}
    assert exp.helps == {}
    assert [s.value for s in exp.get("ab_total")] == [1.0]


@pytest.mark.parametrize(
    "header",
    [
        "# HELP x_seconds Time.\n# TYPE x_seconds histogram\n# UNIT x_seconds seconds\n",
        '# HELP "x_seconds" Time.\n# TYPE "x_seconds" histogram\n',
        "# HELP x_seconds Time.\n#  TYPE x_seconds histogram\n",  # two steps: two spaces
        "#\tHELP x_seconds Time.\n# TYPE x_seconds\thistogram\n",
        "  # HELP x_seconds Time.\n# TYPE x_seconds histogram\n",
    ],
)
def test_every_line_of_a_wanted_header_is_read(header: str) -> None:
    body = header + 'x_seconds_bucket{le="+Inf"} 1\nx_seconds_sum 2\nx_seconds_count 1\n'
    exp = Scanner(["x_seconds_sum"]).parse(body)
    assert exp.types == {"x_seconds": "histogram"}
    assert exp.helps == {"x_seconds": "Time."}
    assert [s.value for s in exp.get("x_seconds_sum")] == [2.0]


# --- `x_created` written as a family of its own beside a wanted `x_total` -----------------


def test_a_wanted_sample_inside_a_created_block_is_read() -> None:
    # prometheus_client's text format writes `x_created` as a gauge family after `x_total`;
    # its block is read by the wanted names, so an `x_total` line in it still counts, and
    # the `x_created` lines (not wanted) do not.
    body = (
        "# HELP x_total X.\n# TYPE x_total counter\n"
        'x_total{m="a"} 1\n'
        "# HELP x_created X.\n# TYPE x_created gauge\n"
        'x_created{m="a"} 1.7e9\n'
        'x_total{m="b"} 2\n'
        'x_created{m="b"} 1.7e9\n'
        "# TYPE z gauge\nz 1\n"
    )
    exp = Scanner(["x_total"]).parse(body)
    assert [(s.label("m"), s.value) for s in exp.get("x_total")] == [("a", 1.0), ("b", 2.0)]
    assert set(exp.samples) == {"x_total"}
    assert exp.types == {"x_total": "counter"}
    both = Scanner(["x_total", "x_created"]).parse(body)
    assert [s.value for s in both.get("x_created")] == [1.7e9, 1.7e9]
