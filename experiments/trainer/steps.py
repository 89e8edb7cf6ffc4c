"""The per-replica train and eval steps: ``jax.vmap`` over a device's replicas, ``jax.shard_map`` over devices.

A *replica* is what the paper calls a device: it holds a micro-batch, computes its own batch statistics and
its own gradient. Normally there is one replica per device; ``replicas_per_device = r > 1`` runs r replicas on
each device with ``jax.vmap`` (the same maths as r more devices: per-replica statistics, gradients averaged
over all replicas). That emulates the paper's many-device setting on one CPU or GPU, and is how
``train_and_evaluate`` runs several fake CPU devices (see ``placement.py``).

Each replica draws its own batch from its in-memory shard (see ``data.py``), so the data order is a pure
function of ``(rng, step, replica)`` (the streams are in ``rng.py``). With ``data_order="replica"`` (the
default) each replica shuffles its whole shard, so which examples make up a step's global batch depends on the
replica count. With ``data_order="example"`` each of the global batch's G slots is its own stream, one per 1/G
of the training split: replica d with batch b reads streams d*b to d*b + b - 1 (its shard holds exactly those
when G divides the split's size), so the global batch at every step holds the same examples in the same order,
augmented alike, however it is split over replicas (the micro-batch study's setting: only the batch
statistics change).

Gradients are averaged over replicas (on a device, the gradient of its replicas' mean loss, in one backward
pass; then ``lax.pmean`` over devices); batch-norm statistics are per replica unless the
model was built with ``axis_name=AXIS`` and ``StepConfig.pool_replicas`` is set (``sync_batch_stats``: over the
global batch); the running averages are averaged after every step so every replica keeps the same.

With ``accumulate_steps = k > 1`` each replica's batch runs as k micro-batches in turn, each with its own
batch statistics, and the gradients are averaged before one update (``accumulation.py`` says what happens to
the running statistics).
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

from experiments.common.mesh import AXIS
from experiments.trainer import accumulation
from experiments.trainer import rng as rng_streams
from experiments.trainer.input import augment

DATA_ORDERS = ("replica", "example")


class TrainState(train_state.TrainState):
    """Step, params, optimizer state, plus running batch statistics and the run's base RNG key."""

    batch_stats: Any = struct.field(default_factory=dict)
    # A raw uint32 key: the data order and the augmentation derive from it (see rng.py).
    rng: jax.Array = struct.field(default=None)


# Keywords only: a field added later must not shift the meaning of positional arguments.
@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """What the traced steps need to know, fixed for a run."""

    per_replica_batch: int
    steps_per_epoch: int
    crop_padding: int
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    replicas_per_device: int = 1
    # Batch statistics synced over all replicas (a model built with axis_name=AXIS): a device's replicas run
    # as one batch (see _pooled_gradient).
    pool_replicas: bool = False
    data_order: str = "replica"  # replica | example (see the module docstring)
    # The host already drew and augmented each replica's batch (experiments/trainer/input/stream.py): the step's
    # images/labels are the batch itself, (replicas, per_replica_batch, ...), not the replica's shard.
    streamed: bool = False
    # Micro-batches per replica and step, run in turn, gradients averaged (see accumulation.py).
    accumulate_steps: int = 1

    def __post_init__(self):
        if self.data_order not in DATA_ORDERS:
            raise ValueError(
                f"unknown data_order {self.data_order!r}; choose one of {', '.join(DATA_ORDERS)}."
            )
        k = self.accumulate_steps
        if not isinstance(k, int) or k < 1 or self.per_replica_batch % k:
            raise ValueError(
                f"accumulate_steps={k!r} must be a positive integer that divides the per-replica batch "
                f"of {self.per_replica_batch}."
            )

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, per_replica_batch: int, steps_per_epoch: int
    ):
        return cls(
            per_replica_batch=per_replica_batch,
            steps_per_epoch=steps_per_epoch,
            crop_padding=config.crop_padding,
            flip=config.horizontal_flip,
            mean=tuple(config.normalize_mean),
            std=tuple(config.normalize_std),
            replicas_per_device=config.replicas_per_device,
            pool_replicas=config.sync_batch_stats,
            data_order=config.data_order,
            accumulate_steps=config.accumulate_steps,
        )


def batch_indices(
    rng: jax.Array, step: jax.Array, shard_len: int, cfg: StepConfig, replica: jax.Array
) -> jax.Array:
    """Replica ``replica``'s example indices at ``step``: a fresh permutation of its shard every epoch."""
    epoch, position = step // cfg.steps_per_epoch, step % cfg.steps_per_epoch
    if cfg.data_order == "example":
        return _stream_indices(rng, epoch, position, shard_len, cfg.per_replica_batch, replica)
    permutation = jax.random.permutation(rng_streams.data_order_key(rng, epoch, replica), shard_len)
    return lax.dynamic_slice(
        permutation, (position * cfg.per_replica_batch,), (cfg.per_replica_batch,)
    )


