import pytest

from agent.plan.scenario import (
    ScenarioError,
    parse_demand,
    parse_float_list,
    parse_fraction,
    parse_growth,
    parse_hourly_list,
    parse_range,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800), ("24h", 86400), ("90m", 5400), ("30s", 30), ("1w2d", 9 * 86400)],
)
def test_ranges(text: str, seconds: float) -> None:
    assert parse_range(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d7", "7 d", "7days", "0d", "-1d", "1.5d", "7d "])
def test_bad_ranges_name_the_option_and_the_text(text: str) -> None:
    with pytest.raises(ScenarioError, match=r"^--range: ") as info:
        parse_range(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [("2e9/day", 2e9 / 86400), ("86400/d", 1.0), ("3.6e6/h", 1000.0), ("5000/s", 5000.0)],
)
def test_demands(text: str, per_second: float) -> None:
    assert parse_demand(text) == pytest.approx(per_second, rel=1e-12)


@pytest.mark.parametrize(
    "text", ["2e9", "2e9/week", "/day", "abc/day", "0/day", "-5/day", "1e999/day", "2e9//day"]
)
def test_bad_demands(text: str) -> None:
    with pytest.raises(ScenarioError, match=r"^--demand: "):
        parse_demand(text)


@pytest.mark.parametrize(
    ("text", "growth"),
    [("15%/month", 0.15), ("0%/month", 0.0), ("-5%/month", -0.05), ("2.5 % / mo", 0.025)],
)
def test_growth(text: str, growth: float) -> None:
    assert parse_growth(text) == pytest.approx(growth)


@pytest.mark.parametrize(
    "text", ["15%", "15/month", "15%/year", "x%/month", "-100%/month", "--5%/month", "+-5%/month"]
)
def test_bad_growth(text: str) -> None:
    with pytest.raises(ScenarioError, match=r"^--growth: "):
        parse_growth(text)


def test_fractions_and_percentages() -> None:
    assert parse_fraction("30%", "--margin") == pytest.approx(0.3)
    assert parse_fraction("0.3", "--margin") == pytest.approx(0.3)
    assert parse_fraction("100%", "--cache-hit") == 1.0
    with pytest.raises(ScenarioError, match="below 100%"):
        parse_fraction("100%", "--margin", allow_one=False)
    for bad in ("130%", "-1%", "abc", "1.5"):
        with pytest.raises(ScenarioError, match=r"^--margin: "):
            parse_fraction(bad, "--margin")


def test_lists() -> None:
    assert parse_float_list("0.05,0.10, 0.20", "--electricity", "per kWh") == [0.05, 0.1, 0.2]
    assert parse_hourly_list("measured,2.5") == [None, 2.5]
    for bad in ("0.05,,0.1", "0.05,x", "0", "-1", "nan", "inf"):
        with pytest.raises(ScenarioError, match=r"^--electricity: "):
            parse_float_list(bad, "--electricity", "per kWh")
    with pytest.raises(ScenarioError, match=r"^--gpu-hourly: "):
        parse_hourly_list("measurd")
