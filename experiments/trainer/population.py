r"""BN's population statistics, re-estimated after training ("precise BN"), for a second final evaluation.

A BN network evaluates with running averages of the batch statistics it saw in training. Trained with one or
two images per replica, those averages come from tiny batches: a poor test accuracy can then be a mismatch
between the statistics the network trained with and those it is tested with, not damage to the trained
weights. Re-estimating the statistics separates the two: with the trained parameters fixed, about
``config.reestimate_bn_images`` training images (the first of every device's shard, normalized, not
augmented) go through the network in training mode, ``B`` per device at a time, whatever the replica split
(``B`` is the evaluation's batch per device, so that cells trained with 1 and with 32 images per replica are
re-estimated alike), each BN layer normalizing with its batch's statistics; every layer's batch means
:math:`\mu_k` and (biased) variances :math:`\sigma_k^2` over the ``K`` batches give

.. math::

   \mu = \frac{1}{K}\sum_k \mu_k, \qquad
   \sigma^2 = \frac{1}{K}\sum_k \sigma_k^2 + \frac{1}{K}\sum_k (\mu_k - \mu)^2,

the mean and variance over all ``K·B·H·W`` positions (within-batch plus between-batch variance, every
batch's moments gathered to the host and combined there in float64: a channel whose mean dwarfs its spread
keeps its variance), as every
batch has ``B`` images (for the first layer
exactly the population's; deeper layers see inputs normalized with the statistics of their batch of ``B``
images). The test set is then evaluated with these in place of the running averages; the checkpointed state
keeps its own. The time it takes counts in the run's ``train_wall_time_s``.

Only ``norm="bn"``: BCN's estimated batch norm already normalizes with its running estimates while training,
and GN has no batch statistics. The images are those in device memory (the memory input pipeline).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common.mesh import AXIS
from experiments.trainer import model_factory
from experiments.trainer.input import augment

NEEDS_MEMORY = (
    "reestimate_bn_images needs input_pipeline='memory': it reads the training images held in device "
    "memory."
)


def applies(config: ml_collections.ConfigDict) -> bool:
    """Whether the run re-estimates: asked for, and a fresh BN network (a checkpoint brings its own norm)."""
    return config.reestimate_bn_images > 0 and config.norm == "bn" and not config.init_from


def statistics_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The run's network with BN momentum 0, so that a training-mode call's new running statistics are the
    batch's own mean and variance; per replica (no ``axis_name``). Its parameters are the run's."""
    config = config.copy_and_resolve_references()
    config.bn_momentum = 0.0
    return model_factory.build_model(config, num_classes, axis_name=None)


def _device_moments(params, zeros, images, batch_index, *, model, batch: int, mean, std):
    """One device's batch: every BN layer's ``{"mean": μ_k, "var": σ_k²}``, with a leading device axis.

    ``images`` is the device's replicas' shards ``(r, per_replica, ...)``, read as one run of images.
    """
    images = images.reshape(-1, *images.shape[2:])
    x = augment.normalize(lax.dynamic_slice_in_dim(images, batch_index * batch, batch), mean, std)
    _, updates = model.apply(
        {"params": params, "batch_stats": zeros}, x, train=True, mutable=["batch_stats"]
    )
    # Momentum 0: this batch's own mean and variance.
    return jax.tree.map(lambda a: a[None], updates["batch_stats"])


def combine(means: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The population's ``(μ, σ²)`` from ``K`` equal batches' means and variances, ``(K, C)`` each: the mean
    of the means, and the mean within-batch variance plus the variance of the means, in float64 (so that a
    channel whose mean dwarfs its spread keeps its variance, which ``E[x²] - μ²`` in float32 would lose)."""
    means, variances = np.asarray(means, np.float64), np.asarray(variances, np.float64)
    return means.mean(axis=0), variances.mean(axis=0) + means.var(axis=0)


def make_reestimate(
    mesh: Mesh,
    model: nn.Module,
    train_images: jax.Array,
    images_wanted: int,
    batch: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Callable[[Any, Any], tuple[Any, int]]:
    """``reestimate(params, batch_stats) -> (population batch_stats, images used)``.

    Args:
      mesh: the run's device mesh.
      model: :func:`statistics_model`'s network.
      train_images: the memory pipeline's training split, ``(replicas, per_replica, H, W, C)`` uint8.
      images_wanted: images to use in all (rounded up to whole batches on every device, at most the split).
      batch: ``B``, images per device and batch.
      mean, std: the input normalization.
    """
    devices = mesh.devices.size
    per_device = train_images.shape[0] * train_images.shape[1] // devices
    batch = min(batch, per_device)
    batches = min(per_device // batch, -(-images_wanted // (devices * batch)))

    one = functools.partial(_device_moments, model=model, batch=batch, mean=mean, std=std)
    moments = jax.jit(
        jax.shard_map(one, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()), out_specs=P(AXIS))
    )

    def reestimate(params, batch_stats):
        zeros = jax.tree.map(jnp.zeros_like, batch_stats)
        per_batch: list[dict] = []  # each batch's flattened moments, (devices, C) float64
        for i in range(batches):
            out = multihost_utils.process_allgather(
                moments(params, zeros, train_images, jnp.int32(i)), tiled=True
            )
            flat = traverse_util.flatten_dict(out)
            per_batch.append({path: np.asarray(v, np.float64) for path, v in flat.items()})
        population = {}
        for path in per_batch[0]:
            if path[-1] == "mean":
                layer = path[:-1]
                means, variances = (
                    np.concatenate([b[(*layer, name)] for b in per_batch])
                    for name in ("mean", "var")
                )
                population[path], population[(*layer, "var")] = combine(means, variances)
        stats = traverse_util.unflatten_dict(population)
        stats = jax.tree.map(lambda new, old: np.asarray(new, old.dtype), stats, batch_stats)
        # Replicated over the mesh as the state is (on every host alike: each computed the same).
        return jax.device_put(stats, NamedSharding(mesh, P())), batches * devices * batch

    return reestimate
