"""Flax NNX mirrors of the normalizations of :mod:`wsjax` (the same arithmetic, the same names).

Running statistics are ``nnx.BatchStat`` variables ``mean`` / ``var``. Evaluation is switched as for
``nnx.BatchNorm``, by every means Flax has: ``nnx.view(model, use_running_average=True)`` (each layer's
``set_view``), ``model.eval()`` / ``model.train()`` (the ``use_running_average`` attribute), or the call's own
``use_running_average`` argument.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype
from wsjax.nnx._channel_norm import ChannelNorm
from wsjax.nnx._params import Initializer, affine_params, value


class EstimatedBatchNorm(nnx.Module):
    r"""Batch norm that first updates its running statistics from the batch, then normalizes with them.

    .. math::

       \hat\mu \leftarrow m \hat\mu + (1 - m) \, \mathrm{E}_B[x], \quad
       \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{Var}_B[x], \quad
       y = \gamma \, \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta

    as :class:`wsjax.EstimatedBatchNorm`; :math:`\hat\mu, \hat\sigma^2` are the ``nnx.BatchStat`` ``mean``
    and ``var``. With ``variance_around="running_mean"`` (the official EstBN) the variance update is

    .. math::

       \hat\sigma^2 \leftarrow m \hat\sigma^2 + (1 - m) \, \mathrm{E}_B\big[(x - \hat\mu_{\text{old}})^2\big]

    Args:
      num_features: the features along ``axis``.
      use_running_average: True: evaluation (no update); ``model.eval()`` / ``model.train()`` set it.
      axis: the feature axis.
      momentum: :math:`m`, in Flax's sense (PyTorch's 0.1 is 0.9).
      epsilon: :math:`\epsilon`.
      dtype: the output dtype; None: the promotion of the input's and ``param_dtype``.
      param_dtype: the dtype of :math:`\gamma, \beta`.
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      axis_name: average the batch statistics over this mapped axis; None: per device.
      axis_index_groups: as for ``lax.pmean``.
      use_fast_variance: the batch variance in one pass, as ``nnx.BatchNorm``'s.
      variance_around: ``"batch_mean"`` (labml, default) or ``"running_mean"`` (the official EstBN).
      bias_init, scale_init, bias_metadata, scale_metadata: as ``nnx.BatchNorm``'s.
      rngs: the initializers' keys, as for ``nnx.BatchNorm``; ``nnx.Rngs(0)`` if None.

    Every keyword of ``nnx.BatchNorm`` but ``promote_dtype`` is accepted with its meaning (the output dtype
    is ``dtype``, else the promotion of the input's and ``param_dtype``, with float32 statistics).
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        axis: int = -1,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros,
        scale_init: Initializer = nnx.initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        variance_around: str = "batch_mean",
        rngs: nnx.Rngs | None = None,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        norm_math.check_variance_around(variance_around, "EstimatedBatchNorm")
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.scale, self.bias = affine_params(
            (num_features,),
            use_scale,
            use_bias,
            param_dtype,
            rngs,
            scale_init,
            bias_init,
            scale_metadata,
            bias_metadata,
        )
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.variance_around = variance_around

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Class method used by ``nnx.view``, as ``nnx.BatchNorm``'s.

        Args:
          use_running_average: True: evaluation (the running statistics are used and not updated); False:
            training; None: unchanged.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Updates the running statistics (in training), then normalizes ``x`` with them.

        Args:
          x: any shape, features along ``axis``.
          use_running_average: overrides the attribute of the same name.

        Returns:
          ``y``, the shape of ``x``.
        """
        use_running_average = nnx.module.first_from(
            use_running_average,
            self.use_running_average,
            error_msg="No `use_running_average` argument was provided to EstimatedBatchNorm.",
        )
        feature_axis = self.axis % x.ndim
        if not use_running_average:
            reduce_axes = tuple(a for a in range(x.ndim) if a != feature_axis)
            mean, var = norm_math.batch_moments(
                lax.stop_gradient(x),
                reduce_axes,
                self.axis_name,
                self.axis_index_groups,
                self.use_fast_variance,
            )
            self.mean[...], self.var[...] = norm_math.estimated_update(
                self.mean[...], self.var[...], mean, var, self.momentum, self.variance_around
            )
        return norm_math.affine_normalize(
            x,
            self.mean[...],
            self.var[...],
            value(self.scale),
            value(self.bias),
            self.epsilon,
            feature_axis,
            output_dtype(x, self.dtype, self.param_dtype),
        )


class _BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` that also runs under JAX's ``'strict'`` dtype promotion (as ``wsjax._flax_norms``)."""

    def __call__(
        self,
        x: jax.Array,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        with jax.numpy_dtype_promotion("standard"):
            y: jax.Array = super().__call__(x, use_running_average, mask=mask)
        return y


class BatchChannelNorm(nnx.Module):
    r""":math:`\mathrm{CN}(\mathrm{EBN}(x))`, as :class:`wsjax.BatchChannelNorm`.

    The batch norm (attribute ``batch_norm``) is :class:`EstimatedBatchNorm` unless ``estimate=False``
    (``nnx.BatchNorm``); the channel norm is the attribute ``channel_norm``. It takes ``nnx.BatchNorm``'s
    keywords with their meaning, so that it can replace ``nnx.BatchNorm`` in a model with nothing else changed.

    Args:
      num_features: the channels ``C``.
      num_groups: the channel norm's groups ``G``.
      group_size: or the channels per group. With neither, ``G = gcd(C, 32)``.
      estimate: estimated (True) or ordinary (False) batch norm.
      use_running_average: True: evaluation.
      axis: the feature axis (moved last for the channel norm, and back).
      momentum: the batch norm's momentum, in Flax's sense.
      epsilon: added to every variance.
      dtype: the output dtype.
      param_dtype: the parameters' dtype.
      use_bias, use_scale, bias_init, scale_init: the output's affine, the channel norm's per-group
        :math:`\beta_g, \gamma_g` (the batch norm's per-channel affine always starts at 1 and 0).
      axis_name: the batch norm's mapped axis; None: per device.
      axis_index_groups: as for ``lax.pmean``.
      use_fast_variance: the batch norm's, as ``nnx.BatchNorm``'s.
      variance_around: the estimated batch norm's: ``"batch_mean"`` (labml, default) or
        ``"running_mean"`` (the official EstBN); the latter needs ``estimate=True``.
      rngs: the initializers' keys; ``nnx.Rngs(0)`` if None.

    Raises:
      ValueError: ``num_features`` not divisible as asked.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        *,
        group_size: int | None = None,
        estimate: bool = True,
        use_running_average: bool = False,
        axis: int = -1,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros,
        scale_init: Initializer = nnx.initializers.ones,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        variance_around: str = "batch_mean",
        rngs: nnx.Rngs | None = None,
    ):
        num_groups = norm_math.resolve_groups(
            num_features, num_groups, group_size, "BatchChannelNorm"
        )
        norm_math.check_bcn_variance_around(variance_around, estimate, "BatchChannelNorm")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        batch_norm = (
            functools.partial(EstimatedBatchNorm, variance_around=variance_around)
            if estimate
            else _BatchNorm
        )
        self.batch_norm = batch_norm(
            num_features,
            use_running_average=use_running_average,
            momentum=momentum,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            axis_name=axis_name,
            axis_index_groups=axis_index_groups,
            use_fast_variance=use_fast_variance,
            rngs=rngs,
        )
        self.channel_norm = ChannelNorm(
            num_features,
            num_groups,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            bias_init=bias_init,
            scale_init=scale_init,
            rngs=rngs,
        )
        self.axis = axis

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """The batch norm, then the channel norm; returns the shape of ``x``."""
        feature_axis = self.axis % x.ndim
        x = jnp.moveaxis(x, feature_axis, -1)  # the channel norm groups the last axis
        x = self.channel_norm(self.batch_norm(x, use_running_average=use_running_average))
        return jnp.moveaxis(x, -1, feature_axis)
