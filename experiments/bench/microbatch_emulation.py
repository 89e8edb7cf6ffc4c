"""The micro-batch study's step: its global batch G as G replicas of one image against one replica of G.

    python -m experiments.bench.microbatch_emulation     # alone: JSON into results/benchmarks/
    (also a case of python -m experiments.bench.benchmark)

Both steps train the same G images with the same model (``configs/microbatch.py``); at b = 1 each of the G
replicas normalizes with its own batch statistics (``replicas_per_device = G``, vmapped on one device). Timed
in turns, compilation excluded. The ratio is what emulating G devices on one costs over ordinary training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.bench import RESULTS
from experiments.bench.cases import Setup, train_step
from experiments.bench.timing import stepper, time_interleaved
from experiments.configs import microbatch as study_config


def measure(setup: Setup) -> list[dict[str, Any]]:
    """Per normalization (BN, BCN+WS): both steps' times and ``emulation_cost`` = b=1 time / b=G time.

    The config is ``configs/microbatch.py``'s (model, groups, G, data order, augmentation; ``vgg_tiny`` when
    the setup's model is, for ``--tiny``); the setup gives the mesh, repeats and calls. The optimizer is the
    benchmark's constant-rate Adam (``cases.train_step``), not the study's schedule: the same work per step.
    """
    tiny = setup.model == "vgg_tiny"
    g = study_config.get_config().global_batch_size
    rows = []
    for name, conv, norm in (("BN", "plain", "bn"), ("BCN+WS", "ws", "bcn")):
        runs = {}
        for b in (1, g):
            config = study_config.get_config()  # the study's data order and augmentation too
            config.update(conv=conv, norm=norm, replicas_per_device=g // b)
            if tiny:
                config.update(model="vgg_tiny", num_groups=4)
            study_setup = dataclasses.replace(setup, model=config.model, image_shape=(28, 28, 1))
            runs[f"{b}/device"] = stepper(*train_step(study_setup, config, g))
        timing = time_interleaved(runs, setup.repeats, setup.calls)
        one, reference = timing["1/device"], timing[f"{g}/device"]
        rows.append(
            {
                "normalization": name,
                "model": config.model,
                "global_batch": g,
                "step_time_s": {k: t.as_dict() for k, t in timing.items()},
                "emulation_cost": one.median / reference.median,
            }
        )
    return rows


if __name__ == "__main__":
    import datetime
    import json
    import os

    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.common import cpu_backend, provenance
    from experiments.trainer import steps

    cpu_backend.configure()  # as training and the benchmark run
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    started = datetime.datetime.now()
    rows = measure(Setup("unused", (28, 28, 1), repeats=7, calls=10, mesh=mesh))
    machine = provenance.describe_machine()
    results = {
        "measured": started.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m experiments.bench.microbatch_emulation",
        "machine": machine,
        "load_average_after": os.getloadavg(),
        "microbatch_emulation": rows,
    }
    out = RESULTS
    out.mkdir(parents=True, exist_ok=True)
    kind = machine["device_kind"].replace(" ", "_")
    path = (
        out / f"{started:%Y-%m-%d_%H%M%S}_{kind}_{machine['commit'][:12]}_microbatch_emulation.json"
    )
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(rows, indent=2))
    print(f"written to {path}")
