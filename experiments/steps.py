"""The per-device train and eval steps, mapped over every device with ``jax.shard_map`` inside ``jax.jit``.

Each device draws its own batch from its in-memory shard (see ``data.py``), so the data order is a pure
function of ``(rng, step, device)``. Gradients are averaged over devices with ``lax.pmean``; batch-norm
statistics are per device (the paper's micro-batch setting) unless the model was built with
``axis_name=AXIS``; the running averages are averaged after every step so every device keeps the same.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from experiments import augment

AXIS = "batch"


class TrainState(train_state.TrainState):
    """Step, params, optimizer state, plus running batch statistics and the run's base RNG key."""

    batch_stats: Any = struct.field(default_factory=dict)
    rng: jax.Array = struct.field(
        default=None
    )  # raw uint32 key: data order and augmentation derive from it


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the traced steps need to know, fixed for a run."""

    per_device_batch: int
    steps_per_epoch: int
    crop_padding: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, per_device_batch: int, steps_per_epoch: int
    ):
        return cls(
            per_device_batch,
            steps_per_epoch,
            config.crop_padding,
            config.horizontal_flip,
            tuple(config.normalize_mean),
            tuple(config.normalize_std),
        )


def batch_indices(rng: jax.Array, step: jax.Array, shard_len: int, cfg: StepConfig) -> jax.Array:
    """This device's example indices at ``step``: a fresh permutation of its shard every epoch."""
    epoch, position = step // cfg.steps_per_epoch, step % cfg.steps_per_epoch
    device = lax.axis_index(AXIS)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, 0), epoch), device)
    permutation = jax.random.permutation(key, shard_len)
    return lax.dynamic_slice(
        permutation, (position * cfg.per_device_batch,), (cfg.per_device_batch,)
    )


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _per_device_train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, cfg: StepConfig
):
    images, labels = images[0], labels[0]  # this device's block of the (devices, ...) arrays
    indices = batch_indices(state.rng, state.step, images.shape[0], cfg)
    batch_images, batch_labels = images[indices], labels[indices]
    aug_key = jax.random.fold_in(
        jax.random.fold_in(jax.random.fold_in(state.rng, 1), state.step), lax.axis_index(AXIS)
    )
    x = augment.normalize(
        augment.augment(aug_key, batch_images, cfg.crop_padding, cfg.flip), cfg.mean, cfg.std
    )

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(_cross_entropy(logits, batch_labels)), (
            logits,
            updates.get("batch_stats", {}),
        )

    # Differentiate this device's loss with respect to a device-varying copy of the parameters, so that
    # the gradient is this device's own (for replicated parameters shard_map's autodiff would sum it over
    # devices); then average it over devices, as pmap-era data parallelism does.
    local_params = lax.pcast(state.params, AXIS, to="varying")
    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
    grads = lax.pmean(grads, AXIS)
    # Without axis_name each device updated its running statistics from its own micro-batch; averaging
    # them keeps one model. (With axis_name they are already equal and this is a no-op.)
    batch_stats = lax.pmean(batch_stats, AXIS)
    # optax mixes its int32 step count with floats (Adam's bias correction): allow that promotion here,
    # whatever the caller's (our tests run everything else under 'strict').
    with jax.numpy_dtype_promotion("standard"):
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        "loss": lax.pmean(loss, AXIS),
        "accuracy": lax.pmean(
            jnp.mean((jnp.argmax(logits, -1) == batch_labels).astype(jnp.float32)), AXIS
        ),
        "grad_norm": optax.tree.norm(grads),
        # Checked on the host before any checkpoint: non-finite parameters are never saved.
        "param_norm": optax.tree.norm(new_state.params),
    }
    return new_state, metrics


def _per_device_eval_step(
    state: TrainState, images, labels, mask, batch_index, per_device_batch: int, cfg
):
    images, labels, mask = images[0], labels[0], mask[0]
    start = batch_index * per_device_batch
    take = lambda a: lax.dynamic_slice_in_dim(a, start, per_device_batch)
    x = augment.normalize(take(images), cfg.mean, cfg.std)
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    )
    batch_labels, batch_mask = take(labels), take(mask)
    correct = (jnp.argmax(logits, -1) == batch_labels).astype(jnp.float32)
    sums = {
        "loss": jnp.sum(_cross_entropy(logits, batch_labels) * batch_mask),
        "correct": jnp.sum(correct * batch_mask),
        "count": jnp.sum(batch_mask),
    }
    return lax.psum(sums, AXIS)


def make_train_step(
    mesh: Mesh, cfg: StepConfig
) -> Callable[[TrainState, jax.Array, jax.Array], tuple]:
    """``train_step(state, train_images, train_labels) -> (state, metrics)``, the state donated."""
    mapped = jax.shard_map(
        functools.partial(_per_device_train_step, cfg=cfg),
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS)),
        out_specs=(P(), P()),
    )
    return jax.jit(mapped, donate_argnums=0)


def make_eval_step(mesh: Mesh, cfg: StepConfig, per_device_batch: int) -> Callable[..., dict]:
    """``eval_step(state, images, labels, mask, batch_index) -> sums`` of loss, correct and count."""
    mapped = jax.shard_map(
        functools.partial(_per_device_eval_step, per_device_batch=per_device_batch, cfg=cfg),
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P()),
        out_specs=P(),
    )
    return jax.jit(mapped)


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, ...], seed: int
) -> TrainState:
    """Initializes parameters and statistics from ``seed`` (identically on every process)."""
    rng = jax.random.PRNGKey(seed)
    variables = model.init(
        jax.random.fold_in(rng, 2), jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=rng,
    )
