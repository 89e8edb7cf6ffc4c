r"""Gradient accumulation (``config.accumulate_steps = k``, Caffe's ``iter_size``): a large batch in the memory
of a small one.

Each replica's batch of b examples is split into k micro-batches of b/k (micro-batch j: its examples
j·b/k to (j+1)·b/k - 1), run one after another with ``lax.scan``, each normalizing with its own batch
statistics; their gradients are averaged,

.. math::

   g = \frac{1}{k} \sum_{j=0}^{k-1} \nabla_\theta L_j(\theta),

which with equal micro-batches is the gradient of the mean loss over all b examples, and the optimizer
updates once. Each micro-batch's gradient is taken inside the scan, so a step holds the activations of one
micro-batch (of every replica on the device) at a time, plus a parameter-sized sum of gradients; the replica's
whole batch is drawn and augmented up front (its input images only), so every k reads the same examples.

The running statistics (``batch_stats``) are carried through the micro-batches in order: each replica updates
its running averages k times per step, micro-batch j starting from where micro-batch j - 1 left them; the
replicas' running averages are then averaged after the step, as without accumulation. With a momentum m
(Flax's sense), running value R at the start of the step and micro-batch statistics S_j, against k vmapped
replicas of b/k (``replicas_per_device``; the same examples in the same split):

* no batch statistics (GN, no norm): the same step as one batch of b, up to float rounding.
* BN (``nn.BatchNorm``): the same gradient, loss and parameters as the k replicas (a training forward pass
  normalizes with the micro-batch's own statistics and never reads the running averages), but the running
  averages after the step are :math:`m^k R + (1 - m) \sum_j m^{k-1-j} S_j` (k updates in turn, the last
  micro-batch weighted most), where the replicas' are :math:`m R + (1 - m) \frac{1}{k} \sum_j S_j`.
* EstBN / BCN (:class:`wsjax.EstimatedBatchNorm`, which normalizes with its just-updated running averages):
  the running averages are updated k times in the same way, and micro-batch j is normalized with averages that
  already hold micro-batches 0..j of this step; its outputs, loss and gradient therefore differ from the k
  replicas', each of which normalizes with the step's starting averages updated by its own micro-batch alone.
  The step trains as k micro-batches in a row would, with one optimizer update.

With synced batch statistics (``sync_batch_stats``) micro-batch j of all replicas forms one batch, its
statistics synced over devices, and the shared running averages are carried through the micro-batches alike.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def accumulate(
    gradient: Callable,
    params,
    batch_stats,
    x: jax.Array,
    batch_labels: jax.Array,
    k: int,
    axis_name: str,
):
    """``gradient(params, batch_stats, x, labels)`` over k micro-batches of every replica's batch, in turn.

    Args:
      gradient: one (micro-)batch's ``(gradient, updated batch_stats, metrics)``.
      params: the parameters (device-varying inside ``shard_map``).
      batch_stats: the running statistics at the start of the step.
      x: the device's replicas' batches, ``(r, b, ...)``; micro-batch j is ``x[:, j*b/k:(j+1)*b/k]``.
      batch_labels: their labels, ``(r, b)``.
      k: the number of micro-batches; 1 calls ``gradient`` once on the whole batch.
      axis_name: the devices' ``shard_map`` axis.

    Returns:
      The micro-batches' mean gradient, the running statistics after the last one, and the mean of their
      metrics.
    """
    if k == 1:
        return gradient(params, batch_stats, x, batch_labels)

    def split(a):  # (r, b, ...) -> (k, r, b/k, ...)
        return jnp.swapaxes(a.reshape(a.shape[0], k, a.shape[1] // k, *a.shape[2:]), 0, 1)

    def micro_step(carry, batch):
        total, stats = carry
        grads, stats, metrics = gradient(params, stats, *batch)
        return (jax.tree.map(jnp.add, total, grads), stats), metrics

    # The statistics vary over devices from the first micro-batch on (each device's own data): a scan's carry
    # keeps one type, so they start as varying.
    varying_stats = jax.tree.map(lambda a: lax.pcast(a, axis_name, to="varying"), batch_stats)
    start = (jax.tree.map(jnp.zeros_like, params), varying_stats)
    (total, batch_stats), metrics = lax.scan(micro_step, start, (split(x), split(batch_labels)))
    mean_gradient = jax.tree.map(lambda g: g / k, total)
    return mean_gradient, batch_stats, jax.tree.map(lambda a: jnp.mean(a, axis=0), metrics)
