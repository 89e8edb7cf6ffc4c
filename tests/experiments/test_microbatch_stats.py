"""The micro-batch study's statistics and claim verdicts, on made-up cells with known answers."""

import numpy as np
import pytest

from experiments.study import report
from experiments.study.stats import SIGNIFICANT_SE, Stat, compare, summarize


def _cells(accuracies: dict[tuple[str, int], list[float]]) -> list[dict]:
    return [
        {"normalization": n, "per_device_batch": b, "seed": s, "accuracy": a}
        for (n, b), values in accuracies.items()
        for s, a in enumerate(values)
    ]


def test_stat_is_the_mean_and_sample_std_in_percent():
    values = [0.9012, 0.8975, 0.9103]
    stat = Stat.of(values)
    assert stat.n == 3
    np.testing.assert_allclose(stat.mean, 100 * np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(stat.std, 100 * np.std(values, ddof=1), rtol=1e-12)
    assert Stat.of([0.5]) == Stat(50.0, 0.0, 1)  # one seed: no spread


def test_summarize_groups_seeds_by_setting():
    table = summarize(_cells({("BN", 1): [0.8, 0.9], ("BN", 32): [0.91]}))
    assert set(table) == {("BN", 1), ("BN", 32)}
    assert table[("BN", 1)].n == 2 and table[("BN", 32)].n == 1


@pytest.mark.parametrize(
    "a, b, outcome",
    [
        (Stat(91.0, 0.1, 3), Stat(90.0, 0.1, 3), "higher"),
        (Stat(90.0, 0.1, 3), Stat(91.0, 0.1, 3), "lower"),
        (Stat(90.1, 0.5, 3), Stat(90.0, 0.5, 3), "level"),
        (Stat(90.1, 0.0, 1), Stat(90.0, 0.5, 3), "higher"),  # one seed: the sign alone
    ],
)
def test_compare(a, b, outcome):
    diff, se, got = compare(a, b)
    assert got == outcome
    np.testing.assert_allclose(diff, a.mean - b.mean)
    np.testing.assert_allclose(se, np.sqrt(a.std**2 / a.n + b.std**2 / b.n))


def test_compare_boundary_is_inclusive():
    # Exactly SIGNIFICANT_SE standard errors apart is still level.
    se = np.sqrt(2 * 0.3**2 / 3)
    _, _, got = compare(Stat(90.0 + SIGNIFICANT_SE * se, 0.3, 3), Stat(90.0, 0.3, 3))
    assert got == "level"


def test_claims_verdicts_follow_the_figures():
    paper_like = {
        ("BN", 1): [0.80, 0.81, 0.79],
        ("BN", 32): [0.91, 0.911, 0.909],
        ("BN+WS", 1): [0.88, 0.881, 0.879],
        ("BN+WS", 32): [0.92, 0.921, 0.919],
        ("GN", 1): [0.89, 0.891, 0.889],
        ("GN+WS", 1): [0.90, 0.901, 0.899],
        ("BCN+WS", 1): [0.915, 0.916, 0.914],
    }
    text = report.claims(_cells(paper_like))
    assert text[0].startswith("1. *BN degrades") and text[0].endswith("**holds**")
    assert text[1].startswith("2. *WS improves") and text[1].endswith("**holds**")
    assert "matches or beats BN at 32/device" in text[2]
    assert text[2].count("**holds**") == 2  # matches BN at 32, and beats GN+WS

    against = {**paper_like, ("BN", 1): [0.91, 0.912, 0.908], ("BN+WS", 32): [0.90, 0.901, 0.899]}
    against[("BCN+WS", 1)] = [0.85, 0.851, 0.849]
    text = report.claims(_cells(against))
    assert text[0].endswith("**does not hold**")  # BN at 1 level with BN at 32
    assert text[1].endswith(
        "**holds in part** (1 of 3)"
    )  # WS helps GN only: BN is higher without it
    assert text[2].count("**does not hold**") == 2


def test_claims_without_the_settings_say_not_measured():
    text = report.claims(_cells({("GN", 1): [0.9], ("GN", 32): [0.9]}))
    assert "not measured" in text[0] and "not measured" in text[1] and "not measured" in text[2]
