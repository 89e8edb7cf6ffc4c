"""The arithmetic of the normalization layers, shared by the Linen and NNX modules.

Statistics are always computed in at least float32; outputs are cast to the layer's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from wsjax.dtypes import stats_dtype


def batch_moments(
    x: jax.Array,
    reduce_axes: Sequence[int],
    axis_name: str | None = None,
    axis_index_groups: Any = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over ``reduce_axes``, and over the mapped axis ``axis_name`` if given.

    ``var = E[x^2] - E[x]^2``: both moments travel in a single ``pmean`` so that the statistics of the
    global batch cost one collective. Without ``axis_name`` they are those of this device's batch alone.
    """
    x = x.astype(stats_dtype(x.dtype))
    moments = jnp.stack([jnp.mean(x, axis=reduce_axes), jnp.mean(jnp.square(x), axis=reduce_axes)])
    if axis_name is not None:
        moments = lax.pmean(moments, axis_name, axis_index_groups=axis_index_groups)
    mean, mean_sq = moments[0], moments[1]
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def moving_average(running: jax.Array, batch: jax.Array, momentum: float) -> jax.Array:
    """Flax convention: ``momentum * running + (1 - momentum) * batch`` (PyTorch 0.1 is Flax 0.9)."""
    return momentum * running + (1.0 - momentum) * batch


def affine_normalize(
    x: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    scale: jax.Array | None,
    bias: jax.Array | None,
    epsilon: float,
    feature_axis: int,
    dtype: Any,
) -> jax.Array:
    """``(x - mean) / sqrt(var + epsilon) * scale + bias`` with per-feature vectors along ``feature_axis``."""
    compute = stats_dtype(x.dtype)
    shape = [1] * x.ndim
    shape[feature_axis] = x.shape[feature_axis]

    def feature_vector(v: jax.Array) -> jax.Array:
        return v.astype(compute).reshape(shape)

    mul = lax.rsqrt(feature_vector(var) + epsilon)
    if scale is not None:
        mul = mul * feature_vector(scale)
    y = (x.astype(compute) - feature_vector(mean)) * mul
    if bias is not None:
        y = y + feature_vector(bias)
    return y.astype(dtype)


def check_groups(num_channels: int, num_groups: int, caller: str) -> None:
    if num_groups < 1 or num_channels % num_groups:
        raise ValueError(
            f"{caller}: {num_channels} channels are not divisible into num_groups={num_groups} groups."
        )


def channel_normalize(
    x: jax.Array,
    num_groups: int,
    epsilon: float,
    scale: jax.Array | None,
    bias: jax.Array | None,
    dtype: Any,
) -> jax.Array:
    """Group normalization with a per-*group* affine transform (the channel norm of BCN).

    ``x`` is ``(batch, *spatial, C)``; channels ``[g C/G, (g+1) C/G)`` form group ``g``. Each sample and group
    is normalized over its spatial positions and channels, then ``scale[g] * x_hat + bias[g]``.
    """
    batch_shape, channels = x.shape[:1], x.shape[-1]
    grouped = x.astype(stats_dtype(x.dtype)).reshape(
        batch_shape + x.shape[1:-1] + (num_groups, channels // num_groups)
    )
    reduce_axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)
    mean = jnp.mean(grouped, axis=reduce_axes, keepdims=True)
    var = jnp.mean(jnp.square(grouped - mean), axis=reduce_axes, keepdims=True)
    y = (grouped - mean) * lax.rsqrt(var + epsilon)
    per_group = (1,) * (grouped.ndim - 2) + (num_groups, 1)
    if scale is not None:
        y = y * scale.astype(y.dtype).reshape(per_group)
    if bias is not None:
        y = y + bias.astype(y.dtype).reshape(per_group)
    return y.reshape(x.shape).astype(dtype)
