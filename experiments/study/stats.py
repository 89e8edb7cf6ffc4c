r"""Seed statistics of the micro-batch study: a setting's mean ± std, and when two settings differ.

A setting (normalization, images per device) has one final test accuracy per seed. Within a seed every cell
starts from the same parameters and sees the same examples in the same order, so two settings are compared
**paired**: over the seeds both ran, the per-seed differences :math:`d_s = a_s - b_s` give

.. math::

   \bar d = \frac{1}{n}\sum_s d_s, \qquad \operatorname{se} = \frac{\operatorname{std}(d)}{\sqrt n},

which cancels what a seed does to both (its initialization, its data order) and so resolves differences that
two unpaired means of the same runs cannot. The settings differ when :math:`|\bar d| > k\,\operatorname{se}`
with ``k = SIGNIFICANT_SE`` (no t quantile: a handful of seeds gives too few degrees of freedom for one to
mean much). With fewer than two shared seeds the comparison is unpaired,
``se = sqrt(std_a² / n_a + std_b² / n_b)``; and when one side then has a single seed there is no spread to
judge by, so only the sign is reported (``sign_only``).
"""

from __future__ import annotations

import collections
import math
import statistics
import typing

# Two settings differ when their difference is more than this many standard errors from zero.
SIGNIFICANT_SE = 2.0


class Stat(typing.NamedTuple):
    """A setting's test accuracy over seeds, in percent, and each seed's."""

    mean: float
    std: float
    n: int
    by_seed: dict[int, float]

    @classmethod
    def of(cls, by_seed: dict[int, float]) -> Stat:
        pct = {seed: 100 * v for seed, v in by_seed.items()}
        values = list(pct.values())
        return cls(
            statistics.fmean(values),
            statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values),
            pct,
        )

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}%"


class Difference(typing.NamedTuple):
    """``a - b`` in points, its standard error, the verdict, and the seeds paired (0: unpaired)."""

    diff: float
    se: float
    verdict: str  # 'higher' | 'lower' | 'level'
    paired: int
    sign_only: bool = False  # one seed on a side and none to pair: no spread to judge by


def summarize(cells: list[dict], field: str = "accuracy") -> dict[tuple[str, int], Stat]:
    """``{(normalization, images per device): Stat over that setting's seeds}`` of ``field`` (cells lacking
    it are left out: ``accuracy_population`` exists for BN cells only)."""
    by_setting: dict[tuple[str, int], dict[int, float]] = collections.defaultdict(dict)
    for c in cells:
        if c.get(field) is not None:
            by_setting[(c["normalization"], c["per_device_batch"])][c["seed"]] = c[field]
    return {k: Stat.of(v) for k, v in by_setting.items()}


def compare(a: Stat, b: Stat) -> Difference:
    """``a`` against ``b``: paired over their shared seeds when there are two or more (module docstring)."""
    shared = sorted(set(a.by_seed) & set(b.by_seed))
    if len(shared) >= 2:
        diffs = [a.by_seed[s] - b.by_seed[s] for s in shared]
        diff, se, paired = (
            statistics.fmean(diffs),
            statistics.stdev(diffs) / math.sqrt(len(diffs)),
            len(diffs),
        )
    else:
        diff, se, paired = a.mean - b.mean, math.sqrt(a.std**2 / a.n + b.std**2 / b.n), 0
        if a.n < 2 or b.n < 2:  # no spread to judge by: the sign only
            return Difference(diff, se, "higher" if diff > 0 else "lower", paired, sign_only=True)
    if abs(diff) <= SIGNIFICANT_SE * se:
        return Difference(diff, se, "level", paired)
    return Difference(diff, se, "higher" if diff > 0 else "lower", paired)
