"""The micro-batch study's statistics and claim verdicts, on made-up cells with known answers."""

import numpy as np
import pytest

from experiments.study import report
from experiments.study.stats import SIGNIFICANT_SE, Stat, compare, summarize


def _cells(accuracies: dict[tuple[str, int], list[float]], field: str = "accuracy") -> list[dict]:
    return [
        {"normalization": n, "per_device_batch": b, "seed": s, field: a}
        for (n, b), values in accuracies.items()
        for s, a in enumerate(values)
    ]


def _stat(values: list[float], seeds=None) -> Stat:
    return Stat.of(dict(zip(seeds or range(len(values)), values, strict=True)))


def test_stat_is_the_mean_and_sample_std_in_percent():
    values = [0.9012, 0.8975, 0.9103]
    stat = _stat(values)
    assert stat.n == 3 and stat.by_seed == {0: 90.12, 1: 89.75, 2: 91.03}
    np.testing.assert_allclose(stat.mean, 100 * np.mean(values), rtol=1e-12)
    np.testing.assert_allclose(stat.std, 100 * np.std(values, ddof=1), rtol=1e-12)
    assert _stat([0.5]) == Stat(50.0, 0.0, 1, {0: 50.0})  # one seed: no spread


def test_summarize_groups_seeds_by_setting_and_skips_cells_without_the_field():
    cells = _cells({("BN", 1): [0.8, 0.9], ("BN", 32): [0.91]})
    cells[0]["accuracy_population"] = 0.85
    table = summarize(cells)
    assert set(table) == {("BN", 1), ("BN", 32)}
    assert table[("BN", 1)].n == 2 and table[("BN", 32)].n == 1
    assert summarize(cells, "accuracy_population") == {("BN", 1): Stat(85.0, 0.0, 1, {0: 85.0})}


def test_paired_comparison_is_the_mean_per_seed_difference_and_its_standard_error():
    """Seeds that move both settings alike: unpaired the means are level, paired a is clearly higher."""
    b = [0.880, 0.900, 0.920, 0.890, 0.910]
    a = [x + d for x, d in zip(b, [0.004, 0.006, 0.005, 0.004, 0.006], strict=True)]
    d = 100 * (np.array(a) - np.array(b))
    got = compare(_stat(a), _stat(b))
    assert got.paired == 5 and got.verdict == "higher"
    np.testing.assert_allclose(got.diff, d.mean(), rtol=1e-9)
    np.testing.assert_allclose(got.se, d.std(ddof=1) / np.sqrt(5), rtol=1e-9)
    unpaired = compare(_stat(a), _stat(b, seeds=[10, 11, 12, 13, 14]))  # no seed shared
    assert unpaired.paired == 0 and unpaired.verdict == "level"


def test_paired_over_the_shared_seeds_only():
    a, b = _stat([0.90, 0.91, 0.92]), _stat([0.80, 0.89, 0.90, 0.91], seeds=[9, 0, 1, 2])
    got = compare(a, b)
    assert (
        got.paired == 3 and got.verdict == "higher"
    )  # +1 point on each shared seed; seed 9 plays no part
    np.testing.assert_allclose([got.diff, got.se], [1.0, 0.0], atol=1e-9)


@pytest.mark.parametrize(
    "a, b, outcome",
    [
        (Stat(91.0, 0.1, 3, {}), Stat(90.0, 0.1, 3, {}), "higher"),
        (Stat(90.0, 0.1, 3, {}), Stat(91.0, 0.1, 3, {}), "lower"),
        (Stat(90.1, 0.5, 3, {}), Stat(90.0, 0.5, 3, {}), "level"),
        (Stat(90.1, 0.0, 1, {}), Stat(90.0, 0.5, 3, {}), "higher"),  # one seed: the sign alone
    ],
)
def test_unpaired_compare(a, b, outcome):
    got = compare(a, b)
    assert got.verdict == outcome and got.paired == 0
    np.testing.assert_allclose(got.diff, a.mean - b.mean)
    np.testing.assert_allclose(got.se, np.sqrt(a.std**2 / a.n + b.std**2 / b.n))


