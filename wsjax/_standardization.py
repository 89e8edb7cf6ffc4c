r"""Weight Standardization of a kernel (Qiao et al., arXiv 1903.10520, eq. 5) and the conventions in use.

For a kernel in Flax layout ``(..., in_features // groups, out_features)`` every output channel ``o`` is
standardized over its ``n = fan_in`` entries (all axes but the last):

.. math::

   \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}
   \qquad\text{or, with the eps outside the root,}\qquad
   \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sigma_o + \epsilon},

where :math:`\mu_o` is the channel's mean and :math:`\sigma_o^2 = \sum (w_{\cdot o} - \mu_o)^2 / (n - 1)`
(unbiased) or :math:`/\, n` (biased). Implementations in the wild differ in exactly these three choices; a
:class:`Standardization` holds them, and :data:`PRESETS` names those in use:

============  ================  ===============  =======  ===============================================
preset        variance          eps placement    eps      where it comes from
============  ================  ===============  =======  ===============================================
pytorch       unbiased (n - 1)  inside the root  1e-5     the PyTorch reference (labml-nn); the default
qiao          unbiased (n - 1)  added to std     1e-5     the paper's official PyTorch code
big_vision    biased (n)        added to std     1e-5     big_vision ``models/bit.py``, vit_jax's hybrid
                                                          ResNet, the official README's TensorFlow snippet
bit           biased (n)        inside the root  1e-10    BiT (big_transfer), big_vision ``bit_paper.py``
timm          biased (n)        inside the root  1e-6     timm ``StdConv2d`` (its models pass 1e-8)
============  ================  ===============  =======  ===============================================

A new convention is one more entry of :data:`PRESETS`, in this file only. The scaled form of NFNets is
:func:`scaled_standardize`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from wsjax._dtypes import stats_dtype
from wsjax._moments import centered_and_sum_sq, check_eps, fan_in, mean_and_var, std_from_var


@dataclasses.dataclass(frozen=True)
class Standardization:
    r"""How a kernel is standardized: the one value every WS layer holds (frozen and hashable).

    .. math::

       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}
       \quad\text{or}\quad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sigma_o + \epsilon}
       \ \ \text{(eps outside the root)},

    per output channel ``o`` (last axis) over its ``n = fan_in`` entries, with
    :math:`\sigma_o^2 = \sum (w_{\cdot o} - \mu_o)^2 / (n - 1)` (unbiased) or :math:`/\, n` (biased).
    The default is the PyTorch reference's; :data:`PRESETS` names the others. A variant of a preset is
    ``dataclasses.replace(PRESETS["timm"], eps=1e-8)``.

    Args:
      eps: added to the variance, or to the standard deviation when ``eps_outside_sqrt``; >= 0.
      unbiased: divide the sum of squares by ``n - 1`` (``torch.var``'s default) rather than by ``n``.
      eps_outside_sqrt: add ``eps`` to the standard deviation instead of the variance.

    Raises:
      ValueError: ``eps < 0``.
      TypeError: ``unbiased`` or ``eps_outside_sqrt`` not a bool.
    """

    eps: float = 1e-5
    unbiased: bool = True
    eps_outside_sqrt: bool = False

    def __post_init__(self) -> None:
        check_eps(self.eps, "Standardization")
        for name in ("unbiased", "eps_outside_sqrt"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(
                    f"Standardization: {name} must be a bool, got {getattr(self, name)!r}."
                )

    def kernel(self, w: jax.Array) -> jax.Array:
        """The standardized kernel :math:`\\hat w` (see the class docstring).

        Args:
          w: kernel ``(..., out_features)``: a Flax conv kernel of any rank, a ``ConvTranspose`` kernel or
            a Dense ``(in, out)`` kernel.

        Returns:
          The standardized kernel, same shape and dtype as ``w``; statistics computed in float32 (float64
          for float64 kernels).

        Raises:
          ValueError: rank < 2, or an unbiased variance over a single entry.
        """
        n = _check_kernel(w, self.unbiased, "standardize")
        with jax.named_scope("weight_standardization"):
            centered, sum_sq = centered_and_sum_sq(w)
            var = sum_sq / (n - 1 if self.unbiased else n)
            if self.eps_outside_sqrt:
                w_hat = centered / (std_from_var(var) + self.eps)
            else:
                w_hat = centered * lax.rsqrt(var + self.eps)
            return w_hat.astype(w.dtype)

    def statistics(self, w: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-output-channel ``(mean, scale)`` with ``self.kernel(w) = (w - mean) * scale``.

        ``scale`` is :math:`1 / \\sqrt{\\sigma^2 + \\epsilon}` (or :math:`1 / (\\sigma + \\epsilon)`).
        Two read-only passes over the kernel (``Σw`` and ``Σw²``) and no kernel-sized output, forward or
        backward: what a layer needs to standardize its *output* instead of its kernel
        (``WSConv(apply_to=...)``). The price is a relative error growing like ``(mean / std)²`` float32
        epsilons (see ``wsjax._moments.mean_and_var``); :meth:`kernel` has no such limit.

        Args:
          w: kernel ``(..., out_features)``, as for :meth:`kernel`.

        Returns:
          ``mean`` and ``scale``, each of shape ``(out_features,)`` in float32 (float64 for float64 kernels).

        Raises:
          ValueError: rank < 2, or an unbiased variance over a single entry.
        """
        _check_kernel(w, self.unbiased, "standardization_statistics")
        with jax.named_scope("weight_standardization_statistics"):
            mean, var = mean_and_var(w.astype(stats_dtype(w.dtype)), 1 if self.unbiased else 0)
            if self.eps_outside_sqrt:
                return mean, 1.0 / (std_from_var(var) + self.eps)
            return mean, lax.rsqrt(var + self.eps)


#: The default convention: the PyTorch reference's.
DEFAULT = Standardization()

#: The conventions in use, by name (see the module docstring for the table and the sources).
PRESETS: dict[str, Standardization] = {
    "pytorch": Standardization(eps=1e-5, unbiased=True, eps_outside_sqrt=False),
    "qiao": Standardization(eps=1e-5, unbiased=True, eps_outside_sqrt=True),
    "big_vision": Standardization(eps=1e-5, unbiased=False, eps_outside_sqrt=True),
    "bit": Standardization(eps=1e-10, unbiased=False, eps_outside_sqrt=False),
    "timm": Standardization(eps=1e-6, unbiased=False, eps_outside_sqrt=False),
}


def as_standardization(value: Standardization | str) -> Standardization:
    """The :class:`Standardization` that ``value``, one or a :data:`PRESETS` name, stands for.

    A standardization is said one way: a preset name or a :class:`Standardization`. A bare number (an ``eps``)
    or a mapping of fields is refused, with the spelling to use instead.

    Raises:
      ValueError: an unknown preset name.
      TypeError: anything else than a Standardization or a name.
    """
    if isinstance(value, Standardization):
        return value
    if isinstance(value, str):
        if value not in PRESETS:
            raise ValueError(
                f"unknown standardization {value!r}; choose one of {', '.join(PRESETS)} or pass a "
                "wsjax.Standardization."
            )
        return PRESETS[value]
    raise TypeError(
        f"standardization must be a wsjax.PRESETS name ({', '.join(map(repr, PRESETS))}) or a "
        f"wsjax.Standardization, got {value!r}; {_spelling(value)}"
    )


def _spelling(value: object) -> str:
    """How to say what ``value`` probably meant, for :func:`as_standardization`'s error."""
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        fields = ", ".join(f"{k}={v!r}" for k, v in value.items())
        return f"write wsjax.Standardization({fields})."
    number = isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
    if number or (isinstance(value, jax.Array) and value.ndim == 0):
        return f"for an eps, write wsjax.Standardization(eps={value!r})."
    return "e.g. standardization='bit' or wsjax.Standardization(eps=1e-5, unbiased=False)."


def _check_kernel(w: jax.Array, unbiased: bool, caller: str) -> int:
    """The kernel's fan-in, checked: rank >= 2 and enough entries per channel for the unbiased variance."""
    count = fan_in(w, caller)
    if unbiased and count < 2:
        raise ValueError(
            f"{caller}: the unbiased variance needs at least 2 entries per output channel, but a "
            f"kernel of shape {jnp.shape(w)} has {count}; use a biased convention, e.g. "
            "wsjax.Standardization(unbiased=False)."
        )
    return count


def standardize(w: jax.Array, standardization: Standardization | str = DEFAULT) -> jax.Array:
    r"""Standardizes each output channel (last axis) of a kernel over all its other axes.

    .. math::

       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}
       \quad\text{or}\quad \frac{w_{\cdot o} - \mu_o}{\sigma_o + \epsilon}

    as :meth:`Standardization.kernel`. ``standardize(w)`` is the PyTorch reference's convention;
    ``standardize(w, "bit")`` or ``standardize(w, Standardization(eps=1e-10, unbiased=False))`` select
    others.

    Args:
      w: kernel ``(..., out_features)``: a Flax conv kernel of any rank, a ``ConvTranspose`` kernel or a
        Dense ``(in, out)`` kernel.
      standardization: a :class:`Standardization` or a :data:`PRESETS` name.

    Returns:
      The standardized kernel, same shape and dtype as ``w``; statistics computed in at least float32.

    Raises:
      ValueError: rank < 2, an unbiased variance over a single entry, or an unknown preset.
      TypeError: a ``standardization`` that is neither a Standardization nor a name (a number, a dict).
    """
    return as_standardization(standardization).kernel(w)


def standardization_statistics(
    w: jax.Array, standardization: Standardization | str = DEFAULT
) -> tuple[jax.Array, jax.Array]:
    r"""Per-output-channel ``mean`` and ``scale`` with ``standardize(w) = (w - mean) * scale``.

    .. math::

       \text{scale}_o = \frac{1}{\sqrt{\sigma_o^2 + \epsilon}}
       \quad\text{or}\quad \frac{1}{\sigma_o + \epsilon}

    as :meth:`Standardization.statistics`: two read-only passes over the kernel, no kernel-sized output,
    a relative error growing like ``(mean / std)²`` float32 epsilons.

    Args:
      w: kernel ``(..., out_features)``, as for :func:`standardize`.
      standardization: a :class:`Standardization` or a :data:`PRESETS` name.

    Returns:
      ``mean`` and ``scale``, each of shape ``(out_features,)`` in float32 (float64 for float64 kernels).

    Raises:
      ValueError: as :func:`standardize`.
      TypeError: as :func:`standardize`.
    """
    return as_standardization(standardization).statistics(w)
