"""Normalization layers by name, built alike so that a model can take any of them as ``norm``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from wsjax import _flax_norms
from wsjax._normalization import BatchChannelNorm

ModuleDef = Callable[..., nn.Module]
NORMS = ("bn", "gn", "bcn", "none")


class GroupNorm(_flax_norms.GroupNorm):
    r"""``nn.GroupNorm`` that accepts (and ignores) ``use_running_average``: it has no running statistics.

    Like the ``'bn'`` layer, it also runs under JAX's ``'strict'`` dtype promotion (``wsjax._flax_norms``).

    .. math::

       y_{b,\ldots,c} = \gamma_c \, \frac{x_{b,\ldots,c} - \mu_{b,g}}{\sqrt{\sigma_{b,g}^2 + \epsilon}} + \beta_c,
       \qquad c \in \text{group } g

    Args:
      use_running_average: ignored; every other argument is ``nn.GroupNorm``'s.
    """

    use_running_average: bool | None = None


def norm_layer(
    kind: str,
    *,
    num_groups: int = 32,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    axis_name: str | None = None,
    dtype: Any = None,
) -> ModuleDef | None:
    """The ``norm`` of a wsjax model: called as ``norm(use_running_average=..., name=...)``.

    Args:
      kind: ``'bn'`` batch norm, ``'gn'`` group norm, ``'bcn'`` batch-channel norm, ``'none'`` (returns None).
      num_groups: groups of ``gn`` and of the channel norm in ``bcn`` (the paper uses 32).
      momentum: running-statistics momentum in Flax's sense (PyTorch's 0.1 is 0.9).
      epsilon: added to every variance.
      axis_name: mapped axis over which batch statistics are averaged; None keeps them per device.
      dtype: output dtype of the layer.

    Returns:
      A ``functools.partial`` of the layer (``nn.BatchNorm``, :class:`GroupNorm` or
      :class:`wsjax.BatchChannelNorm`), or None for ``'none'``.

    Raises:
      ValueError: an unknown ``kind``.
    """
    if kind == "bn":
        return functools.partial(
            _flax_norms.BatchNorm,
            momentum=momentum,
            epsilon=epsilon,
            axis_name=axis_name,
            dtype=dtype,
        )
    if kind == "gn":
        return functools.partial(GroupNorm, num_groups=num_groups, epsilon=epsilon, dtype=dtype)
    if kind == "bcn":
        return functools.partial(
            BatchChannelNorm,
            num_groups=num_groups,
            momentum=momentum,
            epsilon=epsilon,
            axis_name=axis_name,
            dtype=dtype,
        )
    if kind == "none":
        return None
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}.")
