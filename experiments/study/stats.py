"""Seed statistics of the micro-batch study: a setting's mean ± std, and when two settings differ.

A setting (normalization, images per device) has one final test accuracy per seed. Two settings count as
different when their means are more than ``SIGNIFICANT_SE`` standard errors of the difference apart,
``|mean_a - mean_b| > k * sqrt(std_a² / n_a + std_b² / n_b)``, a Welch-style test without the t quantile
(three seeds give too few degrees of freedom for one to mean much).
"""

from __future__ import annotations

import collections
import math
import statistics
import typing

# Two means differ when they are further apart than this many standard errors of their difference.
SIGNIFICANT_SE = 2.0


class Stat(typing.NamedTuple):
    """A setting's test accuracy over seeds, in percent."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        pct = [100 * v for v in values]
        return cls(statistics.fmean(pct), statistics.stdev(pct) if len(pct) > 1 else 0.0, len(pct))

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}%"


def summarize(cells: list[dict]) -> dict[tuple[str, int], Stat]:
    """``{(normalization, images per device): Stat over that setting's seeds}``."""
    accs = collections.defaultdict(list)
    for c in cells:
        accs[(c["normalization"], c["per_device_batch"])].append(c["accuracy"])
    return {k: Stat.of(v) for k, v in accs.items()}


def compare(a: Stat, b: Stat) -> tuple[float, float, str]:
    """``(a - b, standard error of the difference, 'higher' | 'lower' | 'level')`` in points."""
    diff = a.mean - b.mean
    se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
    if a.n < 2 or b.n < 2:
        return diff, se, "higher" if diff > 0 else "lower"  # no spread to judge by: the sign only
    if abs(diff) <= SIGNIFICANT_SE * se:
        return diff, se, "level"
    return diff, se, "higher" if diff > 0 else "lower"
