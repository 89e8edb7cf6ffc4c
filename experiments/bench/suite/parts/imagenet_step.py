"""Part ``imagenet``, not in the default call: the paper's ImageNet training step on the accelerator.

The recipe's network (``configs/imagenet.py``: ResNet-50 with WS on 224x224x3, bfloat16 compute) at per-device
batch 128, twice: GN+WS (``qiao``) on one replica, and BCN+WS (``pytorch``) as the recipe trains it, one image
per replica (128 vmapped replicas, each with its own batch statistics). Images/s, XLA FLOP/s and MFU per step.
This is the figure the streaming input must keep up with: a host feeding this device needs about images/s
divided by what one host core decodes and augments (README, *Streaming input*) cores.
"""

from __future__ import annotations

from experiments.bench.suite.context import PartContext

BATCH = 128
CASES = (  # name, norm, WS preset (each official code's), replicas per device
    ("GN+WS", "gn", "qiao", 1),
    ("BCN+WS", "bcn", "pytorch", BATCH),
)
MIN_SECONDS = 25  # a ResNet-50 step compiles in tens of seconds


def run(ctx: PartContext) -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases
    from experiments.common import provenance
    from experiments.trainer import steps

    # the table's headline, in a call without bench
    ctx.record("machine", provenance.describe_machine())
    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    if ctx.tiny:  # the same code path on a CPU in seconds
        setup, batch, groups, dtype = (
            cases.Setup("vgg_tiny", (32, 32, 3), 2, 1, mesh),
            8,
            4,
            "float32",
        )
    else:
        setup, batch, groups, dtype = (
            cases.Setup("resnet50", (224, 224, 3), 5, 3, mesh),
            BATCH,
            32,
            "bfloat16",
        )
    for name, norm, preset, replicas in CASES:
        if ctx.time_left() < MIN_SECONDS:
            ctx.append("not_measured", f"{name}: out of time")
            continue
        replicas = min(replicas, batch)
        step = cases.time_train_step(
            setup,
            batch,
            conv="ws",
            ws_preset=preset,
            norm=norm,
            num_groups=groups,
            dtype=dtype,
            replicas_per_device=replicas,
        )
        ctx.append("steps", {"normalization": name, "replicas": replicas, **step})
