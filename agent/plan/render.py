"""Show a plan: rich tables for people, self-contained HTML with charts for a report.

Charts are drawn with pygal: a small pure-Python library (one ~130 kB wheel, no compiled
dependencies) that writes SVG. The SVG is put inline in the HTML and pygal's optional
tooltip script (loaded from a CDN by default) is switched off, so the report needs no
network at view time and opens from a file, an e-mail attachment or an air-gapped host.
plotly would embed ~3.5 MB of JavaScript per report; matplotlib would pull in numpy, pillow
and a C++ build for three charts.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import pygal
from pygal.style import Style
from rich.console import Console
from rich.table import Table

from agent.plan.report import Report, Row

__all__ = ["render_html", "render_tables"]


def _f(value: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant figures, thousands separated; None -> ``-``."""
    if value is None:
        return "-"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _name(row: Row) -> str:
    m = row.measured
    if m.server == "*":
        return "fleet"
    return f"{m.server}/{m.model or '-'}"


def _ratio_cells(row: Row) -> list[str]:
    m, r = row.measured, row.ratios
    return [
        _name(row),
        _f(m.output_tps),
        _f(m.input_tps),
        _f(m.watts),
        _f(m.gpus),
        _f(r.tokens_per_joule),
        _f(r.tokens_per_s_per_kw),
        _f(r.tokens_per_s_per_mw_facility),
        _f(r.joules_per_input_token),
        _f(r.joules_per_output_token),
        _pct(r.idle_share),
        _pct(r.cache_hit_ratio),
        _f(r.measured_cost_per_million),
    ]


def _ratio_headers(report: Report) -> list[str]:
    pue = report.options.scenarios[0].pue
    cur = report.measurement.currency or "cost"
    return [
        "server/model",
        "out tok/s",
        "in tok/s",
        "W",
        "GPUs",
        "tok/J",
        "tok/s per kW",
        f"tok/s per MW (PUE {pue:g})",
        "J/in tok",
        "J/out tok",
        "idle",
        "cache hit",
        f"{cur}/Mtok measured",
    ]


def _cost_headers(report: Report) -> list[str]:
    heads = ["scenario", *(_name(r) for r in report.rows), "fleet"]
    if report.options.margin is not None:
        heads.append(f"fleet price at {report.options.margin:.0%} margin")
    if report.options.price is not None:
        heads.append(f"fleet margin at {report.options.price:g}/Mtok")
    return heads


def _cost_rows(report: Report) -> list[list[str]]:
    out = []
    for i, scenario in enumerate(report.options.scenarios):
        cells = [scenario.label]
        cells += [_f(r.costs[i].total) for r in (*report.rows, report.fleet)]
        fleet_cost = report.fleet.costs[i]
        if report.options.margin is not None:
            cells.append(_f(fleet_cost.price_at_margin))
        if report.options.price is not None:
            cells.append(_pct(fleet_cost.margin_at_price))
        out.append(cells)
    return out


_CAPACITY_HEADERS = ["month", "tokens/day", "GPUs", "facility MW", "energy", "hardware", "total"]


def _capacity_rows(report: Report) -> list[list[str]]:
    return [
        [
            str(m.month),
            f"{m.tokens_per_day:.4g}",
            f"{m.gpus:,}",
            f"{m.facility_mw:.4f}",
            f"{m.energy_cost:,.2f}",
            f"{m.hardware_cost:,.2f}",
            f"{m.total_cost:,.2f}",
        ]
        for m in report.capacity
    ]


def _what_if_rows(report: Report) -> list[list[str]]:
    out = []
    for row in (*report.rows, report.fleet):
        base = row.costs[0].total
        for w in row.what_ifs:
            cost = None if w.cost is None else w.cost.total
            out.append(
                [
                    _name(row),
                    w.name,
                    _f(row.ratios.tokens_per_joule),
                    _f(w.tokens_per_joule),
                    _f(base),
                    _f(cost),
                    w.reason or "",
                ]
            )
    return out


_WHAT_IF_HEADERS = [
    "server/model",
    "what if",
    "tok/J now",
    "tok/J",
    "cost/Mtok now",
    "cost/Mtok",
    "note",
]


def _title(report: Report) -> str:
    m = report.measurement
    return (
        f"{m.source}, rates averaged over {m.seconds:,.0f} s; "
        f"currency {m.currency or 'not exported'}"
    )


