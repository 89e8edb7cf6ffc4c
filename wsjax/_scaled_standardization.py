"""Scaled Weight Standardization of NFNets (Brock et al. 2021, arXiv 2102.06171), the kernel of ``ScaledWSConv``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from wsjax._moments import centered_and_sum_sq, check_eps, fan_in


def scaled_standardize(w: jax.Array, gain: jax.Array, eps: float = 1e-4) -> jax.Array:
    r"""Scaled Weight Standardization of NFNets (Brock et al. 2021, arXiv 2102.06171, eq. 2).

    .. math::

       \hat w_{\cdot o} = g_o \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\max(n \sigma_o^2, \epsilon)}}

    with the biased variance :math:`\sigma_o^2` over the ``n = fan_in`` entries of channel ``o``, so that a
    unit-variance input gives unit-variance pre-activations without any normalization layer. (timm's
    ``ScaledStdConv2d`` writes the same idea as ``gain * fan_in**-0.5 * (w - mean) / sqrt(var + eps)``.)

    Args:
      w: kernel ``(..., out_features)`` as for :func:`wsjax.standardize`.
      gain: per-output-channel gain :math:`g` of shape ``(out_features,)``.
      eps: floor of ``var * fan_in``; >= 0. NFNets use 1e-4.

    Returns:
      The scaled, standardized kernel, same shape and dtype as ``w``.

    Raises:
      ValueError: rank < 2, ``eps < 0`` or ``gain`` not of shape ``(out_features,)``.
    """
    fan_in(w, "scaled_standardize")
    check_eps(eps, "scaled_standardize")
    if jnp.shape(gain) != (jnp.shape(w)[-1],):
        raise ValueError(
            f"scaled_standardize: gain must have shape (out_features,) = ({jnp.shape(w)[-1]},), "
            f"got {jnp.shape(gain)}."
        )
    with jax.named_scope("scaled_weight_standardization"):
        centered, sum_sq = centered_and_sum_sq(w)
        # var * fan_in is just the sum of squared deviations.
        scale = lax.rsqrt(jnp.maximum(sum_sq, eps)) * gain.astype(centered.dtype).reshape(
            sum_sq.shape
        )
        return (centered * scale).astype(w.dtype)
