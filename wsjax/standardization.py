"""Weight Standardization of a kernel (Qiao et al., arXiv 1903.10520, eq. 5).

For a kernel in Flax layout ``(..., in_features // groups, out_features)`` every output channel ``o`` is
standardized over all its ``n = fan_in`` other entries::

    w_hat[..., o] = (w[..., o] - mean_o) / sqrt(var_o + eps)

Implementations in the wild differ in three details, all reproducible here:

========  ====================  ==================  ========
preset    variance              eps placement        eps
========  ====================  ==================  ========
pytorch   unbiased (n - 1)      inside the root      1e-5    (the PyTorch/labml-nn reference; default)
qiao      unbiased (n - 1)      added to the std     1e-5    (official code of the paper)
bit       biased (n)            inside the root      1e-10   (Big Transfer / big_vision)
timm      biased (n)            inside the root      1e-6    (timm ``StdConv2d``; its models pass 1e-8)
========  ====================  ==================  ========

``standardize(w, **PRESETS['bit'])`` selects one. The scaled form used by NFNets lives in
:func:`scaled_standardize`.
"""

from __future__ import annotations

import functools
import math
from typing import TypedDict

import jax
import jax.numpy as jnp
from jax import lax

from wsjax.dtypes import stats_dtype


class StandardizeOptions(TypedDict):
    """Keyword arguments of :func:`standardize`; the values of :data:`PRESETS`."""

    eps: float
    unbiased: bool
    eps_outside_sqrt: bool


PRESETS: dict[str, StandardizeOptions] = {
    "pytorch": {"eps": 1e-5, "unbiased": True, "eps_outside_sqrt": False},
    "qiao": {"eps": 1e-5, "unbiased": True, "eps_outside_sqrt": True},
    "bit": {"eps": 1e-10, "unbiased": False, "eps_outside_sqrt": False},
    "timm": {"eps": 1e-6, "unbiased": False, "eps_outside_sqrt": False},
}


def _check_kernel(w: jax.Array, eps: float, caller: str) -> int:
    """Validates a kernel and returns its fan-in (entries per output channel)."""
    if jnp.ndim(w) < 2:
        raise ValueError(
            f"{caller}: the kernel must have rank >= 2, (..., in_features // groups, out_features); "
            f"got shape {jnp.shape(w)}."
        )
    if isinstance(eps, (int, float)) and (eps < 0 or math.isnan(eps)):
        raise ValueError(f"{caller}: eps must be >= 0, got {eps}.")
    return math.prod(jnp.shape(w)[:-1])


def _check_standardizable(w: jax.Array, eps: float, unbiased: bool, caller: str) -> int:
    """:func:`_check_kernel`, and enough entries per channel for the unbiased variance."""
    fan_in = _check_kernel(w, eps, caller)
    if unbiased and fan_in < 2:
        raise ValueError(
            f"{caller}: the unbiased variance needs at least 2 entries per output channel, but a "
            f"kernel of shape {jnp.shape(w)} has {fan_in}; pass unbiased=False."
        )
    return fan_in


def _centered_and_sum_sq(w: jax.Array) -> tuple[jax.Array, jax.Array]:
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


def standardize(
    w: jax.Array,
    eps: float = 1e-5,
    *,
    unbiased: bool = True,
    eps_outside_sqrt: bool = False,
) -> jax.Array:
    """Standardizes each output channel (last axis) of a kernel over all its other axes.

    ``(w - mean) / sqrt(var + eps)``, or ``(w - mean) / (sqrt(var) + eps)`` with ``eps_outside_sqrt``.

    Args:
      w: kernel ``(..., fan_in_axes..., out_features)``: a Flax conv kernel of any rank, a
        ``ConvTranspose`` kernel or a Dense ``(in, out)`` kernel.
      eps: added to the variance (or to the standard deviation with ``eps_outside_sqrt``); >= 0.
      unbiased: divide the sum of squares by ``fan_in - 1`` (PyTorch ``torch.var`` default) rather than
        by ``fan_in``.
      eps_outside_sqrt: add ``eps`` to the standard deviation, as the paper's official code does.

    Returns:
      The standardized kernel, same shape and dtype as ``w``; statistics computed in at least float32.

    Raises:
      ValueError: rank < 2, ``eps < 0``, or an unbiased variance over a single entry.
    """
    fan_in = _check_standardizable(w, eps, unbiased, "standardize")
    centered, sum_sq = _centered_and_sum_sq(w)
    var = sum_sq / (fan_in - 1 if unbiased else fan_in)
    if eps_outside_sqrt:
        w_hat = centered / (jnp.sqrt(var) + eps)
    else:
        w_hat = centered * jax.lax.rsqrt(var + eps)
    return w_hat.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _mean_and_var(w: jax.Array, ddof: int) -> tuple[jax.Array, jax.Array]:
    """Per-output-channel mean and ``Σ(w - mean)² / (fan_in - ddof)`` from the raw sums ``Σw`` and ``Σw²``.

    Raw sums because XLA:CPU fuses ``Σw²`` into a read-only reduction but writes ``w - mean`` out in full
    before reducing it, which costs as much as the statistics themselves. The price is cancellation in
    ``Σw² - fan_in·mean²``: the variance's relative error grows like ``eps·(1 + mean²/var)``, about 1e-5 at
    ``|mean| = 10 std`` and 2e-4 at 30 in float32 (tested); trained WS kernels stay near ``mean ≈ 0``.
    :func:`standardize` does not take this path.
    """
    reduce_axes = tuple(range(w.ndim - 1))
    fan_in = math.prod(w.shape[:-1])
    mean = jnp.sum(w, axis=reduce_axes) / fan_in
    sum_sq = jnp.sum(jnp.square(w), axis=reduce_axes) - fan_in * jnp.square(mean)
    return mean, jnp.maximum(sum_sq, 0.0) / (fan_in - ddof)