def _stream_indices(rng, epoch, position, shard_len: int, batch: int, replica) -> jax.Array:
    """``data_order="example"``: slot k of the replica's batch is stream ``replica * batch + k``, which owns
    the k-th 1/batch of the replica's shard and walks a fresh permutation of it every epoch."""
    stream_len = shard_len // batch  # = steps per epoch

    def one(slot):
        key = rng_streams.data_order_key(rng, epoch, replica * batch + slot)
        return slot * stream_len + jax.random.permutation(key, stream_len)[position]

    return jax.vmap(one)(jnp.arange(batch))


def _augment(rng, step, images, cfg: StepConfig, replica) -> jax.Array:
    """Random crop and flip: one key per replica, or (``data_order="example"``) one per stream, so that an
    example's augmentation does not depend on how the global batch is split."""
    if cfg.data_order == "example":
        streams = replica * cfg.per_replica_batch + jnp.arange(cfg.per_replica_batch)
        one = lambda stream, image: augment.augment(
            rng_streams.augmentation_key(rng, step, stream), image[None], cfg.crop_padding, cfg.flip
        )[0]
        return jax.vmap(one)(streams, images)
    key = rng_streams.augmentation_key(rng, step, replica)
    return augment.augment(key, images, cfg.crop_padding, cfg.flip)


def draw_batch(
    rng: jax.Array,
    step: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    cfg: StepConfig,
    replica: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Replica ``replica``'s training batch at ``step`` from its shard ``images``/``labels``.

    Returns:
      ``(x, labels)``: the batch augmented and normalized (float32), and its labels.
    """
    indices = batch_indices(rng, step, images.shape[0], cfg, replica)
    x = _augment(rng, step, images[indices], cfg, replica)
    return augment.normalize(x, cfg.mean, cfg.std), labels[indices]


def replica_ids(replicas_per_device: int) -> jax.Array:
    """Global indices of this device's replicas (inside ``shard_map``): device-major."""
    return lax.axis_index(AXIS) * replicas_per_device + jnp.arange(replicas_per_device)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _loss(state: TrainState, params, batch_stats, x: jax.Array, batch_labels: jax.Array):
    """A batch's mean cross-entropy, with (updated batch statistics, metrics) as aux."""
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": batch_stats},
        x,
        train=True,
        mutable=["batch_stats"],
    )
    loss = jnp.mean(_cross_entropy(logits, batch_labels))
    accuracy = jnp.mean((jnp.argmax(logits, -1) == batch_labels).astype(jnp.float32))
    return loss, (updates.get("batch_stats", {}), {"loss": loss, "accuracy": accuracy})


def _replica_batch(state: TrainState, images, labels, cfg: StepConfig, replica):
    """The replica's normalized batch: drawn from its shard, or (streamed) as the host made it."""
    if cfg.streamed:
        return augment.normalize(images, cfg.mean, cfg.std), labels
    return draw_batch(state.rng, state.step, images, labels, cfg, replica)


def _replica_batches(state: TrainState, images: jax.Array, labels: jax.Array, cfg: StepConfig):
    """This device's replicas' batches, ``(r, b, ...)`` and their labels ``(r, b)``."""
    draw = jax.vmap(lambda im, lb, r: _replica_batch(state, im, lb, cfg, r))
    return draw(images, labels, replica_ids(cfg.replicas_per_device))


def _replicas_gradient(
    state: TrainState, params, batch_stats, x: jax.Array, batch_labels: jax.Array
):
    """The device's replicas, each on its own batch and statistics: their mean gradient, each one's statistics.

    Replica i normalizes ``x[i]`` with its own batch statistics and updates its own running statistics
    ``batch_stats[i]`` (``jax.vmap`` over the replicas' forward passes, the parameters shared). The gradient is
    that of the replicas' mean loss, ``(1/r) Σ_i L_i``, which is the mean of their gradients, computed in one
    backward pass: a per-replica gradient (``vmap`` of ``grad``) would hold r copies of every parameter's
    gradient and compute each kernel's as r small convolutions. Returns the mean gradient and, per replica
    (leading axis r), the updated batch statistics and metrics.
    """

    def mean_loss(params):
        losses, aux = jax.vmap(functools.partial(_loss, state, params))(
            batch_stats, x, batch_labels
        )
        return jnp.mean(losses), aux

    (_, (batch_stats, metrics)), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
    return grads, batch_stats, metrics


