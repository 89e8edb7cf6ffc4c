"""Flax NNX mirrors of the normalizations of :mod:`wsjax` (the same arithmetic, the same names).

Running statistics are ``nnx.BatchStat`` variables ``mean`` / ``var``; ``model.train()`` / ``model.eval()``
toggle ``use_running_average`` as for ``nnx.BatchNorm``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype


def _affine_params(
    shape: tuple[int, ...], use_scale: bool, use_bias: bool, param_dtype: Any
) -> tuple[nnx.Param[jax.Array] | None, nnx.Param[jax.Array] | None]:
    scale = nnx.Param(jnp.ones(shape, param_dtype)) if use_scale else None
    bias = nnx.Param(jnp.zeros(shape, param_dtype)) if use_bias else None
    return scale, bias


def _value(variable: nnx.Variable[jax.Array] | None) -> jax.Array | None:
    return None if variable is None else variable[...]


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
      variance_around: ``"batch_mean"`` (labml, default) or ``"running_mean"`` (the official EstBN).
      rngs: accepted for symmetry with ``nnx.BatchNorm``; nothing is random.
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
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        variance_around: str = "batch_mean",
        rngs: nnx.Rngs | None = None,  # accepted for symmetry with nnx.BatchNorm; nothing is random
    ):
        norm_math.check_variance_around(variance_around, "EstimatedBatchNorm")
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.scale, self.bias = _affine_params((num_features,), use_scale, use_bias, param_dtype)
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.variance_around = variance_around

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
                lax.stop_gradient(x), reduce_axes, self.axis_name, self.axis_index_groups
            )
            self.mean[...], self.var[...] = norm_math.estimated_update(
                self.mean[...], self.var[...], mean, var, self.momentum, self.variance_around
            )
        return norm_math.affine_normalize(
            x,
            self.mean[...],
            self.var[...],
            _value(self.scale),
            _value(self.bias),
            self.epsilon,
            feature_axis,
            output_dtype(x, self.dtype, self.param_dtype),
        )


class ChannelNorm(nnx.Module):
    r"""Group norm with per-group affine parameters, as :class:`wsjax.ChannelNorm`.

    .. math::

       z_{b,\ldots,c} = \gamma_g \, \frac{x_{b,\ldots,c} - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}}
       + \beta_g, \qquad c \in \text{group } g

    Args:
      num_features: the channels ``C``.
      num_groups: the groups; must divide ``C``.
      epsilon: :math:`\epsilon`.
      dtype: the output dtype.
      param_dtype: the dtype of :math:`\gamma, \beta` (each of shape ``(num_groups,)``).
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      rngs: accepted for symmetry; nothing is random.

    Raises:
      ValueError: ``num_features`` not divisible by ``num_groups``.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        *,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        rngs: nnx.Rngs | None = None,
    ):
        norm_math.check_groups(num_features, num_groups, "ChannelNorm")
        self.scale, self.bias = _affine_params((num_groups,), use_scale, use_bias, param_dtype)
        self.num_groups = num_groups
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalizes ``x`` (``(batch, *spatial, C)``) per example and group; returns its shape."""
        norm_math.check_groups(x.shape[-1], self.num_groups, "ChannelNorm")
        return norm_math.channel_normalize(
            x,
            self.num_groups,
            self.epsilon,
            _value(self.scale),
            _value(self.bias),
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
    (``nnx.BatchNorm``); the channel norm is the attribute ``channel_norm``.

    Args:
      num_features: the channels ``C``.
      num_groups: the channel norm's groups.
      estimate: estimated (True) or ordinary (False) batch norm.
      use_running_average: True: evaluation.
      momentum: the batch norm's momentum, in Flax's sense.
      epsilon: added to every variance.
      dtype: the output dtype.
      param_dtype: the parameters' dtype.
      axis_name: the batch norm's mapped axis; None: per device.
      axis_index_groups: as for ``lax.pmean``.
      variance_around: the estimated batch norm's: ``"batch_mean"`` (labml, default) or
        ``"running_mean"`` (the official EstBN); the latter needs ``estimate=True``.
      rngs: passed to ``nnx.BatchNorm``; ``nnx.Rngs(0)`` if None.

    Raises:
      ValueError: ``num_features`` not divisible by ``num_groups``.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        *,
        estimate: bool = True,
        use_running_average: bool = False,
        momentum: float = 0.9,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        variance_around: str = "batch_mean",
        rngs: nnx.Rngs | None = None,
    ):
        norm_math.check_groups(num_features, num_groups, "BatchChannelNorm")
        norm_math.check_bcn_variance_around(variance_around, estimate, "BatchChannelNorm")
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
            rngs=rngs if rngs is not None else nnx.Rngs(0),
        )
        self.channel_norm = ChannelNorm(
            num_features, num_groups, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype
        )

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """The batch norm, then the channel norm; returns the shape of ``x``."""
        return self.channel_norm(self.batch_norm(x, use_running_average=use_running_average))
