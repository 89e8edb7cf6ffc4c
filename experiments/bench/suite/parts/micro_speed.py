"""Part ``micro``: the micro-batch study's emulation on one device: 8 vmapped replicas x 1 image per step.

For each normalization of the study (``experiments/study/microbatch.py``), the study's model
(``configs/microbatch.py``: a 6-conv VGG on 28x28x1; Adam, as ``bench.cases.train_step`` times every step) with ``replicas_per_device=8`` and one image per
replica: training steps per second. After the first, the accelerator study's own cells
(``configs/microbatch_deep.py``: VGG16, SGD), BN with its global batch as 32 replicas x 1 image and as 1 x 32:
steps per second and the seconds of training one cell takes (its ``num_epochs`` of Fashion-MNIST's 60,000
images), which size the ``study`` part. Then the paper's own
setting, VGG16 WS+BCN on 32x32x3, 8 replicas x 1 image, if time is left.
"""

from __future__ import annotations

from typing import Any

from experiments.bench.suite.context import PartContext

REPLICAS = 8
MIN_SECONDS = 8
ORDER = [
    "BCN+WS",
    "BN",
    "GN+WS",
    "GN",
    "BN+WS",
]  # the study's, most wanted first (NORMALIZATIONS' names)


def steps_per_second(
    config, image_shape: tuple[int, int, int], repeats: int, calls: int, tx=None
) -> float:
    """Steps/s of ``config``'s train step on one device with its ``replicas_per_device`` replicas (optimizer
    ``tx``; by default the benchmark's Adam)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases
    from experiments.bench.timing import stepper, time_calls
    from experiments.trainer import steps

    mesh = Mesh(np.array(jax.devices()[:1]), (steps.AXIS,))
    setup = cases.Setup(config.model, image_shape, repeats, calls, mesh)
    run = stepper(*cases.train_step(setup, config, config.global_batch_size, tx))
    return 1.0 / time_calls(run, repeats, calls).median


def run(ctx: PartContext) -> None:
    from experiments.configs import microbatch as microbatch_config
    from experiments.study.grid import NORMALIZATIONS

    repeats, calls = (2, 2) if ctx.tiny else (5, 50)
    names = ["BCN+WS"] if ctx.tiny else ORDER
    for name in names:
        if ctx.time_left() < MIN_SECONDS:
            ctx.append("not_measured", f"{name}: out of time")
            continue
        conv, norm = NORMALIZATIONS[name]
        config = microbatch_config.get_config()
        config.update(
            conv=conv, norm=norm, replicas_per_device=REPLICAS, global_batch_size=REPLICAS
        )
        if ctx.tiny:
            config.update(model="vgg_tiny", num_groups=4)
        rate = steps_per_second(config, (28, 28, 1), repeats, calls)
        ctx.append("study_model", _row(name, config, rate))
        if name == names[0]:
            _study_cells(ctx, repeats, calls)
    if ctx.tiny or ctx.time_left() < 3 * MIN_SECONDS:
        return
    config = microbatch_config.get_config()
    config.update(
        model="vgg16",
        num_groups=32,
        conv="ws",
        norm="bcn",
        replicas_per_device=REPLICAS,
        global_batch_size=REPLICAS,
    )
    ctx.record(
        "vgg16_ws_bcn_32x32", _row("BCN+WS", config, steps_per_second(config, (32, 32, 3), 5, 20))
    )


def _study_cells(ctx: PartContext, repeats: int, calls: int) -> None:
    """BN's cells at the two ends of the accelerator study's range (its config, optimizer, replicas and
    steps): seconds per cell."""
    from experiments.configs import microbatch_deep
    from experiments.study.budget import cell_optimizer, cell_steps
    from experiments.study.grid import DEEP_PER_DEVICE_BATCHES

    for per_device in DEEP_PER_DEVICE_BATCHES:
        if ctx.time_left() < MIN_SECONDS:
            return
        config = microbatch_deep.get_config()
        config.update(conv="plain", norm="bn")
        config.replicas_per_device = config.global_batch_size // per_device
        if ctx.tiny:
            config.update(model="vgg_tiny", num_groups=4)
        rate = steps_per_second(config, (28, 28, 1), repeats, calls, cell_optimizer(config))
        _, steps = cell_steps(config)
        ctx.append(
            "study_cells",
            {**_row("BN", config, rate), "steps": steps, "cell_train_s": steps / rate},
        )


def _row(name: str, config, rate: float) -> dict[str, Any]:
    return {
        "normalization": name,
        "model": config.model,
        "replicas": config.replicas_per_device,
        "images_per_replica": config.global_batch_size // config.replicas_per_device,
        "steps_per_s": rate,
    }
