"""What a micro-batch sweep costs on this machine: each setting's training step timed, times the cell's steps.

    python -m experiments.study.budget                                  # the accelerator's grid, on this device
    python -m experiments.study.budget --config experiments/configs/microbatch.py --out DIR

For every setting of the grid (normalization × images per device, as ``study.microbatch.grid`` lays it out:
the ``DEEP_*`` grid of ``grid.py`` for ``configs/microbatch_deep.py``, the CPU study's otherwise) the cell's
training step (its config and optimizer, its replicas vmapped on one device) is compiled, its FLOPs counted
by XLA and its time measured; a cell's training is its steps times that (evaluation and start-up come on
top), a seed's the sum over the grid, the sweep's that times the seeds. On the accelerator the figures are
its own; on a CPU the FLOPs per cell say what a faster device has to do.

Writes ``budget.json`` and prints a table. Takes a few minutes: every setting compiles twice (once for XLA's
FLOP count, which :func:`experiments.bench.cases.step_flops` takes from an ahead-of-time compilation).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from experiments.study import grid as grids
from experiments.study.cells import DEEP_CONFIG, REPO, cell_config


def settings(config_path: pathlib.Path) -> tuple[list[tuple[str, int]], tuple[int, ...]]:
    """The grid's ``(normalization, images per device)`` settings for ``config_path``, and its seeds."""
    from experiments.study.microbatch import grid

    if config_path.resolve() == DEEP_CONFIG:
        cells = grid(
            grids.DEEP_NORMALIZATIONS,
            grids.DEEP_PER_DEVICE_BATCHES,
            (0,),
            grids.DEEP_BATCH_FREE_BATCHES,
        )
        seeds = grids.DEEP_SEEDS
    else:
        cells, seeds = grid(list(grids.NORMALIZATIONS), grids.PER_DEVICE_BATCHES, (0,)), grids.SEEDS
    return [(c.normalization, c.per_device_batch) for c in cells], seeds


def cell_steps(config) -> tuple[int, int]:
    """``(steps per epoch, steps)`` of a cell of ``config`` on the study's dataset."""
    steps_per_epoch = grids.TRAIN_EXAMPLES // config.global_batch_size
    return steps_per_epoch, config.num_epochs * steps_per_epoch


def cell_optimizer(config):
    """The optimizer a cell of ``config`` trains with (its schedule over the cell's steps)."""
    from experiments.trainer import optim

    return optim.make_optimizer(config, optim.learning_rate_schedule(config, *cell_steps(config)))


def measure(
    config_path: pathlib.Path, repeats: int, calls: int, extra: list[str]
) -> dict[str, Any]:
    """Times one step of every setting of ``config_path``'s grid on one device (see the module docstring)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from tqdm.auto import tqdm

    from experiments.bench import cases
    from experiments.bench.timing import time_calls
    from experiments.common import provenance
    from experiments.study.microbatch import Cell
    from experiments.trainer import steps

    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    grid, seeds = settings(config_path)
    global_batch = cell_config(extra, config_path).global_batch_size
    rows = []
    for normalization, per_device in tqdm(grid, desc="settings", unit="setting"):
        flags = Cell(normalization, per_device, 0).overrides(global_batch, 1)
        config = cell_config([*flags, *extra], config_path)
        setup = cases.Setup(config.model, (28, 28, 1), repeats, calls, mesh)
        step, state, images, labels = cases.train_step(
            setup, config, config.global_batch_size, cell_optimizer(config)
        )
        flops = cases.step_flops(step, state, images, labels)
        timing = time_calls(cases.stepper(step, state, images, labels), repeats, calls)
        _, steps = cell_steps(config)
        rows.append(
            {
                "normalization": normalization,
                "per_device_batch": per_device,
                "replicas": config.replicas_per_device,
                "step_time_s": timing.as_dict(),
                "flops_per_step": flops,
                "steps_per_cell": steps,
                "cell_train_s": steps * timing.median,
            }
        )
    seed_s = sum(r["cell_train_s"] for r in rows)
    return {
        "machine": provenance.describe_machine(),
        "config": str(config_path.resolve().relative_to(REPO))
        if config_path.resolve().is_relative_to(REPO)
        else str(config_path),
        "model": config.model,
        "global_batch": config.global_batch_size,
        "seeds": list(seeds),
        "settings": rows,
        "train_s_per_seed": seed_s,
        "train_s_all_seeds": seed_s * len(seeds),
        "flops_per_seed": sum((r["flops_per_step"] or 0) * r["steps_per_cell"] for r in rows),
    }


def table(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"{result['config']}: {result['model']}, {result['global_batch']} images per step, on "
        f"{machine['device_kind']} ({machine['backend']}, {machine['cpu_count']} CPU cores)",
        "| setting | replicas | step (median) | GFLOP/step | steps | training per cell |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["settings"]:
        gflop = f"{r['flops_per_step'] / 1e9:.1f}" if r["flops_per_step"] else "—"
        lines.append(
            f"| {r['normalization']} at {r['per_device_batch']}/device | {r['replicas']} | "
            f"{r['step_time_s']['median'] * 1e3:.1f} ms | {gflop} | {r['steps_per_cell']:,} | "
            f"{r['cell_train_s']:.0f} s |"
        )
    lines.append(
        f"one seed: {result['train_s_per_seed']:.0f} s of training, "
        f"{result['flops_per_seed'] / 1e15:.2f} PFLOP; {len(result['seeds'])} seeds: "
        f"{result['train_s_all_seeds']:.0f} s"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=pathlib.Path, default=DEEP_CONFIG)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/budget"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument(
        "--extra", action="append", default=[], help="--config.FIELD=VALUE for every cell."
    )
    args = parser.parse_args(argv)
    from experiments.common import cpu_backend

    cpu_backend.configure()  # the trainer's XLA:CPU settings: the step as training runs it
    result = measure(args.config, args.repeats, args.calls, args.extra)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
