"""Reads a micro-batch sweep and writes its table, the paper's claims checked against it, and the figure.

``write_report(sweep_dir, out_dir)`` writes ``results.md`` (design check, accuracy table, one computed
statement per claim of the paper, the paper's own figures beside ours), ``microbatch.png`` (accuracy vs
images per device beside the training curves) and ``cells.json``. Every figure in the text is computed from
the cells' ``run_info.json``/``config.json``/``metrics.jsonl``; only the paper's figures (``PAPER``) are
quoted, each with its source.
"""

from __future__ import annotations

import json
import pathlib

from experiments.study.grid import BATCH_FREE, NORMALIZATIONS
from experiments.study.plot import plot
from experiments.study.stats import SIGNIFICANT_SE, Difference, Stat, compare, summarize

POPULATION = "accuracy_population"  # BN cells: evaluated with re-estimated statistics (trainer/population.py)
SIGN_ONLY = " (by the sign alone: one seed)"  # after a verdict drawn from one seed

NAME_BY_SETTING = {setting: name for name, setting in NORMALIZATIONS.items()}

# The paper's figures and its authors' (quoted, with their sources; errors in %, lower is better, unless the
# metric says otherwise). The WS paper's own tables could not be retrieved here; these are the figures its
# authors published in their code READMEs, and the GN paper's batch-size figures that the WS paper builds on.
PAPER = [
    {
        "source": "Wu & He, *Group Normalization* (arXiv 1803.08494), Fig. 1: BN 23.6 → 34.7, GN 24.1",
        "setting": "ImageNet, ResNet-50, 8 GPUs, ~100 epochs of SGD",
        "metric": "top-1 error (%)",
        "BN large": ("23.6", "32/GPU"),
        "BN micro": ("34.7", "2/GPU"),
        "GN": ("24.1", "any"),
    },
    {
        "source": "Qiao et al., github.com/joe-siyuan-qiao/pytorch-classification README (commit e6355f8)",
        "setting": "ImageNet, ResNet-50, 90 epochs of SGD; GN+WS trained as 1 image/GPU",
        "metric": "top-1 error (%)",
        "GN+WS": ("23.72", "1/GPU"),
    },
    {
        "source": "Qiao et al., github.com/joe-siyuan-qiao/Batch-Channel-Normalization, DeepLabV3/README "
        "(commit 0244c3e)",
        "setting": "PASCAL VOC 2012 segmentation, DeepLabV3 ResNet-101",
        "metric": "mIoU (%), higher is better",
        "BN large": ("76.49", "BN"),
        "GN+WS": ("77.20", ""),
        "BCN+WS": ("78.10", ""),
    },
]


def collect(sweep_dir: str | pathlib.Path) -> list[dict]:
    """One record per finished cell: its setting, final accuracy, curves and provenance."""
    cells = []
    for run in sorted(p for p in pathlib.Path(sweep_dir).iterdir() if p.is_dir()):
        info_path, config_path = run / "run_info.json", run / "config.json"
        if not info_path.exists() or not config_path.exists():
            continue
        # A run's saved config.json (a dict): one written before replicas_per_device or data_order existed
        # lacks them, hence .get with the value such runs had.
        info, saved = json.loads(info_path.read_text()), json.loads(config_path.read_text())
        if "final_test_accuracy" not in info:
            continue  # unfinished
        metrics_path = run / "metrics.jsonl"
        records = [
            json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()
        ]
        replicas = info["device_count"] * saved.get("replicas_per_device", 1)
        cells.append(
            {
                "name": run.name,
                "normalization": NAME_BY_SETTING[(saved["conv"], saved["norm"])],
                "per_device_batch": saved["global_batch_size"] // replicas,
                "replicas": replicas,
                "device_count": info["device_count"],
                "global_batch": saved["global_batch_size"],
                "data_order": saved.get("data_order", "replica"),
                "seed": saved["seed"],
                "accuracy": info["final_test_accuracy"],
                POPULATION: info.get("final_test_accuracy_population"),
                "steps": info["final_step"],
                "wall_time_s": info["train_wall_time_s"],
                "commit": info["commit"],
                "model": saved["model"],
                "dataset": saved["dataset"],
                "optimizer": f"{saved['optimizer']} {saved['learning_rate']:g} {saved['schedule']}",
                "train_loss": [(r["step"], r["loss"]) for r in records if r["split"] == "train"],
                "test_accuracy": [
                    (r["step"], r["accuracy"]) for r in records if r["split"] == "test"
                ],
            }
        )
    return cells


