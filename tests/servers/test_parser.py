"""The selective exposition parser: valid input, refusals, limits, agreement with the client."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from agent.config import ScrapeSettings
from agent.servers.parser import (
    Exposition,
    ExpositionError,
    ParseError,
    ParseLimits,
    Scanner,
    family_candidates,
)


def parse_exposition(
    body: str | bytes, names: list[str], limits: ParseLimits | None = None
) -> Exposition:
    return Scanner(names).parse(body, limits or ParseLimits())


def _values(body: str | bytes, name: str) -> list[tuple[dict[str, str], float]]:
    exp = parse_exposition(body, [name])
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
    exp = parse_exposition(body, ["a_total", "h_sum"])
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
    exp = parse_exposition(body, ["a"])
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
        parse_exposition(body, ["a", "b"])
    assert info.value.line == line
    assert fragment in str(info.value)
    assert str(info.value).startswith(f"line {line}: ")


def test_malformed_lines_of_other_families_are_not_validated() -> None:
    # Only wanted lines are fully parsed; this mirrors Prometheus's fast scrape parser.
    assert _values('other{b="c} 1\na 2\n', "a") == [({}, 2.0)]


def test_html_error_page_is_not_an_exposition() -> None:
    page = b"<!DOCTYPE html>\n<html><body><h1>502 Bad Gateway</h1></body></html>\n"
    with pytest.raises(ParseError, match="not a Prometheus exposition: the body looks like HTML"):
        parse_exposition(page, ["a"])


def test_undecodable_bytes_are_a_parse_error_with_the_line() -> None:
    with pytest.raises(ParseError, match=r"line 2: not UTF-8: byte 0xff"):
        parse_exposition(b'a 1\nb{x="\xff"} 2\n', ["a"])


def test_lone_surrogate_text_is_a_parse_error() -> None:
    with pytest.raises(ParseError, match="not encodable as UTF-8"):
        parse_exposition('a{x="\ud800"} 1\n', ["a"])


def test_body_size_limit() -> None:
    limits = ParseLimits(max_body_bytes=10)
    assert parse_exposition("a 1\n", ["a"], limits).get("a")
    with pytest.raises(ParseError, match="over the limit max_body_bytes=10"):
        parse_exposition("a 1\nb 22222\n", ["a"], limits)


@pytest.mark.parametrize("limit", [1, 2, 7, 8, 9, 100])
def test_line_length_limit_is_exact(limit: int) -> None:
    ok = "x" * (limit - 2) + " 1\n" if limit >= 3 else "a 1\n"
    long_line = "y" * (limit - 1) + " 1"  # limit + 1 bytes
    limits = ParseLimits(max_line_bytes=max(limit, 3))
    if limit >= 3:
        parse_exposition("a 1\n" + ok, ["a"], limits)
    with pytest.raises(ParseError) as info:
        parse_exposition("a 1\n" + long_line + "\nb 2\n", ["a"], ParseLimits(max_line_bytes=limit))
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
        parse_exposition(body, ["x"])
    roomy = ParseLimits(max_line_bytes=2 * 1024 * 1024)
    exp = parse_exposition(body, ["vllm:lora_requests_info", "x"], roomy)
    assert exp.get("vllm:lora_requests_info")[0].labels == (("running", huge),)
    assert exp.get("x")[0].value == 2.0


def test_series_per_family_limit() -> None:
    body = "".join(f'a{{i="{i}"}} 1\n' for i in range(5))
    assert len(parse_exposition(body, ["a"], ParseLimits(max_series_per_family=5)).get("a")) == 5
    with pytest.raises(ParseError, match=r"line 5: more than max_series_per_family=4 series of a"):
        parse_exposition(body, ["a"], ParseLimits(max_series_per_family=4))


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
    lines: list[str] = []
    truth: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in families:
        kind = draw(st.sampled_from(["gauge", "untyped", "histogram", "summary", "none"]))
        if kind != "none":
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
                lines.append(f"{name}{text_labels} {_fmt(value)}{stamp}")
                truth.setdefault(name, []).append((dict(labels), value))
        if draw(st.booleans()):
            lines.append("")
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
    exp = parse_exposition(text, wanted)
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
        exp = parse_exposition(text, wanted)
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
        exp = parse_exposition(body, ["a", "x_total", "b:c"], ParseLimits(max_line_bytes=64))
    except ParseError as exc:
        assert str(exc)
    else:
        for samples in exp.samples.values():
            assert all(isinstance(s.value, float) for s in samples)
