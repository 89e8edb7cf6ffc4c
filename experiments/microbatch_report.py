"""Reads a micro-batch sweep's runs and writes the table, the accuracy-vs-batch plot and training curves."""

from __future__ import annotations

import collections
import json
import pathlib
import statistics

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from experiments.metrics import read_metrics  # noqa: E402
from experiments.microbatch import NORMALIZATIONS  # noqa: E402

NAME_BY_SETTING = {setting: name for name, setting in NORMALIZATIONS.items()}


def collect(sweep_dir: str | pathlib.Path) -> list[dict]:
    """One record per finished cell: normalization, per-device batch, seed, accuracy, curves, provenance."""
    cells = []
    for run in sorted(pathlib.Path(sweep_dir).iterdir()):
        info_path, config_path = run / "run_info.json", run / "config.json"
        if not info_path.exists() or not config_path.exists():
            continue
        info, config = json.loads(info_path.read_text()), json.loads(config_path.read_text())
        if "final_test_accuracy" not in info:
            continue  # unfinished
        records = read_metrics(run)
        # The paper's "devices": real devices × vmapped replicas on each.
        replicas = info["device_count"] * config.get("replicas_per_device", 1)
        cells.append(
            {
                "normalization": NAME_BY_SETTING[(config["conv"], config["norm"])],
                "per_device_batch": config["global_batch_size"] // replicas,
                "replicas": replicas,
                "seed": config["seed"],
                "accuracy": info["final_test_accuracy"],
                "steps": info["final_step"],
                "examples": info["final_step"] * config["global_batch_size"],
                "wall_time_s": info["train_wall_time_s"],
                "commit": info["commit"],
                "model": config["model"],
                "dataset": config["dataset"],
                "train_curve": [
                    (r["step"] * config["global_batch_size"], r["loss"])
                    for r in records
                    if r["split"] == "train"
                ],
            }
        )
    return cells


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(cells: list[dict]) -> dict[tuple[str, int], list[float]]:
    table = collections.defaultdict(list)
    for c in cells:
        table[(c["normalization"], c["per_device_batch"])].append(c["accuracy"])
    return table


def markdown_table(cells: list[dict]) -> str:
    table = summarize(cells)
    norms = [n for n in NORMALIZATIONS if any(k[0] == n for k in table)]
    batches = sorted({k[1] for k in table})
    first = cells[0]
    lines = [
        f"Test accuracy (%), mean ± std over seeds (n per cell in brackets); {first['dataset']}, model "
        f"{first['model']}, {first['replicas']} devices (replicas) with their own batch statistics, "
        f"{first['examples']:,} training examples per cell, commit(s) {', '.join(sorted({c['commit'][:12] for c in cells}))}.",
        "",
        "| normalization | " + " | ".join(f"{b}/device" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for n in norms:
        row = []
        for b in batches:
            accs = table.get((n, b), [])
            if accs:
                mean, std = _mean_std(accs)
                row.append(f"{100 * mean:.2f} ± {100 * std:.2f} ({len(accs)})")
            else:
                row.append("—")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot_accuracy(cells: list[dict], path: pathlib.Path) -> None:
    table = summarize(cells)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
    for n in NORMALIZATIONS:
        batches = sorted(b for (m, b) in table if m == n)
        if not batches:
            continue
        stats = [_mean_std(table[(n, b)]) for b in batches]
        ax.errorbar(
            batches,
            [100 * m for m, _ in stats],
            yerr=[100 * s for _, s in stats],
            marker="o",
            capsize=3,
            label=n,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(
        sorted({b for _, b in table}), labels=[str(b) for b in sorted({b for _, b in table})]
    )
    ax.set_xlabel("images per device (batch statistics per device)")
    ax.set_ylabel("test accuracy (%)")
    first = cells[0]
    ax.set_title(
        f"Micro-batch training: {first['dataset']}, {first['model']}, {first['replicas']} devices\n"
        f"{first['examples']:,} training examples per cell (fewer steps at larger batches)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(title="normalization", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(cells: list[dict], path: pathlib.Path) -> None:
    batches = sorted({c["per_device_batch"] for c in cells})
    fig, axes = plt.subplots(
        1, len(batches), figsize=(3.2 * len(batches), 3.2), dpi=130, sharey=True, squeeze=False
    )
    for ax, b in zip(axes[0], batches, strict=True):
        for i, n in enumerate(NORMALIZATIONS):
            runs = [
                c
                for c in cells
                if c["per_device_batch"] == b
                and c["normalization"] == n
                and c["seed"] == min(cc["seed"] for cc in cells)
            ]
            for c in runs:
                xs, ys = zip(*c["train_curve"], strict=True) if c["train_curve"] else ((), ())
                ax.plot([x / 1000 for x in xs], ys, color=f"C{i}", label=n, lw=1)
        ax.set_title(f"{b} image(s)/device")
        ax.set_xlabel("examples seen (thousands)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    axes[0][0].set_ylim(0, 2.5)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(sweep_dir: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes ``results.md``, ``accuracy_vs_batch.png``, ``training_curves.png`` and ``cells.json``."""
    cells = collect(sweep_dir)
    if not cells:
        raise ValueError(f"no finished cells under {sweep_dir}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown_table(cells))
    plot_accuracy(cells, out / "accuracy_vs_batch.png")
    plot_curves(cells, out / "training_curves.png")
    (out / "cells.json").write_text(
        json.dumps([{k: v for k, v in c.items() if k != "train_curve"} for c in cells], indent=1)
    )
    return out
