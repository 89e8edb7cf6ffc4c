r"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520, Sec. 5) as Flax Linen modules.

BCN is an *estimated* batch norm followed by a channel norm, :math:`\mathrm{BCN}(x) = \mathrm{CN}(\mathrm{EBN}(x))`:

* :class:`EstimatedBatchNorm`: in training, first update the running statistics from the batch, then
  normalize with them (no gradient through them); in evaluation the same formula runs without the update:

  .. math::

     \hat\mu \leftarrow m \hat\mu + (1 - m) \, \mathrm{E}_B[x], \quad
     \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{Var}_B[x], \quad
     y = \gamma \, \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta

  (labml's reference; ``variance_around="running_mean"`` takes the official EstBN's variance instead).

* :class:`ChannelNorm`: a group norm whose affine :math:`\gamma_g, \beta_g` are per group, not per channel.

State lives in the ``batch_stats`` collection (``mean``, ``var``), momentum is in Flax's sense (PyTorch's 0.1
is 0.9 here), and ``axis_name`` averages the batch statistics over a mapped axis (synced batch norm);
without it each device uses its own micro-batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from wsjax import _flax_norms
from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype

Initializer = Callable[..., jax.Array]


class EstimatedBatchNorm(nn.Module):
    r"""Batch norm that normalizes with its freshly updated running statistics (BCN's first half).

    .. math::

       \hat\mu \leftarrow m \hat\mu + (1 - m) \, \mathrm{E}_B[x], \quad
       \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{Var}_B[x], \quad
       y = \gamma \, \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta

    per feature, with the batch's mean and biased variance over every axis but ``axis``; evaluation skips
    the update. The running statistics are ``batch_stats`` ``mean`` and ``var``; no gradient flows through
    them. That is labml's reference (``variance_around="batch_mean"``, the default); the official EstBN
    (``variance_around="running_mean"``) takes the batch's mean square around the *old* running mean:

    .. math::

       \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{E}_B\big[(x - \hat\mu_{\text{old}})^2\big]
       = m \hat\sigma^2 + (1 - m) \big(\mathrm{Var}_B[x] + (\mathrm{E}_B[x] - \hat\mu_{\text{old}})^2\big)

    Args:
      use_running_average: True: evaluation (no update); False: training. Or pass it to the call.
      axis: the feature axis.
      momentum: :math:`m`, in Flax's sense: the weight of the old running value (PyTorch's 0.1 is 0.9).
      epsilon: :math:`\epsilon`, added to the variance.
      dtype: the output dtype; None: the promotion of the input's and ``param_dtype``.
      param_dtype: the dtype of :math:`\gamma` and :math:`\beta`.
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      bias_init: initializer of :math:`\beta`.
      scale_init: initializer of :math:`\gamma`.
      axis_name: average the batch statistics over this mapped axis (synced batch norm); None: this
        device's micro-batch alone.
      axis_index_groups: as for ``lax.pmean``.
      variance_around: ``"batch_mean"`` (labml, default) or ``"running_mean"`` (the official EstBN), the
        centre of the batch variance that updates :math:`\hat\sigma^2`, as above.
    """

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
    variance_around: str = "batch_mean"

    def __post_init__(self) -> None:
        norm_math.check_variance_around(self.variance_around, "EstimatedBatchNorm")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Updates the running statistics (in training), then normalizes ``x`` with them.

        Args:
          x: any shape, features along ``axis``.
          use_running_average: overrides the field of the same name.

        Returns:
          ``y``, the shape of ``x``.
        """
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
            running_mean.value, running_var.value = norm_math.estimated_update(
                running_mean.value,
                running_var.value,
                mean,
                var,
                self.momentum,
                self.variance_around,
            )

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
    r"""Group norm with per-group affine parameters (BCN's second half).

    .. math::

       z_{b,\ldots,c} = \gamma_g \, \frac{x_{b,\ldots,c} - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}}
       + \beta_g, \qquad c \in \text{group } g

    with :math:`\mu_{b,g}, \sigma_{b,g}^2` the mean and biased variance of example ``b`` over the spatial
    positions and the ``C / num_groups`` channels of group ``g``.

    Args:
      num_groups: the groups ``G``; must divide the channels.
      epsilon: :math:`\epsilon`, added to the variance.
      dtype: the output dtype; None: the promotion of the input's and ``param_dtype``.
      param_dtype: the dtype of :math:`\gamma` and :math:`\beta` (each of shape ``(num_groups,)``).
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      bias_init: initializer of :math:`\beta`.
      scale_init: initializer of :math:`\gamma`.
    """

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
        """Normalizes ``x`` per example and group.

        Args:
          x: ``(batch, *spatial, C)``.

        Returns:
          ``z``, the shape of ``x``.

        Raises:
          ValueError: ``C`` not divisible by ``num_groups``.
        """
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
    r"""Batch-Channel Normalization: :math:`\mathrm{CN}(\mathrm{EBN}(x))`, the batch norm estimated by default.

    :class:`EstimatedBatchNorm` then :class:`ChannelNorm` (see their equations), as submodules named
    ``batch_norm`` and ``channel_norm``.

    Args:
      num_groups: the channel norm's groups.
      estimate: True: :class:`EstimatedBatchNorm`; False: Flax's ordinary ``nn.BatchNorm`` (normalize with
        the batch's own statistics).
      use_running_average: True: evaluation; False: training. Or pass it to the call.
      momentum: the batch norm's momentum, in Flax's sense (PyTorch's 0.1 is 0.9).
      epsilon: added to every variance.
      dtype: the output dtype.
      param_dtype: the parameters' dtype.
      axis_name: the batch norm's mapped axis (synced statistics); None: per device.
      axis_index_groups: as for ``lax.pmean``.
      variance_around: the estimated batch norm's ``variance_around``: ``"batch_mean"`` (labml, default)
        or ``"running_mean"`` (the official EstBN); the latter needs ``estimate=True``.
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
    variance_around: str = "batch_mean"

    def __post_init__(self) -> None:
        norm_math.check_bcn_variance_around(self.variance_around, self.estimate, "BatchChannelNorm")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """The batch norm, then the channel norm.

        Args:
          x: ``(batch, *spatial, C)``.
          use_running_average: overrides the field of the same name.

        Returns:
          The shape of ``x``.

        Raises:
          ValueError: ``C`` not divisible by ``num_groups``.
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        norm_math.check_groups(x.shape[-1], self.num_groups, "BatchChannelNorm")
        batch_norm = (
            functools.partial(EstimatedBatchNorm, variance_around=self.variance_around)
            if self.estimate
            else _flax_norms.BatchNorm
        )
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
