"""The regression's written-out solve is textbook Gauss-Jordan least squares, to the last bit.

``anatomy._solve`` inverts each active block of ``X'WX`` by Gauss-Jordan elimination with
partial pivoting written out for one, two and three columns (it runs 7 times per server per
cycle). The reference below is the loop form it replaced; on any matrix (ill-conditioned,
singular, signed zeros, subnormals, infinities, NaN) both must give the same floats, the same
refusals and the same errors.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.accounting.anatomy import _ACTIVE_SETS, _solve

Solved = tuple[float, list[float], list[float]] | None


def _inverse(m: list[list[float]]) -> list[list[float]] | None:
    """Gauss-Jordan on ``[m | I]``, the first row of largest magnitude as pivot."""
    n = len(m)
    scale = max((abs(m[i][i]) for i in range(n)), default=0.0)
    if scale <= 0:
        return None
    a = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        pivot, largest = col, abs(a[col][col])
        for r in range(col + 1, n):
            if abs(a[r][col]) > largest:
                pivot, largest = r, abs(a[r][col])
        if abs(a[pivot][col]) <= 1e-12 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0.0:
                f = a[r][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[n:] for row in a]


def _reference(
    xx: list[list[float]], xy: list[float], yy: float, active: tuple[int, ...]
) -> Solved:
    n = len(active)
    block = [[xx[i][j] for j in active] for i in active]
    inverse = _inverse(block)
    if inverse is None:
        return None
    theta = [sum(inverse[i][j] * xy[active[j]] for j in range(n)) for i in range(n)]
    if any(t < 0 for t in theta):
        return None
    sse = (
        yy
        - 2 * sum(t * xy[k] for t, k in zip(theta, active, strict=True))
        + sum(theta[i] * block[i][j] * theta[j] for i in range(n) for j in range(n))
    )
    return sse, theta, [inverse[i][i] for i in range(n)]


def _outcome(
    solve: object, xx: list[list[float]], xy: list[float], yy: float, active: tuple[int, ...]
) -> str:
    """The result as ``repr`` (tells -0.0 from 0.0 and shows NaN), or the error's class."""
    assert callable(solve)
    try:
        return repr(solve(xx, xy, yy, active))
    except ArithmeticError as exc:  # a zero pivot behind a NaN scale
        return type(exc).__name__


ODD = st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 1e-12, 1e12, 1e-300, 5e-324, 1e300, math.inf, -math.inf, math.nan]
)
# Small integers tie for the pivot (the first of equal magnitudes must win).
ENTRY = (
    ODD
    | st.integers(-2, 2).map(float)
    | st.floats(-1e6, 1e6)
    | st.floats(allow_nan=True, allow_infinity=True)
)
ACTIVE = st.sampled_from([*_ACTIVE_SETS, (2, 1, 0), (1, 0, 2), (2, 0), (1, 0)])


@st.composite
def systems(draw: st.DrawFn) -> tuple[list[list[float]], list[float], float]:
    """``X'WX``, ``X'Wy``, ``y'Wy``: a Gram matrix of a few rows (as the fit builds), or any."""
    if draw(st.booleans()):
        row = st.lists(st.floats(0, 1e5) | ODD, min_size=4, max_size=4)
        rows = draw(st.lists(row, min_size=1, max_size=6))
        xx = [[sum(r[a] * r[b] for r in rows) for b in range(3)] for a in range(3)]
        xy = [sum(r[a] * r[3] for r in rows) for a in range(3)]
        return xx, xy, sum(r[3] * r[3] for r in rows)
    xx = [[draw(ENTRY) for _ in range(3)] for _ in range(3)]
    if draw(st.booleans()):  # collinear rows: a singular block
        xx[2] = [v * draw(st.sampled_from([1.0, -2.0, 0.5])) for v in xx[0]]
    return xx, [draw(ENTRY) for _ in range(3)], draw(ENTRY)


@settings(max_examples=1000, deadline=None)
@given(systems(), ACTIVE)
def test_written_out_solve_is_the_loop_form_bit_for_bit(
    system: tuple[list[list[float]], list[float], float], active: tuple[int, ...]
) -> None:
    xx, xy, yy = system
    assert _outcome(_solve, xx, xy, yy, active) == _outcome(_reference, xx, xy, yy, active)


def test_well_posed_system_is_solved_and_singular_one_refused() -> None:
    # y = 2*x0 + 3*x1 + 5*x2 exactly over four independent rows: sse ~ 0, theta found.
    rows = [(1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 1.0), (2.0, 1.0, 1.0)]
    ys = [2 * a + 3 * b + 5 * c for a, b, c in rows]
    xx = [[sum(r[i] * r[j] for r in rows) for j in range(3)] for i in range(3)]
    xy = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(3)]
    yy = sum(y * y for y in ys)
    solved = _solve(xx, xy, yy, (0, 1, 2))
    assert solved is not None
    sse, theta, diagonal = solved
    assert all(math.isclose(t, e, rel_tol=1e-9) for t, e in zip(theta, [2, 3, 5], strict=True))
    assert abs(sse) < 1e-9 and all(d > 0 for d in diagonal)
    # Column 1 equals column 0: no unique solution on (0, 1), refused.
    same = [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert _solve(same, [1.0, 1.0, 1.0], 1.0, (0, 1)) is None
