"""Part ``study``, not in the default call: the micro-batch study where its claims can show, on the accelerator.

    python -m experiments.bench.suite --out DIR --parts=study --deadline_s=540

The grid of ``experiments/study/grid.py`` (``DEEP_*``: BN, BN+WS, BCN+WS at 1 and 32 images per device;
GN+WS and no normalization at 32; five seeds) with ``configs/microbatch_deep.py`` (VGG16, SGD with momentum,
the paper's step schedule; BN cells also evaluated with re-estimated population statistics), trained by
``microbatch.run(..., in_process=True)``: one process, so no start-up per cell, and one compilation cache, so
the cells of later seeds do not compile again. Seeds are outermost, so whatever finishes before the deadline is
every setting once per finished seed, and the report pairs the settings within each seed. No cell starts unless
the longest so far would still end in time (the first always does); a part killed at its limit loses
``results["cells"]``, not the cells' records in ``DIR/study/runs/``. A second call with the same ``--out``
folder's ``study/runs`` goes on where the first stopped (finished cells are skipped).

What comes back: ``results["cells"]`` (each cell's accuracies and wall time) and, in ``DIR/study/runs/``, each
cell's records under ``study/runs/CELL/`` (``config.json``, ``metrics.jsonl``, ``run_info.json``). Untar them
into e.g. ``results/microbatch_gpu/runs`` and run ``python -m experiments.study.microbatch report`` on that folder.
"""

from __future__ import annotations

from experiments.bench.suite.context import PartContext

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
    from experiments.study import grid, microbatch
    from experiments.study.cells import DEEP_CONFIG, REPO
    from experiments.study.report import POPULATION, collect

    # the table's headline, in a call of its own
    ctx.record("machine", provenance.describe_machine())

    sweep = ctx.files / "runs"
    extra = [f"--config.data_cache_dir={ctx.data_cache_dir}"] if ctx.data_cache_dir else []
    seeds, normalizations = grid.DEEP_SEEDS, list(grid.DEEP_NORMALIZATIONS)
    if (
        ctx.tiny
    ):  # the same code path in seconds on a CPU: two seeds (pairs), BN and the batch-free GN+WS
        extra += TINY_FLAGS
        seeds, normalizations = (0, 1), ["BN", "GN+WS"]
    batches, batch_free = list(grid.DEEP_PER_DEVICE_BATCHES), list(grid.DEEP_BATCH_FREE_BATCHES)
    ctx.record(
        "grid",
        {
            "config": str(DEEP_CONFIG.relative_to(REPO)),
            "seeds": seeds,
            "normalizations": normalizations,
            "per_device_batches": batches,
            "batch_free_batches": batch_free,
        },
    )
    try:
        microbatch.run(
            sweep,
            seeds,
            normalizations,
            batches,
            batch_free,
            extra=extra,
            in_process=True,
            time_limit_s=ctx.time_left() - REPORT_RESERVE_S,
            config=DEEP_CONFIG,
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
                        POPULATION,
                        "steps",
                        "wall_time_s",
                    )
                }
                for cell in collect(sweep)
            ],
        )
