"""The micro-batch study's figure: accuracy vs images per device, beside the training curves.

``plot(cells, path)`` takes the cells of ``report.collect`` and draws three panels: test accuracy
(mean ± std over seeds) against images per device on a log-2 axis, one line per normalization, with BN at the
largest b as a horizontal band (the reference); then the test accuracy and the training loss during training,
means over seeds, for every normalization at the smallest b and for the reference.
"""

from __future__ import annotations

import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from experiments.study.grid import BATCH_FREE, NORMALIZATIONS  # noqa: E402
from experiments.study.stats import summarize  # noqa: E402

# Colour per normalization family; dashed without WS, solid with it.
STYLE = {
    "BN": ("tab:blue", "--", "o"),
    "BN+WS": ("tab:blue", "-", "o"),
    "BCN": ("tab:red", "--", "s"),
    "BCN+WS": ("tab:red", "-", "s"),
    "GN": ("tab:green", "--", "^"),
    "GN+WS": ("tab:green", "-", "^"),
    "none": ("tab:gray", ":", "x"),
}


def _mean_curve(runs: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    """Mean over seeds at the steps every seed logged."""
    steps = sorted(set.intersection(*(set(s for s, _ in r) for r in runs)))
    values = [statistics.fmean(dict(r)[s] for r in runs) for s in steps]
    return steps, values


def plot(cells: list[dict], path: pathlib.Path) -> None:
    """Accuracy vs images per device (log 2), BN at the largest b as a band; curves at the smallest b."""
    table = summarize(cells)
    batches = sorted({k[1] for k in table})
    ref_b, micro_b = max(batches), min(batches)
    norms = [n for n in NORMALIZATIONS if any(k[0] == n for k in table)]
    first = cells[0]
    fig, (ax, ax_acc, ax_loss) = plt.subplots(
        1, 3, figsize=(16, 5.2), dpi=130, gridspec_kw={"width_ratios": [1.35, 1, 1]}
    )
    if ("BN", ref_b) in table:
        ref = table[("BN", ref_b)]
        ax.axhspan(
            ref.mean - ref.std,
            ref.mean + ref.std,
            color="black",
            alpha=0.1,
            lw=0,
            label=f"BN at {ref_b}/device, mean ± std: the reference",
        )
    for i, n in enumerate(norms):
        color, line, marker = STYLE[n]
        bs = [b for b in batches if (n, b) in table]
        shift = 2 ** (
            0.05 * (i - len(norms) / 2)
        )  # side by side, so that error bars do not overlap
        ax.errorbar(
            [b * shift for b in bs],
            [table[(n, b)].mean for b in bs],
            yerr=[table[(n, b)].std for b in bs],
            color=color,
            ls=line,
            marker=marker,
            capsize=3,
            label=n + (" (no batch statistics)" if n in BATCH_FREE else ""),
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, labels=[str(b) for b in batches])
    ax.set_xlabel("images per device (each device normalizes with its own batch statistics)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_title(
        f"{first['dataset']}, {first['model']}: every cell {first['steps']:,} steps of "
        f"{first['global_batch']} images,\nthe same examples; only their split over devices differs",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="dashed: without WS", title_fontsize=8)

    # Right-hand panels: every normalization at the smallest b, and BN at the largest as the reference.
    curves = [(n, micro_b, *STYLE[n][:2], 1.3, n) for n in norms]
    curves.append(("BN", ref_b, "black", ":", 2.2, f"BN at {ref_b}/device (reference)"))
    for n, b, color, line, width, label in curves:
        runs = [c for c in cells if c["normalization"] == n and c["per_device_batch"] == b]
        if not runs:
            continue
        steps, acc = _mean_curve([r["test_accuracy"] for r in runs])
        ax_acc.plot(
            steps, [100 * a for a in acc], color=color, ls=line, lw=width, marker=".", label=label
        )
        steps, loss = _mean_curve([r["train_loss"] for r in runs])
        ax_loss.plot(steps, loss, color=color, ls=line, lw=width, label=label)
    ax_acc.set_title(f"test accuracy during training, {micro_b} image(s)/device", fontsize=10)
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("test accuracy (%), mean over seeds")
    ax_loss.set_title(f"training loss, {micro_b} image(s)/device", fontsize=10)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss (batch statistics in use), mean over seeds")
    ax_loss.set_yscale("log")
    for a in (ax_acc, ax_loss):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
