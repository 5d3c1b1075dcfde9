"""``tokenergy top``: a live terminal view of running agents.

:mod:`agent.top.view` is pure (rates, rows, sorting, sparklines); :mod:`agent.top.command` is
the edge (HTTP, clock, terminal).
"""
