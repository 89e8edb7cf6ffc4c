"""What gradient accumulation buys: a device's batch as k micro-batches in turn against one batch of the same size.

    python -m experiments.bench.accumulation     # alone: JSON into results/benchmarks/
    (also a case of python -m experiments.benchmark)

The same train step (the setup's model, WS+BCN, Adam) on a per-device batch B with ``accumulate_steps = k``
for each k of the list, k = 1 being the one batch of B. For each: XLA's compiled memory analysis of the step
(deterministic: what the compiler allocates, on any backend), the same for one batch of B/k without
accumulation (the memory a micro-batch alone needs), the device's own memory statistics where it keeps any
(GPU, TPU; None on CPU), and the step time (timed in turns, compilation excluded).
"""

from __future__ import annotations

from typing import Any

import jax

from experiments.bench import RESULTS
from experiments.bench.cases import Setup, config_for, train_step
from experiments.bench.timing import stepper, time_interleaved

ACCUMULATE_STEPS = (1, 8, 32)


def compiled_memory(compiled) -> dict[str, int] | None:
    """Bytes XLA assigns to a compiled step: arguments, outputs, temporaries, and their total.

    ``total`` = arguments + outputs - aliased (the donated state's outputs reuse its arguments' buffers) +
    temporaries: what the step holds at once at most, by the compiler's buffer assignment. None where the
    backend gives no analysis.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    sizes = {
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "generated_code": analysis.generated_code_size_in_bytes,
    }
    sizes["total"] = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
    return sizes


def _device_memory() -> dict[str, int] | None:
    """The first device's ``bytes_in_use`` and ``peak_bytes_in_use`` (the process's peak so far); None on CPU."""
    stats = jax.devices()[0].memory_stats()
    if not stats:
        return None
    return {k: stats[k] for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def measure(
    setup: Setup, per_device_batch: int, accumulate_steps=ACCUMULATE_STEPS, **overrides: Any
) -> dict[str, Any]:
    """Memory and step time of ``per_device_batch`` as k micro-batches, for each k in ``accumulate_steps``.

    ``overrides``: config fields (default WS+BCN, as the experiments train). The device's statistics are read
    after each step's first call, in order of decreasing k (increasing memory), so each case's reading of the
    process's peak is its own unless an earlier part of the process went higher.

    Returns:
      ``{"model", "conv", "norm", "dtype", "per_device_batch", "rows"}``, a row per k (increasing) with its
      ``micro_batch``, ``compiled_memory``, ``micro_batch_alone`` (the compiled memory of one batch of the
      micro-batch's size without accumulation; None at k = 1), ``device_memory``, ``step_time_s`` and the
      ratios to k = 1 of the compiled total and of the step time.
    """
    overrides = {"conv": "ws", "norm": "bcn", **overrides}
    for k in accumulate_steps:
        if per_device_batch % k:
            raise ValueError(f"a batch of {per_device_batch} does not split into {k} micro-batches")
    rows, runs = {}, {}
    for k in sorted(accumulate_steps, reverse=True):
        config = config_for(setup, accumulate_steps=k, **overrides)
        step, *args = train_step(setup, config, per_device_batch)
        compiled = step.lower(*args).compile()
        alone = None
        if k > 1:
            small, *small_args = train_step(
                setup, config_for(setup, **overrides), per_device_batch // k
            )
            alone = compiled_memory(small.lower(*small_args).compile())
        rows[k] = {
            "accumulate_steps": k,
            "micro_batch": per_device_batch // k,
            "compiled_memory": compiled_memory(compiled),
            "micro_batch_alone": alone,
        }
        runs[k] = stepper(compiled, *args)
        jax.block_until_ready(runs[k]())  # the device's peak now includes this step
        rows[k]["device_memory"] = _device_memory()
    timing = time_interleaved({str(k): run for k, run in runs.items()}, setup.repeats, setup.calls)
    one_batch = rows[min(accumulate_steps)]
    for k, row in rows.items():
        row["step_time_s"] = timing[str(k)].as_dict()
        row["step_time_over_one_batch"] = timing[str(k)].median / timing[str(min(rows))].median
        memory, reference = row["compiled_memory"], one_batch["compiled_memory"]
        row["memory_over_one_batch"] = (
            memory["total"] / reference["total"] if memory and reference else None
        )
    return {
        "model": config.model,
        **{key: config[key] for key in ("conv", "norm", "dtype")},
        "per_device_batch": per_device_batch,
        "rows": [rows[k] for k in sorted(rows)],
    }


if __name__ == "__main__":
    import datetime
    import json

    import numpy as np
    from jax.sharding import Mesh

    from experiments.common import cpu_backend, provenance
    from experiments.trainer import steps

    cpu_backend.configure()  # as training and the benchmark run
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    started = datetime.datetime.now()
    result = measure(Setup("vgg16", (32, 32, 3), repeats=5, calls=3, mesh=mesh), 64)
    machine = provenance.describe_machine()
    results = {
        "measured": started.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m experiments.bench.accumulation",
        "machine": machine,
        "accumulation": result,
    }
    out = RESULTS
    out.mkdir(parents=True, exist_ok=True)
    kind = machine["device_kind"].replace(" ", "_")
    path = out / f"{started:%Y-%m-%d_%H%M%S}_{kind}_{machine['commit'][:12]}_accumulation.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written to {path}")
