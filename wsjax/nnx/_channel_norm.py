"""The channel norm of BCN as a Flax NNX module, the mirror of :class:`wsjax.ChannelNorm`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype
from wsjax.nnx._params import Initializer, affine_params, value


class ChannelNorm(nnx.Module):
    r"""Group norm with per-group affine parameters, as :class:`wsjax.ChannelNorm`.

    .. math::

       z_{b,\ldots,c} = \gamma_g \, \frac{x_{b,\ldots,c} - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}}
       + \beta_g, \qquad c \in \text{group } g

    Args:
      num_features: the channels ``C``.
      num_groups: the groups ``G``; must divide ``C``.
      group_size: or the channels per group. With neither, ``G = gcd(C, 32)``.
      epsilon: :math:`\epsilon`.
      dtype: the output dtype.
      param_dtype: the dtype of :math:`\gamma, \beta` (each of shape ``(G,)``).
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      bias_init, scale_init: their initializers.
      rngs: the initializers' keys; ``nnx.Rngs(0)`` if None.

    Raises:
      ValueError: ``C`` not divisible as asked, or both ``num_groups`` and ``group_size``.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        *,
        group_size: int | None = None,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros,
        scale_init: Initializer = nnx.initializers.ones,
        rngs: nnx.Rngs | None = None,
    ):
        num_groups = norm_math.resolve_groups(num_features, num_groups, group_size, "ChannelNorm")
        self.scale, self.bias = affine_params(
            (num_groups,), use_scale, use_bias, param_dtype, rngs, scale_init, bias_init
        )
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
            value(self.scale),
            value(self.bias),
            output_dtype(x, self.dtype, self.param_dtype),
        )
