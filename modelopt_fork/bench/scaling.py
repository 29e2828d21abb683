"""Does export cost grow linearly with the number of experts?

Export time is ``fixed + experts * per_expert`` when the cost per expert is constant. The
plain ratio ``time / experts`` also divides the fixed part (attention, dense layers, the
file write) and so falls as the expert count grows even when the per-expert cost is
constant; the **marginal** cost between consecutive counts, ``dt / dexperts``, does not.
Both are reported; the verdict uses the marginal costs: each within ``tolerance`` of their
mean (a quadratic term makes them grow with the count).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Scaling:
    experts: list[int]
    seconds: list[float]
    per_expert_ms: list[float]  # seconds / experts
    marginal_ms: list[float | None]  # (t_i - t_{i-1}) / (e_i - e_{i-1}); None for the first point
    fit_fixed_s: float  # least squares t = fixed + experts * slope
    fit_slope_ms: float
    marginal_spread: float | None  # max |marginal / mean(marginal) - 1|
    within: bool | None  # marginal_spread <= tolerance (None with fewer than 3 points)
    tolerance: float
    trend: str  # "rising" (super-linear), "falling" (sub-linear) or "flat": last marginal vs first
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def analyse(points: dict[int, float], tolerance: float = 0.20) -> Scaling:
    """``points``: experts -> export seconds (e.g. the median of repeats)."""
    xs = sorted(points)
    ys = [float(points[x]) for x in xs]
    if len(xs) < 2:
        raise ValueError(f"need export times for at least two expert counts, got {xs}")
    per = [1000.0 * y / x for x, y in zip(xs, ys, strict=True)]
    marg: list[float | None] = [None] + [1000.0 * (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1]) for i in range(1, len(xs))]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    fixed = my - slope * mx
    m = [v for v in marg if v is not None]
    notes = []
    spread = within = None
    trend = "flat"
    if len(m) >= 2 and m[0] > 0:
        change = m[-1] / m[0] - 1.0
        trend = "rising" if change > tolerance else ("falling" if change < -tolerance else "flat")
    if len(m) >= 2:
        mean = sum(m) / len(m)
        if mean <= 0:
            notes.append("mean marginal cost is not positive: export time does not grow with experts (noise?)")
            spread = float("inf")
        else:
            spread = max(abs(v / mean - 1.0) for v in m)
        within = spread <= tolerance
    else:
        notes.append("one marginal cost only: nothing to compare it with (give at least three expert counts)")
    return Scaling(xs, ys, per, marg, fixed, 1000.0 * slope, spread, within, tolerance, trend, notes)
