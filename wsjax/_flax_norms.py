"""Flax's ``BatchNorm`` and ``GroupNorm``, usable under JAX's ``'strict'`` dtype promotion.

Flax computes a bfloat16 input's statistics in float32 by promoting the two dtypes implicitly, which
``jax.numpy_dtype_promotion("strict")`` refuses (a ``TypePromotionError`` at ``init``). These subclasses run
Flax's own ``__call__`` under ``'standard'`` promotion, where that promotion is intended; the maths, the
parameter and statistic names, and every other behaviour are Flax's.
"""

from __future__ import annotations

import flax.linen as nn
import jax


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` that also runs under ``'strict'`` dtype promotion (module docstring)."""

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


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that also runs under ``'strict'`` dtype promotion (module docstring)."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        with jax.numpy_dtype_promotion("standard"):
            y: jax.Array = super().__call__(x, mask=mask)
        return y
