r"""BN's population statistics, re-estimated after training ("precise BN"), for a second final evaluation.

A BN network evaluates with running averages of the batch statistics it saw in training. Trained with one or
two images per replica, those averages come from tiny batches: a poor test accuracy can then be a mismatch
between the statistics the network trained with and those it is tested with, not damage to the trained
weights. Re-estimating the statistics separates the two: with the trained parameters fixed, about
``config.reestimate_bn_images`` training images (the first of every replica's shard, normalized, not
augmented) go through the network in training mode, ``B`` per replica at a time, each BN layer normalizing
with its batch's statistics; every layer's batch means :math:`\mu_k` and (biased) variances
:math:`\sigma_k^2` over the ``K`` batches give

.. math::

   \mu = \frac{1}{K}\sum_k \mu_k, \qquad
   \sigma^2 = \frac{1}{K}\sum_k \left(\sigma_k^2 + \mu_k^2\right) - \mu^2,

the mean and variance over all ``K·B·H·W`` positions, as every batch has ``B`` images (for the first layer
exactly the population's; deeper layers see inputs normalized with statistics of ``B`` images, as in
training). The test set is then evaluated with these in place of the running averages; the checkpointed
state keeps its own.

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
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common.mesh import AXIS
from experiments.trainer import model_factory
from experiments.trainer.input import augment

NEEDS_MEMORY = "reestimate_bn_images needs input_pipeline='memory': it reads the training images held in device memory."


def applies(config: ml_collections.ConfigDict) -> bool:
    """Whether the run re-estimates: asked for, and a fresh BN network (a checkpoint brings its own norm)."""
    return config.reestimate_bn_images > 0 and config.norm == "bn" and not config.init_from


def statistics_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The run's network with BN momentum 0, so that a training-mode call's new running statistics are the
    batch's own mean and variance; per replica (no ``axis_name``). Its parameters are the run's."""
    config = config.copy_and_resolve_references()
    config.bn_momentum = 0.0
    return model_factory.build_model(config, num_classes, axis_name=None)


def _replica_moments(params, zeros, images, batch_index, *, model, batch: int, mean, std):
    """One replica's batch: every BN layer's ``{"mean": μ_k, "var": σ_k² + μ_k²}``."""
    x = augment.normalize(lax.dynamic_slice_in_dim(images, batch_index * batch, batch), mean, std)
    _, updates = model.apply(
        {"params": params, "batch_stats": zeros}, x, train=True, mutable=["batch_stats"]
    )
    flat = traverse_util.flatten_dict(updates["batch_stats"])
    moments = {
        path: value + flat[(*path[:-1], "mean")] ** 2 if path[-1] == "var" else value
        for path, value in flat.items()
    }
    return traverse_util.unflatten_dict(moments)


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
      images_wanted: images to use in all (rounded up to whole batches on every replica, at most the split).
      batch: ``B``, images per replica and batch.
      mean, std: the input normalization.
    """
    replicas, per_replica = train_images.shape[:2]
    batch = min(batch, per_replica)
    batches = min(per_replica // batch, -(-images_wanted // (replicas * batch)))

    def per_device(params, zeros, images, batch_index):
        one = functools.partial(_replica_moments, model=model, batch=batch, mean=mean, std=std)
        sums = jax.vmap(one, in_axes=(None, None, 0, None))(params, zeros, images, batch_index)
        return lax.psum(jax.tree.map(lambda a: jnp.sum(a, axis=0), sums), AXIS)

    moments = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(AXIS), P()), out_specs=P())
    )

    def reestimate(params, batch_stats):
        zeros = jax.tree.map(jnp.zeros_like, batch_stats)
        totals = None
        for i in range(batches):  # float64 on the host: K may be in the thousands
            sums = jax.tree.map(
                lambda a: np.asarray(a, np.float64),
                jax.device_get(moments(params, zeros, train_images, jnp.int32(i))),
            )
            totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        k = batches * replicas
        flat = {path: total / k for path, total in traverse_util.flatten_dict(totals).items()}
        # E[x²] - μ² can round below 0 for a channel that is constant.
        population = {
            path: np.maximum(value - flat[(*path[:-1], "mean")] ** 2, 0.0)
            if path[-1] == "var"
            else value
            for path, value in flat.items()
        }
        stats = traverse_util.unflatten_dict(population)
        stats = jax.tree.map(lambda new, old: np.asarray(new, old.dtype), stats, batch_stats)
        # Replicated over the mesh as the state is (on every host alike: each computed the same).
        return jax.device_put(stats, NamedSharding(mesh, P())), k * batch

    return reestimate
