"""What a target forward costs by tokens scored, and tree sizes chosen for tokens per second rather than per call.

A tree of n drafted nodes whose path probabilities (under the draft, q) are g_1 >= g_2 >= ... is expected to add
1 + sum_i g_i tokens per target call (the bonus token plus every node on the accepted path), and a step costs the
drafting time D plus the target's forward over n + 1 tokens T(n + 1).  The size worth scoring is

    n* = argmax_n (1 + s * sum_{i <= n} g_i) / (D + T(n + 1))

where s scales the draft's path probabilities to what the target really accepts (`AcceptanceFit`, learnt during a
generation: drafts are rarely calibrated, n-gram drafts are nearly point masses).  T is a `CostTable`: measured once
per model, device, dtype, thread count and weight packing (specvlm/cost_timing.py), then only a prior that the
engine's own timed forwards correct as it runs (`CostLearner`), so a table measured on a busy machine does not stay
wrong.  This module is pure arithmetic: no model, no clock, no files.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostTable:
    """ms of one target forward by tokens scored: (tokens, ms) points, ascending in tokens."""

    points: tuple[tuple[int, float], ...]

    def __post_init__(self) -> None:
        if not self.points or any(n < 1 or not ms > 0 for n, ms in self.points):
            raise ValueError(f"a cost table needs (tokens >= 1, ms > 0) points, got {self.points}")
        if [n for n, _ in self.points] != sorted({n for n, _ in self.points}):
            raise ValueError(f"cost table sizes must be distinct and ascending, got {self.points}")

    def ms(self, tokens: int) -> float:
        """Linear between measured sizes; flat below the first; beyond the last, the last segment's slope."""
        pts = self.points
        if tokens <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        for (n0, m0), (n1, m1) in itertools.pairwise(pts):
            if tokens <= n1:
                return m0 + (m1 - m0) * (tokens - n0) / (n1 - n0)
        (n0, m0), (n1, m1) = pts[-2], pts[-1]
        return m1 + max(0.0, (m1 - m0) / (n1 - n0)) * (tokens - n1)

    def as_dict(self) -> dict[str, float]:
        return {str(n): ms for n, ms in self.points}

    @classmethod
    def from_dict(cls, obj: dict[str, float]) -> CostTable:
        return cls(tuple(sorted((int(k), float(v)) for k, v in obj.items())))


@dataclass(frozen=True)
class SpeedModel:
    """The step's hand-off to cost-aware builders: the forward costs and the calibration of draft probabilities."""

    costs: CostTable
    gain_scale: float = 1.0  # realised accepted tokens per unit of predicted path probability

    def rate(self, gains: Sequence[float], count: int, draft_ms: float) -> float:
        """Predicted tokens per ms when scoring the `count` best nodes (gains sorted descending)."""
        return (1.0 + self.gain_scale * sum(gains[:count])) / (draft_ms + self.costs.ms(count + 1))

    def best_count(self, gains: Sequence[float], draft_ms: float) -> int:
        """How many of the nodes (path probabilities `gains`, sorted descending) to score: the most tokens per ms.
        0 means the root alone.  Ties go to the smaller tree."""
        best, best_rate, total = 0, 1.0 / (draft_ms + self.costs.ms(1)), 0.0
        for n, g in enumerate(gains, start=1):
            total += g
            rate = (1.0 + self.gain_scale * total) / (draft_ms + self.costs.ms(n + 1))
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = n, rate
        return best

    def worth_drafting(
        self, gains: Sequence[float], draft_ms: float, level_ms: float, more_gain: float, more_nodes: int
    ) -> bool:
        """Whether one more draft call could pay: at best it adds `more_gain` path probability over `more_nodes`
        nodes for `level_ms` more drafting; compare that best case with the best tree available now."""
        n = self.best_count(gains, draft_ms)
        now = self.rate(gains, n, draft_ms)
        best_case = (1.0 + self.gain_scale * (sum(gains[:n]) + more_gain)) / (
            draft_ms + level_ms + self.costs.ms(n + more_nodes + 1)
        )
        return best_case > now


@dataclass
class AcceptanceFit:
    """Running ratio of accepted draft tokens to predicted ones (sum of kept path probabilities), per generation.

    Starts from `prior` with the weight of `prior_tokens` predicted tokens, so the first steps trust the draft."""

    prior: float = 1.0
    prior_tokens: float = 4.0
    predicted: float = 0.0
    accepted: float = 0.0

    def update(self, predicted: float, accepted: int) -> None:
        self.predicted += predicted
        self.accepted += accepted

    @property
    def scale(self) -> float:
        value = (self.accepted + self.prior * self.prior_tokens) / (self.predicted + self.prior_tokens)
        return min(max(value, 0.02), 2.0)


