"""Scaled Weight Standardization of NFNets (Brock et al. 2021, arXiv 2102.06171), the kernel of ``ScaledWSConv``.

Two forms are in use, equal but for where ``eps`` enters:

- ``"nfnet"`` (DeepMind's NFNets code, the default): ``g (w - mean) / sqrt(max(n var, eps))``, eps 1e-4;
- ``"timm"`` (timm's ``ScaledStdConv2d``): ``g n^-1/2 (w - mean) / sqrt(var + eps)``, eps 1e-6.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from wsjax._moments import centered_and_sum_sq, check_eps, fan_in

FORMS = ("nfnet", "timm")
DEFAULT_EPS = {"nfnet": 1e-4, "timm": 1e-6}  # each source's own default


def check_form(form: str, caller: str) -> None:
    """Refuses a ``form`` other than those of :data:`FORMS`."""
    if form not in FORMS:
        raise ValueError(f"{caller}: form must be one of {FORMS}, got {form!r}.")


def scaled_standardize(
    w: jax.Array, gain: jax.Array, eps: float | None = None, form: str = "nfnet"
) -> jax.Array:
    r"""Scaled Weight Standardization of NFNets (Brock et al. 2021, arXiv 2102.06171, eq. 2).

    With the biased variance :math:`\sigma_o^2` over the ``n = fan_in`` entries of channel ``o``, so that a
    unit-variance input gives unit-variance pre-activations without any normalization layer, ``form``
    ``"nfnet"`` (NFNets' own code) computes

    .. math::

       \hat w_{\cdot o} = g_o \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\max(n \sigma_o^2, \epsilon)}}

    and ``"timm"`` (timm's ``ScaledStdConv2d``, so that its NF models' weights compute exactly as there)

    .. math::

       \hat w_{\cdot o} = g_o \, n^{-1/2} \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    The two agree when :math:`\epsilon \ll \sigma_o^2`; for a kernel of small variance they differ.

    Args:
      w: kernel ``(..., out_features)`` as for :func:`wsjax.standardize`.
      gain: per-output-channel gain :math:`g` of shape ``(out_features,)``.
      eps: >= 0; None: the form's own default, 1e-4 (NFNets, the floor of ``n var``) or 1e-6 (timm,
        added to ``var``).
      form: ``"nfnet"`` (default) or ``"timm"``, as above.

    Returns:
      The scaled, standardized kernel, same shape and dtype as ``w``.

    Raises:
      ValueError: rank < 2, ``eps < 0``, an unknown ``form`` or ``gain`` not of shape ``(out_features,)``.
    """
    n = fan_in(w, "scaled_standardize")
    check_form(form, "scaled_standardize")
    eps = DEFAULT_EPS[form] if eps is None else eps
    check_eps(eps, "scaled_standardize")
    if jnp.shape(gain) != (jnp.shape(w)[-1],):
        raise ValueError(
            f"scaled_standardize: gain must have shape (out_features,) = ({jnp.shape(w)[-1]},), "
            f"got {jnp.shape(gain)}."
        )
    with jax.named_scope("scaled_weight_standardization"):
        centered, sum_sq = centered_and_sum_sq(w)
        if form == "nfnet":
            # var * fan_in is just the sum of squared deviations.
            inv = lax.rsqrt(jnp.maximum(sum_sq, eps))
        else:
            inv = lax.rsqrt(sum_sq / n + eps) * (1.0 / math.sqrt(n))
        scale = inv * gain.astype(centered.dtype).reshape(sum_sq.shape)
        return (centered * scale).astype(w.dtype)