def _vs(a: Stat, b: Stat) -> str:
    d = compare(a, b)
    if d.sign_only:
        return f"{a} vs {b} ({d.diff:+.2f} points; one seed: the sign only)"
    how = f"paired over {d.paired} seeds" if d.paired else "unpaired"
    return f"{a} vs {b} ({d.diff:+.2f} points, s.e. {d.se:.2f}, {how})"


def _at(table: dict[tuple[str, int], Stat], name: str, b: int) -> tuple[str, Stat] | None:
    """``name`` at ``b`` images per device, with a note when another cell stands in for it: a batch-free
    normalization that did not run at ``b`` is taken at the largest b it ran (the same training at every b,
    up to float rounding)."""
    if (name, b) in table:
        return "", table[(name, b)]
    runs = sorted(k[1] for k in table if k[0] == name)
    if name not in BATCH_FREE or not runs:
        return None
    return f" ({name} as run at {runs[-1]}/device)", table[(name, runs[-1])]


def design_check(cells: list[dict]) -> str:
    """States what every cell shares; flags any cell that breaks the design."""
    shared = {
        key: sorted({str(c[key]) for c in cells})
        for key in ("global_batch", "steps", "data_order", "model", "dataset", "optimizer")
    }
    lines = []
    for key, values in shared.items():
        mark = "" if len(values) == 1 else "  **DIFFERS: the cells are not comparable**"
        lines.append(f"- {key}: {', '.join(values)}{mark}")
    splits = sorted({(c["per_device_batch"], c["replicas"]) for c in cells})
    lines.append(
        "- images per device × replicas: "
        + ", ".join(f"{b} × {r}" for b, r in splits)
        + (
            ""
            if all(b * r == int(shared["global_batch"][0]) for b, r in splits)
            else "  **DIFFERS from the global batch**"
        )
    )
    commits = {
        c["commit"][:12] + ("-dirty" if c["commit"].endswith("-dirty") else "") for c in cells
    }
    lines.append(f"- commit(s): {', '.join(sorted(commits))}")
    dirty = sorted(c["name"] for c in cells if c["commit"].endswith("-dirty"))
    if dirty:  # their code is not in git as it ran: rerun them for a result from committed code
        lines.append(f"- run from uncommitted changes (rerun to confirm): {', '.join(dirty)}")
    return "\n".join(lines)


def markdown_table(cells: list[dict]) -> str:
    table = summarize(cells)
    norms = [n for n in NORMALIZATIONS if any(k[0] == n for k in table)]
    batches = sorted({k[1] for k in table})
    lines = [
        "| normalization | " + " | ".join(f"{b}/device" for b in batches) + " |",
        "|---|" + "---|" * len(batches),
    ]
    for n in norms:
        row = [
            f"{table[(n, b)].mean:.2f} ± {table[(n, b)].std:.2f} ({table[(n, b)].n})"
            if (n, b) in table
            else "—"
            for b in batches
        ]
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    population = summarize(cells, POPULATION)
    for n in [n for n in NORMALIZATIONS if any(k[0] == n for k in population)]:
        row = [str(population[(n, b)]).rstrip("%") + f" ({population[(n, b)].n})"
               if (n, b) in population else "—" for b in batches]  # fmt: skip
        lines.append(f"| {n}, population statistics | " + " | ".join(row) + " |")
    return "\n".join(lines)


def _verdict(outcomes: list[Difference], wanted: tuple[str, ...]) -> str:
    good = sum(o.verdict in wanted for o in outcomes)
    if good == len(outcomes):
        verdict = "**holds**"
    else:
        verdict = (
            "**does not hold**" if good == 0 else f"**holds in part** ({good} of {len(outcomes)})"
        )
    return verdict + (SIGN_ONLY if any(o.sign_only for o in outcomes) else "")


