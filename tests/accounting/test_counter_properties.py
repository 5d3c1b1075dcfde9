"""Hypothesis: per-series token counting never invents a token and loses only what it must.

A simulated server serves one model from 1-4 data-parallel ranks; each rank has its own input
and output counter series. Histories interleave per-rank increments, rank restarts (tokens
made before the restart in that step are lost at the server), whole-server restarts (new start
time), rank series missing from some scrapes, the server down, start-time jitter within
seconds (workers, now-minus-uptime), and absurd values injected for one scrape.

Invariants, at every step, with ``truth`` = every token made since the agent's first sight:

- the agent's total never exceeds ``truth`` and never goes backwards;
- ``truth - agent`` is at most the tokens not yet seen by the agent (series missing, server
  down) plus, per series, the true increase of each interval (from one good reading of that
  series to the next) in which that series restarted or glitched, or in which it was first
  read after the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.counters import TokenCounters
from agent.readings import CounterKind, CounterSeries, ServerReading, ServerStatus, TokenReading

ABSURD = (1e16, 1e18, 1e20, 1.7e308, 1.79e308)
"""Physically impossible: more than 1e7 tokens/s per GPU for ~3 years (the default ceiling)."""
KINDS: tuple[CounterKind, ...] = ("input", "output")


@dataclass
class RankStep:
    before: tuple[int, int]
    restart: bool
    after: tuple[int, int]
    missing: bool
    absurd: float | None


@dataclass
class Step:
    dt: float
    down: bool
    server_restart: bool
    jitter: float
    ranks: list[RankStep]


@dataclass
class Series:
    raw: int
    pending: int = 0  # true tokens made since the agent's last good reading of it
    dirty: bool = False  # a restart or a glitch since that reading
    read: bool = False  # read at least once while watched


@dataclass
class Truth:
    series: dict[tuple[int, str], Series] = field(default_factory=dict)
    made: int = 0
    allowed_loss: int = 0
    seen: bool = False


tokens = st.integers(0, 5_000)


@st.composite
def histories(draw: st.DrawFn) -> tuple[int, list[int], list[Step]]:
    n = draw(st.integers(1, 4))
    history = [draw(st.sampled_from([0, 1_000, 10**9]) | st.integers(0, 10**9)) for _ in range(n)]
    steps = []
    for _ in range(draw(st.integers(1, 30))):
        ranks = [
            RankStep(
                before=(draw(tokens), draw(tokens)),
                restart=draw(st.sampled_from([False] * 6 + [True])),
                after=(draw(tokens), draw(tokens)),
                missing=draw(st.sampled_from([False] * 4 + [True])),
                absurd=draw(st.sampled_from([None] * 8 + list(ABSURD))),
            )
            for _ in range(n)
        ]
        steps.append(
            Step(
                dt=draw(st.sampled_from([1.0, 5.0, 10.0]) | st.floats(0.1, 30.0)),
                down=draw(st.sampled_from([False] * 6 + [True])),
                server_restart=draw(st.sampled_from([False] * 8 + [True])),
                jitter=draw(st.floats(-3.0, 3.0)),
                ranks=ranks,
            )
        )
    return n, history, steps


@settings(max_examples=200, deadline=None)
@given(histories())
def test_token_total_is_never_invented_and_loses_only_restart_and_glitch_intervals(
    case: tuple[int, list[int], list[Step]],
) -> None:
    n, history, steps = case
    truth = Truth(
        series={
            (r, k): Series(raw=history[r] * (i + 1)) for r in range(n) for i, k in enumerate(KINDS)
        }
    )
    counters = TokenCounters()
    start = 1.7e9
    agent = 0.0
    t = 0.0
    restarted_since_scrape = False
    for step in steps:
        t += step.dt
        if step.server_restart:
            start += 600.0
            restarted_since_scrape = True
        for r, rank in enumerate(step.ranks):
            restart = rank.restart or step.server_restart
            for i, kind in enumerate(KINDS):
                s = truth.series[(r, kind)]
                made = rank.before[i] + (rank.after[i] if restart else 0)
                if restart:
                    s.raw = rank.after[i]  # the tokens made before it are lost at the server
                    s.dirty = True
                else:
                    s.raw += rank.before[i]
                if truth.seen:
                    truth.made += made
                    s.pending += made
        if step.down:
            status = ServerStatus("s", False, None, "refused")
        else:
            series = []
            for r, rank in enumerate(step.ranks):
                if rank.missing:
                    continue
                for kind in KINDS:
                    s = truth.series[(r, kind)]
                    value = float(s.raw) if rank.absurd is None else rank.absurd
                    series.append(CounterSeries(kind, f'{kind}{{engine="{r}"}}', value))
                    if rank.absurd is not None:
                        s.dirty = True
                        continue
                    if truth.seen and (s.dirty or not s.read):
                        truth.allowed_loss += s.pending
                    s.pending, s.dirty, s.read = 0, False, True
            reading = TokenReading(
                "m",
                input_tokens=sum(x.value for x in series if x.kind == "input"),
                output_tokens=sum(x.value for x in series if x.kind == "output"),
                series=tuple(series),
            )
            status = ServerStatus(
                "s", True, ServerReading("vllm", (reading,), start_time_seconds=start + step.jitter)
            )
            truth.seen = True
        obs = counters.observe("s", status, t, gpus=n)
        counted = sum(d.input_tokens + d.output_tokens for d in obs.deltas.values())
        assert counted >= 0
        agent += counted
        unseen = sum(s.pending for s in truth.series.values())
        assert agent <= truth.made, "the agent counted tokens that were never made"
        assert truth.made - agent <= truth.allowed_loss + unseen, (
            "lost tokens outside a restart or glitch interval"
        )
        assert not obs.restarted or restarted_since_scrape, "restart inferred from jitter"
        if obs.observed:
            restarted_since_scrape = False
