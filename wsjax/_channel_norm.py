"""The channel norm of BCN (Qiao et al., arXiv 1903.10520, Sec. 5) as a Flax Linen module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax import _norm_math as norm_math
from wsjax._dtypes import output_dtype

Initializer = Callable[..., jax.Array]


class ChannelNorm(nn.Module):
    r"""Group norm with per-group affine parameters (BCN's second half).

    .. math::

       z_{b,\ldots,c} = \gamma_g \, \frac{x_{b,\ldots,c} - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}}
       + \beta_g, \qquad c \in \text{group } g

    with :math:`\mu_{b,g}, \sigma_{b,g}^2` the mean and biased variance of example ``b`` over the spatial
    positions and the ``C / G`` channels of group ``g``.

    Args:
      num_groups: the groups ``G``; must divide the channels.
      group_size: or the channels per group (``G = C / group_size``). With neither, ``G = gcd(C, 32)``:
        the paper's 32 where the channels allow.
      epsilon: :math:`\epsilon`, added to the variance.
      dtype: the output dtype; None: the promotion of the input's and ``param_dtype``.
      param_dtype: the dtype of :math:`\gamma` and :math:`\beta` (each of shape ``(G,)``).
      use_bias: learn :math:`\beta`.
      use_scale: learn :math:`\gamma`.
      bias_init: initializer of :math:`\beta`.
      scale_init: initializer of :math:`\gamma`.
    """

    num_groups: int | None = None
    group_size: int | None = None
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
          ValueError: ``C`` not divisible as asked, or both ``num_groups`` and ``group_size``.
        """
        num_groups = norm_math.resolve_groups(
            x.shape[-1], self.num_groups, self.group_size, "ChannelNorm"
        )
        groups = (num_groups,)
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
            num_groups,
            self.epsilon,
            scale,
            bias,
            output_dtype(x, self.dtype, self.param_dtype),
        )