def claims(cells: list[dict]) -> list[str]:
    """One computed statement per claim of the paper, each ending in a verdict."""
    table = summarize(cells)
    batches = sorted({k[1] for k in table})
    ref_b = max(batches)
    ref = table.get(("BN", ref_b))
    micro = [b for b in batches if b <= 2]
    out = []

    # (1) BN degrades at 1-2 images per device.
    rows = [(b, table[("BN", b)]) for b in micro if ("BN", b) in table]
    if ref and rows:
        outcomes = [compare(s, ref) for _, s in rows]
        detail = "; ".join(f"at {b}/device {_vs(s, ref)}" for b, s in rows)
        out.append(
            f"1. *BN degrades at 1-2 images per device* (vs BN at {ref_b}/device): {detail}. "
            + _verdict(outcomes, ("lower",))
        )
    else:
        out.append(
            "1. *BN degrades at 1-2 images per device*: not measured (needs BN at 1-2 and at the largest b)."
        )

    # (2) WS improves GN and BN (and BCN, an extra).
    parts, outcomes = [], []
    for base in ("BN", "GN", "BCN"):
        pairs = [(b, found, plain) for b in batches
                 if (plain := table.get((base, b))) and (found := _at(table, base + "+WS", b))]  # fmt: skip
        outcomes += [compare(ws, plain) for _, (_, ws), plain in pairs]
        if pairs:
            parts.append(
                f"{base}+WS vs {base}: "
                + "; ".join(f"{b}/device {_vs(ws, plain)}{note}" for b, (note, ws), plain in pairs)
            )
    if parts:
        out.append(
            "2. *WS improves GN and BN*: "
            + ". ".join(parts)
            + ". "
            + _verdict(outcomes, ("higher",))
        )
    else:
        out.append(
            "2. *WS improves GN and BN*: not measured (needs a normalization with and without WS)."
        )

    # (3) BCN+WS at micro-batch matches or beats large-batch BN, and beats GN+WS.
    rows = [(b, table[("BCN+WS", b)]) for b in micro if ("BCN+WS", b) in table]
    if ref and rows:
        vs_bn = [compare(s, ref) for _, s in rows]
        text = "; ".join(f"at {b}/device {_vs(s, ref)}" for b, s in rows)
        statement = (
            f"3. *BCN+WS at micro-batch matches or beats BN at {ref_b}/device*: {text}. "
            + _verdict(vs_bn, ("higher", "level"))
        )
        gn = [(b, s, found) for b, s in rows if (found := _at(table, "GN+WS", b)) is not None]
        if gn:
            statement += (
                " *…and beats GN+WS*: "
                + "; ".join(f"at {b}/device {_vs(s, g)}{note}" for b, s, (note, g) in gn)
                + ". "
                + _verdict([compare(s, g) for _, s, (_, g) in gn], ("higher",))
            )
        out.append(statement)
    else:
        out.append("3. *BCN+WS at micro-batch matches large-batch BN*: not measured.")

    out += _population_claim(cells, table, micro, ref_b)

    # The batch-free normalizations train the same network at every b: their spread across b is rounding.
    for n in sorted(BATCH_FREE & {k[0] for k in table}):
        runs = [(b, table[(n, b)]) for b in batches if (n, b) in table]
        if len(runs) > 1:
            out.append(
                f"- Control: {n} uses no batch statistics, so its {runs[0][0]}/device and {runs[-1][0]}/device "
                f"cells train the same network up to float rounding: {_vs(runs[0][1], runs[-1][1])}."
            )
    return out


