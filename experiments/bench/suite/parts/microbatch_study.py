"""Part ``study``, not in the default call: the micro-batch study's grid trained on the accelerator.

    python -m experiments.bench.suite --out DIR --parts=study --deadline_s=540

The cells of the CPU sweep (``experiments/study/microbatch.py`` with ``configs/microbatch.py``: the same model,
global batch, steps, optimizer and data order), with more seeds, trained by ``microbatch.run(...,
in_process=True)``: one process, so no start-up per cell, and one compilation cache, so the cells of later
seeds do not compile again. Seeds are outermost, so whatever finishes before the deadline is every setting
once per finished seed. No cell starts unless the longest so far would still end in time (the first always
does); a part killed at its limit loses ``results["cells"]``, not the cells' records in ``DIR/study/runs/``.

What comes back: ``results["cells"]`` (each cell's accuracy and wall time) and, in ``DIR/study/runs/``, each
cell's records under ``study/runs/CELL/`` (``config.json``, ``metrics.jsonl``, ``run_info.json``). Untar them
into e.g. ``results/microbatch_gpu/runs`` and run ``python -m experiments.study.microbatch report`` on that folder.
"""

from __future__ import annotations

from experiments.bench.suite.context import PartContext

SEEDS = (0, 1, 2, 3, 4)
REPORT_RESERVE_S = 10  # for collecting the cells' records once training stops
TINY_FLAGS = [
    "--config.dataset=synthetic",
    "--config.model=vgg_tiny",
    "--config.num_groups=4",
    "--config.num_train_steps=4",
    "--config.eval_every_steps=2",
    "--config.log_every_steps=2",
    "--config.eval_batch_size=128",
]


def run(ctx: PartContext) -> None:
    from experiments.common import provenance
    from experiments.study import microbatch
    from experiments.study.report import collect

    # the table's headline, in a call of its own
    ctx.record("machine", provenance.describe_machine())

    sweep = ctx.files / "runs"
    extra = [f"--config.data_cache_dir={ctx.data_cache_dir}"] if ctx.data_cache_dir else []
    if (
        ctx.tiny
    ):  # the same code path in seconds on a CPU: two normalizations, the ends of the range
        extra += TINY_FLAGS
        seeds, normalizations, batches = (0,), ["BN", "GN+WS"], [1, 32]
    else:
        seeds, normalizations = SEEDS, list(microbatch.NORMALIZATIONS)
        batches = list(microbatch.PER_DEVICE_BATCHES)
    ctx.record(
        "grid", {"seeds": seeds, "normalizations": normalizations, "per_device_batches": batches}
    )
    try:
        microbatch.run(
            sweep,
            seeds,
            normalizations,
            batches,
            extra=extra,
            in_process=True,
            time_limit_s=ctx.time_left() - REPORT_RESERVE_S,
        )
    finally:  # also after a failed cell: the finished ones are measurements
        ctx.record(
            "cells",
            [
                {
                    key: cell[key]
                    for key in (
                        "name",
                        "normalization",
                        "per_device_batch",
                        "seed",
                        "accuracy",
                        "steps",
                        "wall_time_s",
                    )
                }
                for cell in collect(sweep)
            ],
        )
