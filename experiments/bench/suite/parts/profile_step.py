"""Part ``profile``: a ``jax.profiler`` trace of the VGG16 WS+BCN bf16 training step, and its compiled HLO.

The step is the benchmark's (``bench/cases.py``: Adam, WSConv ``apply_to='auto'``, BCN, data drawn and
augmented on the device) at per-device batch 256. Written under ``work/profile/``, which the suite copies
to ``DIR/profile/``: the trace of a few steps (TensorBoard's profile plugin or Perfetto read it),
the optimized HLO text (``compiled.as_text()``) and the StableHLO before optimization, and XLA's cost and
memory analyses, so that optimization can go on away from the GPU.
"""

from __future__ import annotations

from experiments.bench.suite.context import PartContext

GPU_BATCH, TINY_BATCH = 256, 8
TRACED_STEPS = 5


def run(ctx: PartContext) -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases
    from experiments.bench.timing import stepper
    from experiments.trainer import steps

    setup = cases.Setup(
        model="vgg_tiny" if ctx.tiny else "vgg16",
        image_shape=(32, 32, 3),
        repeats=1,
        calls=1,
        mesh=Mesh(np.array(jax.devices()[:1]), (steps.AXIS,)),
    )
    batch = TINY_BATCH if ctx.tiny else GPU_BATCH
    dtype = "float32" if ctx.tiny else "bfloat16"  # (XLA:CPU compiles bfloat16 steps slowly)
    config = cases.config_for(setup, conv="ws", norm="bcn", dtype=dtype)
    step, state, images, labels = cases.train_step(setup, config, batch)
    lowered = step.lower(state, images, labels)
    compiled = lowered.compile()
    folder = ctx.files
    (folder / "train_step.stablehlo.txt").write_text(lowered.as_text())
    (folder / "train_step.optimized_hlo.txt").write_text(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    ctx.record(
        "step",
        {
            "model": setup.model,
            "per_device_batch": batch,
            "dtype": dtype,
            "flops": float(cost.get("flops", 0.0)),
            "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
            "memory": {
                k: getattr(memory, k, None)
                for k in (
                    "argument_size_in_bytes",
                    "output_size_in_bytes",
                    "temp_size_in_bytes",
                    "generated_code_size_in_bytes",
                )
            },
        },
    )
    run_step = stepper(compiled, state, images, labels)
    for _ in range(3):  # warm up outside the trace
        jax.block_until_ready(run_step())
    trace_dir = folder / "trace"
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):  # + a Perfetto JSON
        for _ in range(TRACED_STEPS):
            out = run_step()
        jax.block_until_ready(out)
    ctx.record(
        "files", sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    )
