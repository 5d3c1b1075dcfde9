"""How one GPU is split among servers, and one server among its models. Pure functions.

Every split returns fractions that are >= 0 and sum to 1 (to float rounding), or nothing, so
that the ledger can multiply a GPU's energy by them and keep conservation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from agent.accounting.counters import TokenDelta
from agent.readings import GpuReading


def even_split(names: Sequence[str]) -> dict[str, float]:
    """Equal fractions for every name.

    Args:
        names: Distinct names (servers or models).

    Returns:
        ``name -> 1/len(names)``; empty when ``names`` is empty.
    """
    if not names:
        return {}
    fraction = 1.0 / len(names)
    return {n: fraction for n in names}


def gpu_split(
    servers: Sequence[str],
    reading: GpuReading | None,
    up: bool,
    process_owners: Mapping[int, str] | None,
) -> dict[str, float]:
    """Split one GPU among the servers that use it.

    A GPU used by one server goes to it whole. A GPU shared by several servers is split by
    their share of its utilization where NVML reports per-process utilization for processes
    whose owner is known (``process_owners``), summed per server; a sharing server with no
    utilization sample gets 0 (NVML reports only processes active in its sampling window).
    Processes owned by no sharing server are ignored: the GPU belongs to the servers the
    mapping names. Without any usable sample (no owners, GPU down, stale or zero samples) the
    split is even.

    Args:
        servers: Distinct names of the servers that use the GPU, in a stable order.
        reading: The GPU's latest reading, or None.
        up: Whether that reading is fresh.
        process_owners: Host PID -> server name, when known.

    Returns:
        ``server -> fraction``; empty when no server uses the GPU.
    """
    if len(servers) <= 1:
        return even_split(servers)
    if not up or reading is None or not process_owners:
        return even_split(servers)
    sharing = set(servers)
    utilization = dict.fromkeys(servers, 0.0)
    for process in reading.processes:
        owner = process_owners.get(process.pid)
        ratio = process.utilization_ratio
        if owner in sharing and ratio is not None and math.isfinite(ratio) and ratio > 0:
            utilization[owner] += ratio
    total = sum(utilization.values())
    if total <= 0:
        return even_split(servers)
    return {s: u / total for s, u in utilization.items()}


def model_split(models: Sequence[str], deltas: Mapping[str, TokenDelta]) -> dict[str, float]:
    """Split one server's energy and cost among its models by tokens in the interval.

    The weight of a model is its input plus output tokens in the interval. Output-only weights
    would give a model that only reads (embeddings, prompt-heavy batch work) no energy at all,
    though its prefill ran on the GPU; input plus output leaves no model that worked at zero
    and is InferenceX's "total" throughput. Fixed input/output price ratios (OpenCost's 2.5x
    fallback) are workload-dependent guesses, so none is applied. Evenly when no model has
    tokens in the interval.

    Args:
        models: The models the server's energy goes to, in a stable order.
        deltas: Tokens per model in the interval (models absent count as zero).

    Returns:
        ``model -> fraction``; empty when ``models`` is empty.
    """
    weights = {}
    for m in models:
        d = deltas.get(m)
        weights[m] = d.input_tokens + d.output_tokens if d else 0.0
    total = sum(weights.values())
    if total <= 0 or not math.isfinite(total):
        return even_split(models)
    return {m: w / total for m, w in weights.items()}