def _pooled_gradient(state: TrainState, params, batch_stats, x: jax.Array, batch_labels: jax.Array):
    """A device's replicas' batches ``x`` (r, b, ...) as one batch of r·b: its gradient, statistics, metrics.

    With batch statistics synced over all replicas every replica normalizes alike, so the mean loss over the
    pooled batch is the mean of the replicas' losses (their batches are equal in size) and its gradient their
    mean gradient: the same maths as vmapped replicas, which cannot average statistics over their vmapped axis
    and the devices' axis in one collective inside ``shard_map``.
    """
    loss = functools.partial(_loss, state)
    (_, (batch_stats, metrics)), grads = jax.value_and_grad(loss, has_aux=True)(
        params, batch_stats, x.reshape(-1, *x.shape[2:]), batch_labels.reshape(-1)
    )
    return grads, batch_stats, metrics


def _mean_over_replicas(tree):
    """Mean over this device's replicas (the vmapped leading axis), then over devices: the global mean."""
    return lax.pmean(jax.tree.map(lambda a: jnp.mean(a, axis=0), tree), AXIS)


def _per_device_train_step(
    state: TrainState, images: jax.Array, labels: jax.Array, cfg: StepConfig
):
    # images (r, shard, H, W, C): this device's replicas' shards.
    # Differentiate with respect to a device-varying copy of the parameters, so that each device's gradient
    # is its own, the mean over its replicas (for replicated parameters shard_map's autodiff would sum it
    # over devices); then average over devices, as pmap-era data parallelism does.
    local_params = lax.pcast(state.params, AXIS, to="varying")
    x, batch_labels = _replica_batches(state, images, labels, cfg)
    k = cfg.accumulate_steps
    if cfg.pool_replicas:
        gradient = functools.partial(_pooled_gradient, state)
        pooled = accumulation.accumulate(
            gradient, local_params, state.batch_stats, x, batch_labels, k, AXIS
        )
        grads, batch_stats, metrics = lax.pmean(pooled, AXIS)
    else:
        # Every replica starts from the step's running statistics and carries its own through its batch.
        r = cfg.replicas_per_device
        stats = jax.tree.map(lambda a: jnp.broadcast_to(a, (r, *a.shape)), state.batch_stats)
        gradient = functools.partial(_replicas_gradient, state)
        grads, batch_stats, metrics = accumulation.accumulate(
            gradient, local_params, stats, x, batch_labels, k, AXIS
        )
        grads = lax.pmean(grads, AXIS)  # already the mean over this device's replicas
        # Each replica updated its running statistics from its own micro-batch; averaging them keeps one
        # model.
        batch_stats, metrics = _mean_over_replicas((batch_stats, metrics))
    # optax mixes its int32 step count with floats (Adam's bias correction): allow that promotion here,
    # whatever the caller's (our tests run everything else under 'strict').
    with jax.numpy_dtype_promotion("standard"):
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics.update(
        grad_norm=optax.tree.norm(grads),
        # Checked on the host before any checkpoint: non-finite parameters are never saved.
        param_norm=optax.tree.norm(new_state.params),
    )
    return new_state, metrics


def _replica_eval_sums(state: TrainState, images, labels, mask, batch_index, batch: int, cfg):
    start = batch_index * batch
    take = lambda a: lax.dynamic_slice_in_dim(a, start, batch)
    x = augment.normalize(take(images), cfg.mean, cfg.std)
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    )
    batch_labels, batch_mask = take(labels), take(mask)
    correct = (jnp.argmax(logits, -1) == batch_labels).astype(jnp.float32)
    # Top-5: the label among the five largest logits (all of them when there are fewer classes).
    _, top = lax.top_k(logits, min(5, logits.shape[-1]))
    correct_top5 = jnp.any(top == batch_labels[:, None], axis=-1).astype(jnp.float32)
    return {
        "loss": jnp.sum(_cross_entropy(logits, batch_labels) * batch_mask),
        "correct": jnp.sum(correct * batch_mask),
        "correct_top5": jnp.sum(correct_top5 * batch_mask),
        "count": jnp.sum(batch_mask),
    }


def _per_device_eval_step(state, images, labels, mask, batch_index, batch: int, cfg):
    per_replica = jax.vmap(
        functools.partial(_replica_eval_sums, batch=batch, cfg=cfg),
        in_axes=(None, 0, 0, 0, None),
    )
    sums = per_replica(state, images, labels, mask, batch_index)
    return lax.psum(jax.tree.map(lambda a: jnp.sum(a, axis=0), sums), AXIS)


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


def make_eval_step(mesh: Mesh, cfg: StepConfig, per_replica_batch: int) -> Callable[..., dict]:
    """``eval_step(state, images, labels, mask, batch_index) -> sums`` of loss, correct and count."""
    mapped = jax.shard_map(
        functools.partial(_per_device_eval_step, batch=per_replica_batch, cfg=cfg),
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
        rng_streams.init_key(rng), jnp.zeros((1, *image_shape), jnp.float32), train=False
    )
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=rng,
    )
