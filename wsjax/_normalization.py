"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520, Sec. 5) as Flax Linen modules.

BCN = an *estimated* batch norm followed by a channel norm:

* ``EstimatedBatchNorm``: in training, first update the running statistics from the batch,
  ``mu <- m * mu + (1 - m) * mean_B(x)`` and ``s2 <- m * s2 + (1 - m) * var_B(x)``, then normalize with them,
  ``y = gamma * (x - mu) / sqrt(s2 + eps) + beta``, with no gradient through ``mu`` or ``s2``. In evaluation
  the same formula runs without the update.
* ``ChannelNorm``: a group norm whose affine ``gamma_g, beta_g`` are per group, not per channel.

State lives in the ``batch_stats`` collection (``mean``, ``var``), momentum is in Flax's sense (PyTorch's 0.1
is 0.9 here), and ``axis_name`` averages the batch statistics over a mapped axis (synced batch norm);
without it each device uses its own micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype

Initializer = Callable[..., jax.Array]


class EstimatedBatchNorm(nn.Module):
    """Batch norm that normalizes with its freshly updated running statistics (BCN's first half)."""

    use_running_average: bool | None = None  # True: evaluation (no update); False: training
    axis: int = -1  # feature axis
    momentum: float = 0.9  # Flax sense: weight of the old running value
    epsilon: float = 1e-5
    dtype: Any = None  # output dtype; None: promote(input, param_dtype)
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    axis_name: str | None = None  # average batch statistics over this mapped axis
    axis_index_groups: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        feature_axis = self.axis % x.ndim
        features = x.shape[feature_axis]
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        scale = (
            self.param("scale", self.scale_init, (features,), self.param_dtype)
            if self.use_scale
            else None
        )
        bias = (
            self.param("bias", self.bias_init, (features,), self.param_dtype)
            if self.use_bias
            else None
        )

        if not use_running_average and not self.is_initializing():
            reduce_axes = tuple(a for a in range(x.ndim) if a != feature_axis)
            mean, var = norm_math.batch_moments(
                lax.stop_gradient(x), reduce_axes, self.axis_name, self.axis_index_groups
            )
            running_mean.value = norm_math.moving_average(running_mean.value, mean, self.momentum)
            running_var.value = norm_math.moving_average(running_var.value, var, self.momentum)

        return norm_math.affine_normalize(
            x,
            running_mean.value,
            running_var.value,
            scale,
            bias,
            self.epsilon,
            feature_axis,
            output_dtype(x, self.dtype, self.param_dtype),
        )


class ChannelNorm(nn.Module):
    """Group norm with per-group affine parameters (BCN's second half). Input ``(batch, *spatial, C)``."""

    num_groups: int = 32
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        norm_math.check_groups(x.shape[-1], self.num_groups, "ChannelNorm")
        groups = (self.num_groups,)
        scale = (
            self.param("scale", self.scale_init, groups, self.param_dtype)
            if self.use_scale
            else None
        )
        bias = (
            self.param("bias", self.bias_init, groups, self.param_dtype) if self.use_bias else None
        )
        return norm_math.channel_normalize(
            x,
            self.num_groups,
            self.epsilon,
            scale,
            bias,
            output_dtype(x, self.dtype, self.param_dtype),
        )


class BatchChannelNorm(nn.Module):
    """Batch-Channel Normalization: ``ChannelNorm(BatchNorm(x))``, the batch norm estimated by default.

    Submodules are named ``batch_norm`` and ``channel_norm``. ``estimate=False`` uses Flax's ordinary
    ``nn.BatchNorm`` (normalize with the batch's own statistics) as the first half.
    """

    num_groups: int = 32
    estimate: bool = True
    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    axis_index_groups: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        norm_math.check_groups(x.shape[-1], self.num_groups, "BatchChannelNorm")
        batch_norm = EstimatedBatchNorm if self.estimate else nn.BatchNorm
        x = batch_norm(
            momentum=self.momentum,
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            axis_name=self.axis_name,
            axis_index_groups=self.axis_index_groups,
            name="batch_norm",
        )(x, use_running_average=use_running_average)
        return ChannelNorm(
            num_groups=self.num_groups,
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="channel_norm",
        )(x)
