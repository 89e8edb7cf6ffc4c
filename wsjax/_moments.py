"""Per-output-channel moments of a kernel, in the two forms the standardizations need, and kernel checks.

A kernel is in Flax layout ``(..., in_features // groups, out_features)``: each output channel (last axis) has
``fan_in`` entries, all the other axes. Moments are computed in float32 (float64 for float64 kernels) whatever
the kernel's dtype.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from wsjax._dtypes import stats_dtype


def check_eps(eps: Any, caller: str) -> None:
    """Refuses a negative or NaN ``eps`` (a traced one is not checked)."""
    if isinstance(eps, (int, float)) and (eps < 0 or math.isnan(eps)):
        raise ValueError(f"{caller}: eps must be >= 0, got {eps}.")


def fan_in(w: jax.Array, caller: str) -> int:
    """Validates a kernel's rank and returns its fan-in (entries per output channel)."""
    if jnp.ndim(w) < 2:
        raise ValueError(
            f"{caller}: the kernel must have rank >= 2, (..., in_features // groups, out_features); "
            f"got shape {jnp.shape(w)}."
        )
    return math.prod(jnp.shape(w)[:-1])


def centered_and_sum_sq(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-output-channel ``w - mean`` and ``sum((w - mean)**2)`` in the statistics dtype.

    One pass over the kernel for both sums, shifted for accuracy: with ``d = w - k`` for ``k`` one entry of
    the channel, ``Σ(w - mean)² = Σd² - (Σd)²/n`` and ``w - mean = d - Σd/n``. The shift keeps ``Σd/n`` of the
    order of the standard deviation, so the subtraction does not cancel even for kernels with a large mean
    (the unshifted ``E[w²] - E[w]²`` would). The result does not depend on ``k``, so no gradient flows
    through it. One pass instead of two matters at small batches, where the kernels' traffic is a good part
    of a step.
    """
    w = w.astype(stats_dtype(w.dtype))
    reduce_axes = tuple(range(w.ndim - 1))
    fan_in = math.prod(w.shape[:-1])
    shift = lax.stop_gradient(w[(slice(0, 1),) * (w.ndim - 1)])  # keepdims: (1, ..., 1, out)
    d = w - shift
    sum_d = jnp.sum(d, axis=reduce_axes, keepdims=True)
    sum_d_sq = jnp.sum(jnp.square(d), axis=reduce_axes, keepdims=True)
    mean_d = sum_d / fan_in
    sum_sq = jnp.maximum(sum_d_sq - sum_d * mean_d, 0.0)
    return d - mean_d, sum_sq


@jax.custom_jvp
def std_from_var(var: jax.Array) -> jax.Array:
    r"""``sqrt(var)``, with the derivative taken as 0 where ``var = 0`` (plain ``sqrt``'s is infinite there).

    The conventions that add eps to the standard deviation, :math:`\hat w = c / (\sigma + \epsilon)` with
    :math:`c = w - \mu`, meet :math:`\sigma = 0` for a channel of equal entries (a zero-initialized or pruned
    channel). Their true derivative there is :math:`(I - \tfrac{1}{n} \mathbf{1}\mathbf{1}^\top) / \epsilon`:
    the :math:`\sigma` term enters multiplied by :math:`c = 0`, and :math:`\partial \sigma^2 / \partial w =
    2c / (n - k)` is 0 too. Autodiff through plain ``sqrt`` computes it as :math:`0 \cdot \infty` = NaN, which
    one such channel spreads to every parameter through the optimizer. Elsewhere this is ``sqrt``'s own
    derivative, and the value is ``jnp.sqrt(var)`` bit for bit.
    """
    return jnp.sqrt(var)


@std_from_var.defjvp
def _std_from_var_jvp(
    primals: tuple[jax.Array], tangents: tuple[jax.Array]
) -> tuple[jax.Array, jax.Array]:
    (var,), (d_var,) = primals, tangents
    std = jnp.sqrt(var)
    positive = var > 0
    d_std = jnp.where(positive, d_var / (2 * jnp.where(positive, std, 1)), jnp.zeros_like(d_var))
    return std, d_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def mean_and_var(w: jax.Array, ddof: int) -> tuple[jax.Array, jax.Array]:
    """Per-output-channel mean and ``Σ(w - mean)² / (fan_in - ddof)`` from the raw sums ``Σw`` and ``Σw²``.

    Raw sums because XLA:CPU fuses ``Σw²`` into a read-only reduction but writes ``w - mean`` out in full
    before reducing it, which costs as much as the statistics themselves. The price is cancellation in
    ``Σw² - fan_in·mean²``: the variance's relative error grows like ``eps·(1 + mean²/var)``, about 1e-5 at
    ``|mean| = 10 std`` and 2e-4 at 30 in float32 (tested); trained WS kernels stay near ``mean ≈ 0``.
    :meth:`wsjax.Standardization.kernel` does not take this path.
    """
    reduce_axes = tuple(range(w.ndim - 1))
    fan_in = math.prod(w.shape[:-1])
    mean = jnp.sum(w, axis=reduce_axes) / fan_in
    sum_sq = jnp.sum(jnp.square(w), axis=reduce_axes) - fan_in * jnp.square(mean)
    return mean, jnp.maximum(sum_sq, 0.0) / (fan_in - ddof)


def mean_and_var_forward(
    w: jax.Array, ddof: int
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    mean, var = mean_and_var(w, ddof)
    return (mean, var), (w, mean)


def mean_and_var_backward(
    ddof: int, residuals: tuple[jax.Array, jax.Array], cotangents: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array]:
    # d mean / dw = 1 / n and d var / dw = 2 (w - mean) / (n - ddof). Written out so that the backward pass
    # recomputes w - mean inside one elementwise fusion: left to autodiff, the forward pass would keep
    # w - mean as a residual, i.e. write a kernel-sized array that costs as much as the statistics.
    w, mean = residuals
    d_mean, d_var = cotangents
    fan_in = math.prod(w.shape[:-1])

    def per_channel(v: jax.Array) -> jax.Array:
        return v.reshape((1,) * (w.ndim - 1) + (-1,))

    return (
        per_channel(d_mean / fan_in)
        + (w - per_channel(mean)) * per_channel(2.0 * d_var / (fan_in - ddof)),
    )


mean_and_var.defvjp(mean_and_var_forward, mean_and_var_backward)
