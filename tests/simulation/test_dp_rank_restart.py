"""The dp-rank-restart scenario in virtual time: what a per-series scraper may count is the truth.

A reference scraper written here (per series: a value below its last is a reset and counts
from 0; a series missing from a scrape keeps its base) must count exactly the truth's tokens
minus the tokens the truth reports lost (made between the last scrape and the rank's restart).
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent.clock import ManualClock
from agent.simulation.world import DemoWorld, truth_delta

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SERIES = {"input": "vllm:prompt_tokens_total", "output": "vllm:generation_tokens_total"}


class PerSeriesCounter:
    """Counts increases per series, as the agent's accounting must."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], float] = {}
        self.counted = {"input": 0.0, "output": 0.0}

    def observe(self, text: str) -> set[str]:
        """Take one scrape; returns the `engine` values present."""
        seen: set[str] = set()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                for kind, name in SERIES.items():
                    if s.name != name:
                        continue
                    key = (kind, s.labels["engine"])
                    seen.add(s.labels["engine"])
                    before = self.last.get(key)
                    if before is not None:
                        self.counted[kind] += s.value - before if s.value >= before else s.value
                    self.last[key] = s.value
        return seen


def test_per_series_counting_equals_truth_minus_the_documented_loss() -> None:
    clock = ManualClock()
    world = DemoWorld("dp-rank-restart", 5, clock, fault_at_seconds=2.0, recover_after_seconds=2.0)
    world.start()
    counter = PerSeriesCounter()
    present: list[set[str]] = []
    try:
        url = next(s.url for s in world.servers() if s.name == "vllm")
        with httpx.Client(timeout=5) as client:
            counter.observe(client.get(url).text)  # baseline, before the workload
            base = world.truth()
            world.begin(clock.monotonic())
            for _ in range(14):  # a scrape every 0.5 s for 7 s
                for _ in range(10):
                    clock.advance(0.05)
                    world.step(clock.monotonic())
                present.append(counter.observe(client.get(url).text))
            truth = truth_delta(world.truth(), base)
    finally:
        world.stop()
    kinds = [f.event.kind for f in world.fired()]
    assert kinds == ["restart_rank", "drop_rank_series"]
    assert present.count({"1"}) == 1  # rank 0 missed exactly one scrape
    assert present.count({"0", "1"}) == len(present) - 1
    m = truth["servers"]["vllm"]["models"][MODEL]
    assert m["lost_input_tokens"] > 0 and m["lost_output_tokens"] > 0
    assert counter.counted["input"] == m["input_tokens"] - m["lost_input_tokens"]
    assert counter.counted["output"] == m["output_tokens"] - m["lost_output_tokens"]
    # Only rank 1's tokens since the last scrape are lost: well under one scrape interval.
    assert m["lost_output_tokens"] < m["output_tokens"] * 0.5 / 7


def test_a_sum_over_ranks_would_miscount_this_scenario() -> None:
    # Why the agent must count per series: summing the ranks first turns the rank restart and
    # the drop-out into resets of the sum.
    clock = ManualClock()
    world = DemoWorld("dp-rank-restart", 5, clock, fault_at_seconds=2.0, recover_after_seconds=2.0)
    world.start()
    last: float | None = None
    counted = 0.0
    try:
        url = next(s.url for s in world.servers() if s.name == "vllm")
        with httpx.Client(timeout=5) as client:
            world.begin(clock.monotonic())
            for _ in range(14):
                for _ in range(10):
                    clock.advance(0.05)
                    world.step(clock.monotonic())
                text = client.get(url).text
                total = sum(
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == SERIES["output"]
                )
                if last is not None:
                    counted += total - last if total >= last else total
                last = total
            m = world.truth()["servers"]["vllm"]["models"][MODEL]
    finally:
        world.stop()
    assert counted > m["output_tokens"]  # the drop-out's return is counted twice