def test_compare_boundary_is_inclusive():
    # Exactly SIGNIFICANT_SE standard errors apart is still level.
    se = np.sqrt(2 * 0.3**2 / 3)
    got = compare(Stat(90.0 + SIGNIFICANT_SE * se, 0.3, 3, {}), Stat(90.0, 0.3, 3, {}))
    assert got.verdict == "level"


PAPER_LIKE = {
    ("BN", 1): [0.80, 0.81, 0.79],
    ("BN", 32): [0.91, 0.911, 0.909],
    ("BN+WS", 1): [0.88, 0.881, 0.879],
    ("BN+WS", 32): [0.92, 0.921, 0.919],
    ("GN", 1): [0.89, 0.891, 0.889],
    ("GN+WS", 32): [0.90, 0.901, 0.899],  # batch-free: compared at any b
    ("BCN+WS", 1): [0.915, 0.916, 0.914],
}


def test_claims_verdicts_follow_the_figures():
    text = report.claims(_cells(PAPER_LIKE))
    assert text[0].startswith("1. *BN degrades") and text[0].endswith("**holds**")
    assert "paired over 3 seeds" in text[0]
    assert text[1].startswith("2. *WS improves") and text[1].endswith("**holds**")
    assert "matches or beats BN at 32/device" in text[2]
    assert text[2].count("**holds**") == 2  # matches BN at 32, and beats GN+WS (run at 32 only)

    against = {**PAPER_LIKE, ("BN", 1): [0.91, 0.912, 0.908], ("BN+WS", 32): [0.90, 0.901, 0.899]}
    against[("BCN+WS", 1)] = [0.85, 0.851, 0.849]
    text = report.claims(_cells(against))
    assert text[0].endswith("**does not hold**")  # BN at 1 level with BN at 32
    assert text[1].endswith(
        "**holds in part** (1 of 3)"
    )  # WS helps GN only: BN is higher without it
    assert text[2].count("**does not hold**") == 2


@pytest.mark.parametrize(
    "population_at_1, why",
    [
        ([0.909, 0.912, 0.910], "a train/test mismatch"),  # level with the reference
        ([0.85, 0.86, 0.855], "partly a mismatch, partly damage"),
        ([0.80, 0.81, 0.79], "damage to training"),  # nothing recovered
    ],
)
def test_population_statistics_tell_a_mismatch_from_damage(population_at_1, why):
    cells = _cells(PAPER_LIKE)
    population = {("BN", 1): population_at_1, ("BN", 32): [0.91, 0.911, 0.909]}
    for c in cells:
        key = (c["normalization"], c["per_device_batch"])
        if key in population:
            c["accuracy_population"] = population[key][c["seed"]]
    lines = [t for t in report.claims(cells) if t.startswith("4.")]
    assert len(lines) == 1 and lines[0].startswith("4. *BN at 1/device, mismatch or damage?*")
    assert f"**{why}" in lines[0]
    table = report.markdown_table(cells)
    assert "| BN, population statistics | " in table


def test_no_loss_means_nothing_to_explain():
    level = {**PAPER_LIKE, ("BN", 1): [0.909, 0.912, 0.910]}
    cells = _cells(level)
    for c in cells:
        if c["normalization"] == "BN":
            c["accuracy_population"] = c["accuracy"]
    (line,) = [t for t in report.claims(cells) if t.startswith("4.")]
    assert "**no loss to explain" in line


def test_a_stand_in_cell_is_named():
    """GN+WS ran at 32/device only: the claims compare BCN+WS at 1/device with it, and say so."""
    text = report.claims(_cells(PAPER_LIKE))
    assert "(GN+WS as run at 32/device)" in text[2] and "(GN+WS as run at 32/device)" in text[1]


def test_one_seed_gives_the_sign_and_says_so():
    one_seed = {k: v[:1] for k, v in PAPER_LIKE.items()}
    text = report.claims(_cells(one_seed))
    assert "one seed: the sign only" in text[0] and "s.e." not in text[0]
    assert text[0].endswith("**holds** (by the sign alone: one seed)")


def test_claims_without_the_settings_say_not_measured():
    text = report.claims(_cells({("GN", 1): [0.9], ("GN", 32): [0.9]}))
    assert "not measured" in text[0] and "not measured" in text[1] and "not measured" in text[2]
