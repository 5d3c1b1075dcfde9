"""``tokenergy plan``: cost per million tokens, capacity and breakeven from measured ratios.

Pure parts: :mod:`agent.plan.scenario` (option strings), :mod:`agent.plan.model` (the
arithmetic), :mod:`agent.plan.exposition` (an agent's /metrics), :mod:`agent.plan.report`.
Edges: :mod:`agent.plan.sources` (HTTP), :mod:`agent.plan.command` (the command).
See agent/plan/README.md for a worked example.
"""
