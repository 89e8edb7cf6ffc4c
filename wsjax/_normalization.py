r"""Batch-Channel Normalization (Qiao et al., arXiv 1903.10520, Sec. 5) as Flax Linen modules.

BCN is an *estimated* batch norm followed by a channel norm, :math:`\mathrm{BCN}(x) = \mathrm{CN}(\mathrm{EBN}(x))`:

* :class:`EstimatedBatchNorm`: in training, first update the running statistics from the batch, then
  normalize with them (no gradient through them); in evaluation the same formula runs without the update:

  .. math::

     \hat\mu \leftarrow m \hat\mu + (1 - m) \, \mathrm{E}_B[x], \quad
     \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{Var}_B[x], \quad
     y = \gamma \, \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta

  (labml's reference; ``variance_around="running_mean"`` takes the official EstBN's variance instead).

* :class:`ChannelNorm` (``wsjax._channel_norm``): a group norm whose affine :math:`\gamma_g, \beta_g` are per group, not per channel.

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
from wsjax._channel_norm import ChannelNorm
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
      use_fast_variance: the batch variance as :math:`\mathrm{E}[x^2] - \mathrm{E}[x]^2` (one pass, one
        collective), else two-pass; as ``nn.BatchNorm``'s.
      variance_around: ``"batch_mean"`` (labml, default) or ``"running_mean"`` (the official EstBN), the
        centre of the batch variance that updates :math:`\hat\sigma^2`, as above.

    Every keyword of ``nn.BatchNorm`` is accepted with its meaning, so ``nn.BatchNorm`` can be replaced by
    this module in a model and nothing else changed.
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
    use_fast_variance: bool = True
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
                lax.stop_gradient(x),
                reduce_axes,
                self.axis_name,
                self.axis_index_groups,
                self.use_fast_variance,
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


class BatchChannelNorm(nn.Module):
    r"""Batch-Channel Normalization: :math:`\mathrm{CN}(\mathrm{EBN}(x))`, the batch norm estimated by default.

    :class:`EstimatedBatchNorm` then :class:`ChannelNorm` (see their equations), as submodules named
    ``batch_norm`` and ``channel_norm``. It takes every keyword of ``nn.BatchNorm`` with its meaning, so that
    ``nn.BatchNorm`` can be replaced by it in a model and nothing else changed
    (``norm=partial(BatchChannelNorm, use_running_average=..., momentum=0.9, epsilon=1e-5, dtype=...)``,
    ``norm(scale_init=nn.initializers.zeros)`` on a residual block's last norm).

    Args:
      num_groups: the channel norm's groups ``G``; must divide the channels.
      group_size: or the channels per group. With neither, ``G = gcd(C, 32)``: the paper's 32 where the
        channels allow, and a norm that works on any channel count.
      estimate: True: :class:`EstimatedBatchNorm`; False: Flax's ordinary ``nn.BatchNorm`` (normalize with
        the batch's own statistics).
      use_running_average: True: evaluation; False: training. Or pass it to the call.
      axis: the feature axis (moved last for the channel norm, and back).
      momentum: the batch norm's momentum, in Flax's sense (PyTorch's 0.1 is 0.9).
      epsilon: added to every variance.
      dtype: the output dtype.
      param_dtype: the parameters' dtype.
      use_bias: learn the output's shift, the channel norm's per-group :math:`\beta_g`.
      use_scale: learn the output's scale, the channel norm's per-group :math:`\gamma_g`.
      bias_init: initializer of :math:`\beta_g`.
      scale_init: initializer of :math:`\gamma_g` (``zeros`` starts a residual branch at zero, as with
        ``nn.BatchNorm``). The batch norm's own per-channel affine always starts at 1 and 0: zeros there would
        leave the channel norm a constant map, with no gradient to learn from.
      axis_name: the batch norm's mapped axis (synced statistics); None: per device.
      axis_index_groups: as for ``lax.pmean``.
      use_fast_variance: the batch norm's, as ``nn.BatchNorm``'s.
      variance_around: the estimated batch norm's ``variance_around``: ``"batch_mean"`` (labml, default)
        or ``"running_mean"`` (the official EstBN); the latter needs ``estimate=True``.
    """

    num_groups: int | None = None
    group_size: int | None = None
    estimate: bool = True
    use_running_average: bool | None = None
    axis: int = -1
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Initializer = nn.initializers.zeros
    scale_init: Initializer = nn.initializers.ones
    axis_name: str | None = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    variance_around: str = "batch_mean"

    def __post_init__(self) -> None:
        norm_math.check_bcn_variance_around(self.variance_around, self.estimate, "BatchChannelNorm")
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """The batch norm, then the channel norm.

        Args:
          x: features along ``axis``, the batch first: ``(batch, *spatial, C)`` by default.
          use_running_average: overrides the field of the same name.

        Returns:
          The shape of ``x``.

        Raises:
          ValueError: ``C`` not divisible as asked, or both ``num_groups`` and ``group_size``.
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        feature_axis = self.axis % x.ndim
        x = jnp.moveaxis(x, feature_axis, -1)  # the channel norm groups the last axis
        num_groups = norm_math.resolve_groups(
            x.shape[-1], self.num_groups, self.group_size, "BatchChannelNorm"
        )
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
            use_fast_variance=self.use_fast_variance,
            name="batch_norm",
        )(x, use_running_average=use_running_average)
        x = ChannelNorm(
            num_groups=num_groups,
            epsilon=self.epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.use_bias,
            use_scale=self.use_scale,
            bias_init=self.bias_init,
            scale_init=self.scale_init,
            name="channel_norm",
        )(x)
        return jnp.moveaxis(x, -1, feature_axis)
