"""The benchmark cases: WS overhead, training throughput, input pipeline, inference with folded kernels."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import wsjax
from experiments.bench.peaks import device_precision_and_peak
from experiments.bench.timing import stepper, time_calls, time_interleaved
from experiments.configs import default
from experiments.trainer import model_factory, steps


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every case shares."""

    model: str  # a model_factory name
    image_shape: tuple[int, int, int]
    repeats: int
    calls: int
    mesh: Mesh


def config_for(setup: Setup, **overrides: Any) -> ml_collections.ConfigDict:
    """``configs/default.py`` with the setup's model and ``overrides`` (any config field)."""
    config = default.get_config()
    config.model = setup.model
    config.num_groups = (
        min(config.num_groups, 4) if setup.model == "vgg_tiny" else config.num_groups
    )
    config.update(overrides)
    return config


def train_step(
    setup: Setup,
    config: ml_collections.ConfigDict,
    per_device_batch: int,
    tx: optax.GradientTransformation | None = None,
):
    """``(step, state, images, labels)``: the jitted train step and its device-resident synthetic data.

    Each device's ``per_device_batch`` images are split over its ``config.replicas_per_device`` replicas, as
    training splits them; each replica's shard holds 4 of its batches. The optimizer is ``tx``, by default
    Adam at a constant 2.5e-4 whatever ``config`` says (the benchmark's step; a schedule changes no step's
    work).
    """
    devices, replicas = setup.mesh.devices.size, config.replicas_per_device
    if per_device_batch % replicas:
        raise ValueError(
            f"{per_device_batch} images per device do not split over {replicas} replicas"
        )
    per_replica = per_device_batch // replicas
    model = model_factory.build_model(config, 10, None)
    state = steps.create_train_state(model, tx or optax.adam(2.5e-4), setup.image_shape, 0)
    state = jax.device_put(state, NamedSharding(setup.mesh, P()))
    shards, shard = devices * replicas, 4 * per_replica
    rng = np.random.default_rng(0)
    sharding = NamedSharding(setup.mesh, P(steps.AXIS))
    images = jax.device_put(
        rng.integers(0, 256, (shards, shard, *setup.image_shape), dtype=np.uint8), sharding
    )
    labels = jax.device_put(rng.integers(0, 10, (shards, shard)).astype(np.int32), sharding)
    cfg = steps.StepConfig.from_config(config, per_replica_batch=per_replica, steps_per_epoch=4)
    return steps.make_train_step(setup.mesh, cfg), state, images, labels


@dataclasses.dataclass(frozen=True)
class StepCase:
    """A compiled train step ready to time: its config, a closure running it, and its FLOPs."""

    config: ml_collections.ConfigDict
    run: Any
    flops: float | None


def _step_case(setup: Setup, per_device_batch: int, **overrides: Any) -> StepCase:
    config = config_for(setup, **overrides)
    step, state, images, labels = train_step(setup, config, per_device_batch)
    flops = step_flops(step, state, images, labels)
    return StepCase(config, stepper(step, state, images, labels), flops)


def time_train_step(setup: Setup, per_device_batch: int, **overrides: Any) -> dict[str, Any]:
    case = _step_case(setup, per_device_batch, **overrides)
    timing = time_calls(case.run, setup.repeats, setup.calls)
    return _step_result(setup, case, per_device_batch, timing)


def _step_result(setup: Setup, case: StepCase, per_device_batch: int, timing) -> dict[str, Any]:
    config, flops = case.config, case.flops
    global_batch = per_device_batch * setup.mesh.devices.size
    result = {
        "per_device_batch": per_device_batch,
        **{k: config[k] for k in ("model", "conv", "ws_apply_to", "norm", "dtype")},
        "step_time_s": timing.as_dict(),
        "images_per_s": global_batch / timing.median,
        "flops_per_step": flops,
        "achieved_flops_per_s": flops / timing.median if flops else None,
    }
    # MFU against the peak of the arithmetic XLA uses (float32 runs as TF32 on recent NVIDIA GPUs).
    precision, peak = device_precision_and_peak(jax.devices()[0], config.dtype)
    result.update(matmul_precision=precision, peak_flops_per_s=peak)
    result["mfu"] = (
        result["achieved_flops_per_s"] / (peak * setup.mesh.devices.size)
        if peak and flops
        else None
    )
    return result


def step_flops(step, *args) -> float | None:
    """FLOPs of one compiled step, from XLA's cost analysis (None where the backend gives none)."""
    analysis = step.lower(*args).compile().cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return float(analysis.get("flops", 0.0)) or None


