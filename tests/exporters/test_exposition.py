"""The collector's own exposition writer: prometheus_client's bytes, kept per Snapshot.

``SnapshotCollector.exposition`` writes /metrics without building prometheus_client families
(4-6x less CPU per request, tests/benchmarks/bench_cycle.py). prometheus_client's encoders stay
the reference: every body here is compared with theirs, byte for byte.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as _generate_om

from agent.clock import ManualClock
from agent.readings import Snapshot
from exporters.http import MetricsServer
from exporters.prometheus import SnapshotCollector, SnapshotRegistry, build_registry

Render = Callable[..., Any]
HOSTILE = 'evil"} 1\nfake_metric 1\n# quote " backslash \\ end \u00e9\u4e2d'


def library(registry: Any, openmetrics: bool) -> bytes:
    """prometheus_client's encoding of ``registry`` (through ``collect()``)."""
    if openmetrics:
        return _generate_om(registry)  # type: ignore[no-untyped-call,no-any-return]
    return generate_latest(registry)


def snapshots(build: Any) -> dict[str, Snapshot | None]:
    rich: Snapshot = build.rich_snapshot()
    hostile = replace(
        rich,
        servers=(build.server("vllm", "vllm", (build.tokens(HOSTILE),)),),
        ledger=replace(rich.ledger, models=(build.totals("vllm", HOSTILE),)),
    )
    surrogate = replace(
        rich, ledger=replace(rich.ledger, models=(build.totals("vllm", "bad\udcff"),))
    )
    empty = build.empty_snapshot()
    return {"rich": rich, "hostile": hostile, "surrogate": surrogate, "empty": empty, "none": None}


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
@pytest.mark.parametrize("which", ["rich", "hostile", "surrogate", "empty", "none"])
def test_own_writer_is_prometheus_client_byte_for_byte(
    render: Render, build: Any, which: str, openmetrics: bool
) -> None:
    registry = render(snapshots(build)[which]).registry
    assert isinstance(registry, SnapshotRegistry)
    expected = library(registry, openmetrics)
    assert registry.exposition(openmetrics) == expected
    assert registry.exposition(openmetrics) == expected  # kept body, same bytes


@settings(max_examples=80, deadline=None)
@given(
    server=st.text(max_size=12),
    model=st.text(max_size=40),
    value=st.one_of(st.floats(), st.none(), st.integers(-(10**20), 10**20)),
    ratio=st.one_of(st.floats(), st.none()),
    openmetrics=st.booleans(),
)
def test_any_label_and_value_is_written_as_prometheus_client_writes_it(
    build: Any,
    server: str,
    model: str,
    value: float | None,
    ratio: float | None,
    openmetrics: bool,
) -> None:
    snap = build.rich_snapshot()
    totals = build.totals(server, model, output_tokens_total=value, tokens_per_joule=ratio)
    snap = replace(snap, ledger=replace(snap.ledger, models=(totals,)))
    registry = build_registry(SnapshotCollector(lambda: snap, ManualClock(start=1001.0), "x"))
    assert isinstance(registry, SnapshotRegistry)
    assert registry.exposition(openmetrics) == library(registry, openmetrics)


def test_body_follows_the_snapshot_and_the_clock_and_differs_by_format(
    build: Any,
) -> None:
    first: Snapshot = build.rich_snapshot()
    second = replace(
        first,
        taken_at_seconds=first.taken_at_seconds + 5.0,
        ledger=replace(first.ledger, unattributed_energy_joules_total=4321.5),
    )
    current: list[Snapshot] = [first]
    clock = ManualClock(start=first.taken_at_seconds + 1.0)
    registry = build_registry(SnapshotCollector(lambda: current[0], clock, "x"))
    assert isinstance(registry, SnapshotRegistry)

    text, om = registry.exposition(False), registry.exposition(True)
    assert text != om and om.endswith(b"# EOF\n") and not text.endswith(b"# EOF\n")
    assert b"tokenergy_sample_age_seconds 1.0\n" in text

    clock.advance(2.0)  # same Snapshot, later request: only the age moves
    later = registry.exposition(False)
    assert b"tokenergy_sample_age_seconds 3.0\n" in later
    assert later.replace(b"age_seconds 3.0", b"age_seconds 1.0") == text
    assert later == library(registry, False)

    current[0] = second  # a new Snapshot: a new body, never the kept one
    fresh = registry.exposition(False)
    assert b"tokenergy_unattributed_energy_joules_total 4321.5\n" in fresh
    assert b"tokenergy_sample_age_seconds 0.0\n" in fresh  # 1003 s - 1005 s, floored at 0
    assert fresh == library(registry, False)
    assert registry.exposition(True) == library(registry, True)


def fetch(port: int, accept: str) -> tuple[str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        conn.request("GET", "/metrics", headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.getheader("Content-Type") or "", resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "accept",
    [
        "",
        "text/plain;version=0.0.4",
        "text/plain;version=1.0.0;escaping=allow-utf-8",
        "text/plain;version=1.0.0;escaping=underscores",
        "application/openmetrics-text",
        "application/openmetrics-text;version=1.0.0",
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
        # Escapings that rewrite names: prometheus_client's encoder writes these.
        "application/openmetrics-text;version=1.0.0;escaping=dots",
        "text/plain;version=1.0.0;escaping=values",
    ],
)
def test_served_body_is_the_negotiated_encoders_for_every_accept_header(
    make_server: Callable[..., MetricsServer], build: Any, accept: str
) -> None:
    srv = make_server()  # the rich Snapshot, 1 s old on a manual clock: the age stays put
    content_type, body = fetch(srv.port, accept)
    encoder, expected_type = choose_encoder(accept)
    assert content_type == expected_type
    snap = build.rich_snapshot()
    same = build_registry(
        SnapshotCollector(lambda: snap, ManualClock(build.taken_at + 1.0), "1.2.3")
    )
    assert body == encoder(same)
    if "dots" in accept:
        assert b"tokenergy__gpu__up" in body  # the escaping did rewrite the names