def _population_claim(
    cells: list[dict], table: dict[tuple[str, int], Stat], micro: list[int], ref_b: int
) -> list[str]:
    """Whether micro-batch BN's loss is a train/test mismatch of its running averages or damage to training:
    the same cells (``table``: their accuracies) evaluated with re-estimated population statistics."""
    population = summarize(cells, POPULATION)
    out = []
    for name in ("BN", "BN+WS"):
        ref, ref_running = population.get((name, ref_b)), table.get((name, ref_b))
        for b in micro:
            running, fixed = table.get((name, b)), population.get((name, b))
            if running is None or fixed is None or ref is None or ref_running is None:
                continue
            recovered, left = compare(fixed, running), compare(fixed, ref)
            if compare(running, ref_running).verdict != "lower":
                why = f"no loss to explain: with its running averages it is not below {name} at {ref_b}/device"
            elif left.verdict == "level":
                why = "a train/test mismatch: with population statistics it is level with the reference"
            elif recovered.verdict == "higher":
                why = "partly a mismatch, partly damage to training: population statistics recover some of it"
            else:
                why = "damage to training: population statistics do not recover it"
            out.append(
                f"4. *{name} at {b}/device, mismatch or damage?* Population statistics vs its running "
                f"averages: {_vs(fixed, running)}; vs {name} at {ref_b}/device (population statistics too): "
                f"{_vs(fixed, ref)}. **{why}**"
                + (SIGN_ONLY if recovered.sign_only or left.sign_only else "")
                + "."
            )
    return out


def paper_table(cells: list[dict]) -> str:
    """The paper's figures (quoted) beside ours (computed, as test error in %)."""
    table = summarize(cells)
    batches = sorted({k[1] for k in table})
    ref_b, micro_b = max(batches), min(batches)
    first = cells[0]

    def err(n, b):
        return f"{100 - table[(n, b)].mean:.2f} ({b}/device)" if (n, b) in table else "—"

    gn_b = next((b for b in (micro_b, ref_b) if ("GN", b) in table), micro_b)
    gnws_b = next((b for b in (micro_b, ref_b) if ("GN+WS", b) in table), micro_b)
    ours = {
        "source": "**ours** (this sweep)",
        "setting": f"{first['dataset']}, {first['model']}, {first['steps']:,} steps of {first['global_batch']}, "
        f"{first['optimizer']}",
        "metric": "test error (%)",
        "BN large": (err("BN", ref_b), ""),
        "BN micro": (err("BN", micro_b), ""),
        "GN": (err("GN", gn_b), ""),
        "GN+WS": (err("GN+WS", gnws_b), ""),
        "BCN+WS": (err("BCN+WS", micro_b), ""),
    }
    columns = ("BN large", "BN micro", "GN", "GN+WS", "BCN+WS")
    lines = [
        "| source | setting | metric | BN, large batch | BN, micro-batch | GN | GN+WS | BCN+WS, micro-batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in [*PAPER, ours]:
        cells_md = []
        for col in columns:
            value, note = row.get(col, ("—", ""))
            cells_md.append(f"{value} ({note})" if note else value)
        lines.append(
            f"| {row['source']} | {row['setting']} | {row['metric']} | "
            + " | ".join(cells_md)
            + " |"
        )
    return "\n".join(lines)


def write_report(sweep_dir: str | pathlib.Path, out_dir: str | pathlib.Path) -> pathlib.Path:
    """Writes ``results.md``, ``microbatch.png`` and ``cells.json`` into ``out_dir``."""
    cells = collect(sweep_dir)
    if not cells:
        raise ValueError(f"no finished cells under {sweep_dir}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = cells[0]
    text = [
        "## Design (read from the cells)",
        "",
        design_check(cells),
        "",
        "## Test accuracy (%), mean ± std over seeds (seeds in brackets)",
        "",
        markdown_table(cells),
        "",
        f"## The paper's claims, checked (two settings differ when their difference, paired over the seeds "
        f"both ran, is more than {SIGNIFICANT_SE:g} standard errors from zero)",
        "",
        *claims(cells),
        "",
        "## The paper's figures beside ours",
        "",
        paper_table(cells),
        "",
        f"Differs from the paper: dataset ({first['dataset']}, not ImageNet/VOC), model ({first['model']}, not "
        f"ResNet-50/101), budget ({first['steps']:,} steps of {first['global_batch']} images, "
        f"{first['optimizer']}; the paper: ~100 epochs of SGD), and the devices are replicas vmapped on "
        f"{first['device_count']} device(s).",
        "",
    ]
    (out / "results.md").write_text("\n".join(text))
    plot(cells, out / "microbatch.png")
    (out / "cells.json").write_text(
        json.dumps(
            [
                {k: v for k, v in c.items() if k not in ("train_loss", "test_accuracy")}
                for c in cells
            ],
            indent=1,
        )
    )
    return out