# -- a plausible shape ----------------------------------------------------------------------------------------------
def plausible(table: CostTable) -> CostTable:
    """The table made monotone (a bigger tree never costs less) and convex (each extra token costs at least what the
    one before it did): the lower convex hull of its running maximum.  A real forward-cost curve is flat while the
    device has idle lanes and then climbs; a jump followed by a flat stretch (timings taken while load came and
    went) is not one, and the hull replaces it by the straight line under it."""
    points, top = [], 0.0
    for n, ms in table.points:
        top = max(top, ms)
        points.append((n, top))
    hull: list[tuple[int, float]] = []
    for p in points:  # Andrew's monotone chain, lower half: drop a middle point that lies above the chord
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    line = CostTable(tuple(hull))
    return CostTable(tuple((n, round(line.ms(n), 3)) for n, _ in points))


def _cross(o: tuple[int, float], a: tuple[int, float], b: tuple[int, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def excess_over_shape(table: CostTable) -> float:
    """How far the table's worst point lies above its plausible shape, as a share (0 = already plausible): the
    measure of a timing that load distorted."""
    shape = plausible(table)
    return max(ms / shape.ms(n) - 1.0 for n, ms in table.points)


def corrected(prior: CostTable, ratios: Mapping[int, float]) -> CostTable:
    """`prior` (made plausible) times the observed/prior ratio at each size: `ratios` holds it at the observed sizes,
    interpolated in log size between them and held beyond them.  Past the largest
    observed size each extra token costs at least what it did between the two largest observed sizes (the curve
    stays convex: never a flat step after a climb).  The result is made plausible again."""
    base = plausible(prior)
    if not ratios:
        return base
    seen = sorted(ratios)

    def ratio(n: int) -> float:
        if n <= seen[0]:
            return ratios[seen[0]]
        if n >= seen[-1]:
            return ratios[seen[-1]]
        a, b = next((a, b) for a, b in itertools.pairwise(seen) if a <= n <= b)
        w = (math.log(n) - math.log(a)) / (math.log(b) - math.log(a))
        return ratios[a] * (1.0 - w) + ratios[b] * w

    values = {n: base.ms(n) * ratio(n) for n in sorted({n for n, _ in base.points} | set(seen))}
    if len(seen) >= 2:
        a, b = seen[-2], seen[-1]
        slope = max(0.0, (values[b] - values[a]) / (b - a))
        values = {n: max(v, values[b] + slope * (n - b)) if n > b else v for n, v in values.items()}
    return plausible(CostTable(tuple((n, max(v, 1e-3)) for n, v in values.items())))


# -- learning from the engine's own forwards ------------------------------------------------------------------------
#: the sizes a cost table is timed at, and those observations are pooled at (the nearest in log size)
GRID = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
#: observations kept per size (the most recent), and the quantile of them that counts (forwards are only ever slowed
#: by other work, so a low quantile is the device's own cost; a quantile rather than the minimum follows a device that
#: really became slower)
WINDOW = 24
QUANTILE = 0.25
#: below this many observations of a size, the prior still counts as one of them (one slow outlier cannot make a
#: size look dear before it has been seen again)
TRUSTED = 4


@dataclass
class CostLearner:
    """A forward-cost table that learns from timed forwards: `observe(tokens, ms)` after each, `table()` before
    each step.  The prior is the measured (cached) table; every observation is a ratio to it at its size, kept per
    size of `GRID` and of the prior (the nearest in log size); the table is `corrected(prior, ratios)`."""

    prior: CostTable
    window: int = WINDOW
    seen: dict[int, deque[float]] = field(default_factory=dict)  # grid size -> recent observed/prior ratios
    _table: CostTable | None = None

    def __post_init__(self) -> None:
        self._base = plausible(self.prior)
        self._grid = sorted({n for n, _ in self.prior.points} | set(GRID))

    def grid_size(self, tokens: int) -> int:
        """The pooling size for a forward of `tokens` tokens (beyond the grid: its own size)."""
        if tokens > self._grid[-1]:
            return tokens
        return min(self._grid, key=lambda n: (abs(math.log(n) - math.log(max(tokens, 1))), n))

    def observe(self, tokens: int, ms: float) -> None:
        if tokens < 1 or not ms > 0 or not math.isfinite(ms):
            return
        ratios = self.seen.setdefault(self.grid_size(tokens), deque(maxlen=self.window))
        ratios.append(ms / self._base.ms(tokens))
        self._table = None

    def ratios(self) -> dict[int, float]:
        """The ratio that counts at each observed size: a low quantile of the recent observations (the prior's 1.0
        among them until the size has been seen `TRUSTED` times)."""
        out = {}
        for n, obs in self.seen.items():
            values = list(obs) if len(obs) >= TRUSTED else [*obs, 1.0]
            out[n] = min(values) if len(values) < TRUSTED else low_quantile(values, QUANTILE)
        return out

    def table(self) -> CostTable:
        if self._table is None:
            self._table = corrected(self.prior, self.ratios())
        return self._table

    @property
    def observations(self) -> int:
        return sum(len(v) for v in self.seen.values())


def low_quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile of `values` (linear between order statistics)."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    return statistics.quantiles(data, n=100, method="inclusive")[max(0, min(98, round(100 * q) - 1))]