def _table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, head in enumerate(headers):
        table.add_column(head, justify="left" if i == 0 else "right")
    for cells in rows:
        table.add_row(*cells)
    return table


def render_tables(report: Report, console: Console) -> None:
    """Print the plan as tables.

    Args:
        report: The plan.
        console: Where to print.
    """
    console.print(_title(report))
    ratio_rows = [_ratio_cells(r) for r in (*report.rows, report.fleet)]
    console.print(_table("Measured efficiency", _ratio_headers(report), ratio_rows))
    console.print(
        _table(
            "Cost per million output tokens",
            _cost_headers(report),
            _cost_rows(report),
        )
    )
    if report.capacity:
        first = report.options.scenarios[0]
        console.print(
            _table(
                f"Capacity for {report.capacity_for} at {report.options.utilization:.0%} "
                f"of measured tok/s per GPU, {first.label}, 730 h/month",
                _CAPACITY_HEADERS,
                _capacity_rows(report),
            )
        )
    if report.capacity_problem:
        console.print(f"capacity: {report.capacity_problem}")
    what_ifs = _what_if_rows(report)
    if what_ifs:
        console.print(_table("What if", _WHAT_IF_HEADERS, what_ifs))


_STYLE = Style(background="white", plot_background="white", font_family="sans-serif")


def _svg(chart: Any) -> str:  # pygal chart classes share no typed base
    return str(chart.render(is_unicode=True, disable_xml_declaration=True))


def _cost_chart(report: Report) -> str:
    chart = pygal.Bar(
        style=_STYLE,
        js=[],  # no CDN script: the report must render offline
        title=f"Cost per million output tokens ({report.measurement.currency or 'currency'})",
        x_label_rotation=20,
        legend_at_bottom=True,
        width=900,
        height=420,
    )
    chart.x_labels = [s.label for s in report.options.scenarios]
    for row in (*report.rows, report.fleet):
        chart.add(_name(row), [c.total for c in row.costs])
    return _svg(chart)


def _capacity_charts(report: Report) -> list[str]:
    if not report.capacity:
        return []
    months = [str(m.month) for m in report.capacity]
    gpus = pygal.Line(
        style=_STYLE, js=[], title="GPUs and facility MW by month", legend_at_bottom=True,
        width=900, height=380, value_formatter=lambda v: f"{v:.3g}",
    )  # fmt: skip
    gpus.x_labels = months
    gpus.add("GPUs", [m.gpus for m in report.capacity])
    gpus.add("facility MW", [m.facility_mw for m in report.capacity], secondary=True)
    cost = pygal.StackedBar(
        style=_STYLE, js=[], title="Monthly cost", legend_at_bottom=True, width=900, height=380
    )
    cost.x_labels = months
    cost.add("energy", [m.energy_cost for m in report.capacity])
    cost.add("hardware", [m.hardware_cost for m in report.capacity])
    return [_svg(gpus), _svg(cost)]


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.chart { max-width: 900px; }
"""


def render_html(report: Report) -> str:
    """The plan as one self-contained HTML page: tables and inline SVG charts.

    Args:
        report: The plan.

    Returns:
        The HTML text (no external script, style or image).
    """
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>tokenergy plan</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>tokenergy plan</h1>",
        f"<p>{html.escape(_title(report))}</p>",
        "<h2>Measured efficiency</h2>",
        _html_table(
            _ratio_headers(report), [_ratio_cells(r) for r in (*report.rows, report.fleet)]
        ),
        "<h2>Cost per million output tokens</h2>",
        f"<div class='chart'>{_cost_chart(report)}</div>",
        _html_table(_cost_headers(report), _cost_rows(report)),
    ]
    if report.capacity:
        parts.append(f"<h2>Capacity for {html.escape(report.capacity_for)}</h2>")
        parts += [f"<div class='chart'>{svg}</div>" for svg in _capacity_charts(report)]
        parts.append(_html_table(_CAPACITY_HEADERS, _capacity_rows(report)))
    if report.capacity_problem:
        parts.append(f"<p>capacity: {html.escape(report.capacity_problem)}</p>")
    what_ifs = _what_if_rows(report)
    if what_ifs:
        parts += ["<h2>What if</h2>", _html_table(_WHAT_IF_HEADERS, what_ifs)]
    if report.problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in report.problems)
        parts.append(f"<h2>Left out</h2><ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
