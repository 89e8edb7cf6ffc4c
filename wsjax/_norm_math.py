"""The arithmetic of the normalization layers, shared by the Linen and NNX modules.

Statistics are always computed in at least float32; outputs are cast to the layer's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from wsjax._dtypes import stats_dtype


def batch_moments(
    x: jax.Array,
    reduce_axes: Sequence[int],
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    fast_variance: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over ``reduce_axes``, and over the mapped axis ``axis_name`` if given.

    ``fast_variance`` (``nn.BatchNorm``'s ``use_fast_variance``): ``var = E[x^2] - E[x]^2``, both moments
    travelling in a single ``pmean`` so that the statistics of the global batch cost one collective; else
    ``E[(x - E[x])^2]``, exact where the mean is large against the spread, at a second pass (and a second
    collective). Without ``axis_name`` they are those of this device's batch alone.
    """
    with jax.named_scope("batch_statistics"):
        x = x.astype(stats_dtype(x.dtype))

        def pmean(v: jax.Array) -> jax.Array:
            if axis_name is None:
                return v
            out: jax.Array = lax.pmean(v, axis_name, axis_index_groups=axis_index_groups)
            return out

        if not fast_variance:
            mean = pmean(jnp.mean(x, axis=reduce_axes))
            shape = [1 if a in reduce_axes else n for a, n in enumerate(x.shape)]
            return mean, pmean(jnp.mean(jnp.square(x - mean.reshape(shape)), axis=reduce_axes))
        moments = pmean(
            jnp.stack([jnp.mean(x, axis=reduce_axes), jnp.mean(jnp.square(x), axis=reduce_axes)])
        )
        mean, mean_sq = moments[0], moments[1]
        return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def moving_average(running: jax.Array, batch: jax.Array, momentum: float) -> jax.Array:
    """Flax convention: ``momentum * running + (1 - momentum) * batch`` (PyTorch 0.1 is Flax 0.9)."""
    return momentum * running + (1.0 - momentum) * batch


VARIANCE_AROUND = ("batch_mean", "running_mean")


def check_variance_around(variance_around: str, caller: str) -> None:
    """Refuses a ``variance_around`` other than those of :data:`VARIANCE_AROUND`."""
    if variance_around not in VARIANCE_AROUND:
        raise ValueError(
            f"{caller}: variance_around must be one of {VARIANCE_AROUND}, got {variance_around!r}."
        )


def check_bcn_variance_around(variance_around: str, estimate: bool, caller: str) -> None:
    """Refuses an unknown ``variance_around``, or the official one on an ordinary batch norm."""
    check_variance_around(variance_around, caller)
    if not estimate and variance_around != "batch_mean":
        raise ValueError(
            f"{caller}: variance_around={variance_around!r} is an option of the estimated batch norm; "
            "it needs estimate=True."
        )


def estimated_update(
    running_mean: jax.Array,
    running_var: jax.Array,
    mean: jax.Array,
    var: jax.Array,
    momentum: float,
    variance_around: str,
) -> tuple[jax.Array, jax.Array]:
    """The running ``(mean, var)`` of an estimated batch norm after a batch of moments ``(mean, var)``.

    ``"batch_mean"`` (labml's reference): the batch's own variance. ``"running_mean"`` (the official EstBN):
    the batch's mean square around the *old* running mean, ``E_B[(x - old)²] = Var_B[x] + (E_B[x] - old)²``,
    which needs nothing but the moments, hence holds for synced (``pmean``-ed) moments too.
    """
    if variance_around == "running_mean":
        var = var + jnp.square(mean - running_mean)
    return (
        moving_average(running_mean, mean, momentum),
        moving_average(running_var, var, momentum),
    )


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
    with jax.named_scope("batch_normalize"):
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


#: The paper's channel-norm groups; with neither ``num_groups`` nor ``group_size`` the groups are the
#: largest divisor of the channels up to this (``gcd(C, 32)``), so that a norm swapped in for
#: ``nn.BatchNorm`` works on any channel count, and on the paper's networks is the paper's 32.
DEFAULT_GROUPS = 32


def resolve_groups(
    num_channels: int, num_groups: int | None, group_size: int | None, caller: str
) -> int:
    """The number of channel groups, from ``num_groups`` or ``group_size`` (one of them, or neither).

    Raises:
      ValueError: both given, or the channels not divisible as asked.
    """
    if num_groups is not None and group_size is not None:
        raise ValueError(
            f"{caller}: give num_groups or group_size, not both (got {num_groups} and {group_size})."
        )
    if group_size is not None:
        if group_size < 1 or num_channels % group_size:
            raise ValueError(
                f"{caller}: {num_channels} channels are not divisible into groups of "
                f"group_size={group_size}."
            )
        return num_channels // group_size
    if num_groups is None:
        return math.gcd(num_channels, DEFAULT_GROUPS)
    check_groups(num_channels, num_groups, caller)
    return num_groups


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
    with jax.named_scope("channel_norm"):
        batch, channels = x.shape[0], x.shape[-1]
        per_group = channels // num_groups
        x = x.astype(stats_dtype(x.dtype))
        spatial = tuple(range(1, x.ndim - 1))

        # Statistics per channel first, then per group; and group vectors repeated out to channels before they
        # meet x. Every reduction over x, forward and backward, then keeps the whole channel axis innermost and
        # reads memory in order; reducing straight to (batch, G) strides over runs of C/G channels (2 for VGG16's
        # 64 channels in 32 groups) and ran several times slower on XLA:CPU.
        def group_mean(per_channel: jax.Array) -> jax.Array:  # (batch, C) -> (batch, G)
            return jnp.mean(per_channel.reshape(batch, num_groups, per_group), axis=-1)

        def to_channels(per_group_values: jax.Array) -> jax.Array:  # (..., G) -> broadcastable to x
            values = jnp.repeat(per_group_values, per_group, axis=-1)
            return values.reshape(values.shape[:-1] + (1,) * (x.ndim - values.ndim) + (channels,))

        # One pass, E[x²] - E[x]², as Flax's GroupNorm (use_fast_variance): read-only reductions, where the
        # two-pass form makes XLA:CPU write x - mean out in full first. The channel norm's input is
        # batch-normalized (mean ~0, var ~1 per channel), so nothing cancels.
        mean = group_mean(jnp.mean(x, axis=spatial))
        var = jnp.maximum(group_mean(jnp.mean(jnp.square(x), axis=spatial)) - jnp.square(mean), 0.0)
        y = (x - to_channels(mean)) * to_channels(lax.rsqrt(var + epsilon))
        if scale is not None:
            y = y * to_channels(scale.astype(y.dtype)[None])
        if bias is not None:
            y = y + to_channels(bias.astype(y.dtype)[None])
        return y.astype(dtype)