def ws_overhead(setup: Setup, per_device_batch: int, **overrides: Any) -> dict[str, Any]:
    """The same train step with WSConv vs nn.Conv (BCN both), timed in turns in one run.

    WSConv twice: ``apply_to='auto'`` (what the experiments use; ``ws``, ``ratio``) and ``'kernel'`` (the
    PyTorch reference's way and the library default; ``ws_kernel``, ``kernel_ratio``). ``overrides``: further
    config fields for all three (e.g. ``dtype='bfloat16'``).
    """
    cases = {
        "ws": _step_case(
            setup, per_device_batch, conv="ws", ws_apply_to="auto", norm="bcn", **overrides
        ),
        "ws_kernel": _step_case(
            setup, per_device_batch, conv="ws", ws_apply_to="kernel", norm="bcn", **overrides
        ),
        "plain": _step_case(setup, per_device_batch, conv="plain", norm="bcn", **overrides),
    }
    timings = time_interleaved({k: c.run for k, c in cases.items()}, setup.repeats, setup.calls)
    results = {k: _step_result(setup, c, per_device_batch, timings[k]) for k, c in cases.items()}
    plain = timings["plain"].median
    return {
        "per_device_batch": per_device_batch,
        "ws_step_s": timings["ws"].median,
        "plain_step_s": plain,
        "ratio": timings["ws"].median / plain,
        "kernel_ratio": timings["ws_kernel"].median / plain,
        **results,
    }


def small_map_conv(setup: Setup, per_device_batch: int) -> dict[str, Any]:
    """The WS+BCN step with wsjax.cpu.conv_general_dilated (conv_impl='auto') vs lax's convolution everywhere."""
    auto = time_train_step(setup, per_device_batch, conv="ws", norm="bcn", conv_impl="auto")
    xla = time_train_step(setup, per_device_batch, conv="ws", norm="bcn", conv_impl="xla")
    return {
        "per_device_batch": per_device_batch,
        "auto_step_s": auto["step_time_s"],
        "xla_step_s": xla["step_time_s"],
        "speedup": xla["step_time_s"]["median"] / auto["step_time_s"]["median"],
    }


def input_pipeline(setup: Setup, per_device_batch: int, step_images_per_s: float) -> dict[str, Any]:
    """Images/s that drawing, augmenting and normalizing batches from device memory delivers, alone.

    Draws exactly as the train step does (``steps.draw_batch``: the same indices and augmentation keys).
    """
    config = config_for(setup)
    _, state, images, labels = train_step(setup, config, per_device_batch)
    cfg = steps.StepConfig.from_config(
        config, per_replica_batch=per_device_batch, steps_per_epoch=4
    )

    def draw(step, images, labels):
        def per_device(images, labels):
            replica = steps.replica_ids(1)[0]
            x, y = steps.draw_batch(state.rng, step, images[0], labels[0], cfg, replica)
            return x[None], y[None]

        return jax.shard_map(
            per_device,
            mesh=setup.mesh,
            in_specs=(P(steps.AXIS), P(steps.AXIS)),
            out_specs=P(steps.AXIS),
        )(images, labels)

    draw = jax.jit(draw)
    counter = iter(range(10**9))
    timing = time_calls(
        lambda: draw(jnp.int32(next(counter) % 4), images, labels), setup.repeats, setup.calls
    )
    delivered = per_device_batch * setup.mesh.devices.size / timing.median
    return {
        "per_device_batch": per_device_batch,
        "batch_time_s": timing.as_dict(),
        "images_per_s": delivered,
        "step_consumes_images_per_s": step_images_per_s,
        "headroom": delivered / step_images_per_s,
    }


def inference(setup: Setup, batch: int) -> dict[str, Any]:
    """Evaluation forward pass: WS model vs the same weights folded into plain convs."""
    config = config_for(setup, conv="ws", norm="bcn")
    model = model_factory.build_model(config, 10, None)
    x = jax.random.normal(jax.random.key(0), (batch, *setup.image_shape))
    variables = model.init(jax.random.key(1), x[:1], train=False)
    folded = wsjax.fold_weight_standardization(model, variables, x[:1], train=False)
    plain = model_factory.build_model(config_for(setup, conv="plain", norm="bcn"), 10, None)
    ws_apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    plain_apply = jax.jit(lambda v, x: plain.apply(v, x, train=False))
    max_diff = float(jnp.max(jnp.abs(ws_apply(variables, x) - plain_apply(folded, x))))
    ws_t = time_calls(lambda: ws_apply(variables, x), setup.repeats, setup.calls)
    plain_t = time_calls(lambda: plain_apply(folded, x), setup.repeats, setup.calls)
    return {
        "batch": batch,
        "ws_s": ws_t.as_dict(),
        "folded_s": plain_t.as_dict(),
        "speedup": ws_t.median / plain_t.median,
        "max_abs_output_difference": max_diff,
    }