def _mean_and_var_forward(w: jax.Array, ddof: int):
    mean, var = _mean_and_var(w, ddof)
    return (mean, var), (w, mean)


def _mean_and_var_backward(ddof: int, residuals, cotangents):
    # d mean / dw = 1 / n and d var / dw = 2 (w - mean) / (n - ddof). Written out so that the backward pass
    # recomputes w - mean inside one elementwise fusion: left to autodiff, the forward pass would keep
    # w - mean as a residual, i.e. write a kernel-sized array that costs as much as the statistics.
    w, mean = residuals
    d_mean, d_var = cotangents
    fan_in = math.prod(w.shape[:-1])
    per_channel = lambda v: v.reshape((1,) * (w.ndim - 1) + (-1,))  # noqa: E731
    return (
        per_channel(d_mean / fan_in)
        + (w - per_channel(mean)) * per_channel(2.0 * d_var / (fan_in - ddof)),
    )


_mean_and_var.defvjp(_mean_and_var_forward, _mean_and_var_backward)


def standardization_statistics(
    w: jax.Array,
    eps: float = 1e-5,
    *,
    unbiased: bool = True,
    eps_outside_sqrt: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Per-output-channel ``mean`` and ``scale`` with ``standardize(w) = (w - mean) * scale``.

    ``scale = 1 / sqrt(var + eps)`` (or ``1 / (sqrt(var) + eps)``), both of shape ``(out_features,)`` in the
    statistics dtype (at least float32). Two read-only passes over the kernel (``Σw`` and ``Σw²``) and no
    kernel-sized output, forward or backward; the price is a relative error growing like ``(mean/std)²``
    float32 epsilons (see ``_mean_and_var``; :func:`standardize` itself has no such limit). This is what a layer
    needs to standardize its *output* instead of its kernel (``WSConv(apply_to=...)``).

    Args and Raises: as :func:`standardize`.
    """
    _check_standardizable(w, eps, unbiased, "standardization_statistics")
    mean, var = _mean_and_var(w.astype(stats_dtype(w.dtype)), 1 if unbiased else 0)
    if eps_outside_sqrt:
        return mean, 1.0 / (jnp.sqrt(var) + eps)
    return mean, jax.lax.rsqrt(var + eps)


def scaled_standardize(w: jax.Array, gain: jax.Array, eps: float = 1e-4) -> jax.Array:
    """Scaled Weight Standardization of NFNets (Brock et al. 2021, arXiv 2102.06171, eq. 2).

    ``gain * (w - mean) / sqrt(max(var * fan_in, eps))`` with the biased variance, so that a unit-variance
    input gives unit-variance pre-activations without any normalization layer. (timm's
    ``ScaledStdConv2d`` writes the same idea as ``gain * fan_in**-0.5 * (w - mean) / sqrt(var + eps)``.)

    Args:
      w: kernel ``(..., out_features)`` as for :func:`standardize`.
      gain: per-output-channel gain of shape ``(out_features,)``.
      eps: floor of ``var * fan_in``; >= 0. NFNets use 1e-4.

    Returns:
      The scaled, standardized kernel, same shape and dtype as ``w``.

    Raises:
      ValueError: rank < 2, ``eps < 0`` or ``gain`` not of shape ``(out_features,)``.
    """
    _check_kernel(w, eps, "scaled_standardize")
    if jnp.shape(gain) != (jnp.shape(w)[-1],):
        raise ValueError(
            f"scaled_standardize: gain must have shape (out_features,) = ({jnp.shape(w)[-1]},), "
            f"got {jnp.shape(gain)}."
        )
    centered, sum_sq = _centered_and_sum_sq(w)
    # var * fan_in is just the sum of squared deviations.
    scale = jax.lax.rsqrt(jnp.maximum(sum_sq, eps)) * gain.astype(centered.dtype).reshape(
        sum_sq.shape
    )
    return (centered * scale).astype(w.dtype)
