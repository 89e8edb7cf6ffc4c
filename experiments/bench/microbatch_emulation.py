"""The micro-batch study's step: its global batch G as G replicas of one image against one replica of G.

    python -m experiments.bench.microbatch_emulation     # alone: JSON into results/benchmarks/
    (also a case of python -m experiments.benchmark)

Both steps train the same G images with the same model (``configs/microbatch.py``); at b = 1 each of the G
replicas normalizes with its own batch statistics (``replicas_per_device = G``, vmapped on one device). Timed
in turns, compilation excluded. The ratio is what emulating G devices on one costs over ordinary training.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.bench.cases import Setup, config_for, train_step
from experiments.bench.timing import stepper, time_interleaved
from experiments.configs import microbatch as study_config


def measure(setup: Setup) -> list[dict[str, Any]]:
    """Per normalization (BN, BCN+WS): both steps' times and ``emulation_cost`` = b=1 time / b=G time.

    The model, groups and G are ``configs/microbatch.py``'s (``vgg_tiny`` when the setup's model is, for
    ``--tiny``); the setup gives the mesh, repeats and calls.
    """
    study = study_config.get_config()
    tiny = setup.model == "vgg_tiny"
    setup = dataclasses.replace(
        setup, model="vgg_tiny" if tiny else study.model, image_shape=(28, 28, 1)
    )
    g = study.global_batch_size
    rows = []
    for name, conv, norm in (("BN", "plain", "bn"), ("BCN+WS", "ws", "bcn")):
        runs = {}
        for b in (1, g):
            config = config_for(
                setup,
                conv=conv,
                norm=norm,
                num_groups=4 if tiny else study.num_groups,
                replicas_per_device=g // b,
            )
            runs[f"{b}/device"] = stepper(*train_step(setup, config, g))
        timing = time_interleaved(runs, setup.repeats, setup.calls)
        one, reference = timing["1/device"], timing[f"{g}/device"]
        rows.append(
            {
                "normalization": name,
                "model": setup.model,
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
    import pathlib

    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments import cpu_backend, provenance, steps

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
    out = pathlib.Path(__file__).resolve().parents[2] / "results" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    kind = machine["device_kind"].replace(" ", "_")
    path = (
        out / f"{started:%Y-%m-%d_%H%M%S}_{kind}_{machine['commit'][:12]}_microbatch_emulation.json"
    )
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(rows, indent=2))
    print(f"written to {path}")
