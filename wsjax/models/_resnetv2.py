r"""BiT's ResNetV2 (Kolesnikov et al., "Big Transfer", arXiv 1912.11370): pre-activation bottlenecks, GN + WS.

The network of BiT-S / BiT-M (and timm's ``resnetv2_*_bit``), with every detail that changes its logits:

- root: a 7×7/2 standardized convolution padded by 3 on each side, no norm and no activation, then a 3×3/2
  max-pool after padding the map by 1 with **zeros** (BiT's ``fixed_padding`` before a VALID pool; timm's
  ``stem_type='fixed'``). The root's output is not rectified, so zero padding is not ``-inf`` padding: a
  border window whose values are all negative pools to 0. ``pool_padding="-inf"`` gives the other form
  (PyTorch's ``MaxPool2d(3, 2, padding=1)``, big_vision's ``bit_paper.py``).
- unit (pre-activation bottleneck, He et al. 2016b), with :math:`a = \operatorname{relu}(\mathrm{GN}_1(x))`:

  .. math::

     y = C_3\Big(\operatorname{relu}\big(\mathrm{GN}_3(C_2(\operatorname{relu}(\mathrm{GN}_2(C_1(a)))))\big)\Big)
         + \begin{cases} P(a) & \text{first unit of a block (projection, 1×1, strided)} \\
                         x & \text{otherwise} \end{cases}

  :math:`C_1` 1×1 to ``mid`` channels, :math:`C_2` 3×3 with the block's stride (on the 3×3, not the 1×1)
  and padding 1, :math:`C_3` 1×1 to ``4 · mid``. The projection takes the *pre-activated* input :math:`a`.
- after the last block: GN, ReLU, the spatial mean and the head. BiT's head is a 1×1 convolution on the
  1×1 averaged map, which is a Dense layer: it is one here (kernel ``(C, num_classes)``).
- every convolution is weight-standardized, without bias; BiT's convention is biased variance and
  :math:`\sqrt{\sigma^2 + 10^{-10}}` (``wsjax.PRESETS["bit"]``, the default); timm runs the same weights with
  eps 1e-8 (``wsjax.Standardization(eps=1e-8, unbiased=False)``). GN has 32 groups and eps 1e-5 in both.

Block ``b`` (from 0) has ``mid = width · width_factor · 2**b`` and ``4 · mid`` output channels; blocks after
the first halve the map in their first unit. Depths 50 / 101 / 152 are :data:`BIT_DEPTHS`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax._layers import WSConv
from wsjax._standardization import PRESETS
from wsjax.models._norms import GroupNorm, ModuleDef

#: Units per block of BiT's depths.
BIT_DEPTHS: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
POOL_PADDINGS = ("zeros", "-inf")

#: BiT's convolution: weight-standardized with biased variance, eps 1e-10 inside the root.
BIT_CONV: ModuleDef = functools.partial(WSConv, standardization=PRESETS["bit"])
#: BiT's norm: GroupNorm(32), eps 1e-5; the two-pass variance (Flax's fast E[x²]-E[x]² loses digits on
#: the residual stream's large means).
BIT_NORM: ModuleDef = functools.partial(
    GroupNorm, num_groups=32, epsilon=1e-5, use_fast_variance=False
)


class PreActBottleneck(nn.Module):
    """One pre-activation bottleneck unit (see the module docstring for the equation).

    Args:
      mid: the bottleneck's channels; the unit outputs ``4 * mid``.
      strides: the 3×3 convolution's (and the projection's) stride.
      conv: the convolution, called as ``conv(features, kernel_size, strides, padding=..., ...)``.
      norm: the norm, as from :func:`wsjax.models.norm_layer`; None: none.
      train: batch statistics (True) or running averages (False), for norms that have them.
      dtype: the computation dtype.
    """

    mid: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef | None
    train: bool
    dtype: Any

    def _preact(self, x: jax.Array, name: str) -> jax.Array:
        if self.norm is not None:
            x = self.norm(use_running_average=not self.train, dtype=self.dtype, name=name)(x)
        return nn.relu(x)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The unit on ``(N, H, W, C)``; returns ``(N, ceil(H / strides), ceil(W / strides), 4 * mid)``."""
        conv = functools.partial(self.conv, use_bias=False, dtype=self.dtype)
        out = 4 * self.mid
        a = self._preact(x, "gn1")
        shortcut = x
        if self.strides != 1 or x.shape[-1] != out:
            shortcut = conv(out, (1, 1), self.strides, padding="VALID", name="conv_proj")(a)
        y: jax.Array = conv(self.mid, (1, 1), padding="VALID", name="conv1")(a)
        y = self._preact(y, "gn2")
        y = conv(self.mid, (3, 3), self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self._preact(y, "gn3")
        y = conv(out, (1, 1), padding="VALID", name="conv3")(y)
        return y + shortcut


class ResNetV2(nn.Module):
    """BiT's ResNetV2: root, blocks of :class:`PreActBottleneck`, GN + ReLU, spatial mean, Dense head.

    Parameter names: ``root_conv``, ``block{b}_unit{u:02d}`` (b, u from 1; inside, ``gn1..3``,
    ``conv1..3``, ``conv_proj``), ``norm_pre_head``, ``head``: BiT's own, flattened one level.

    Args:
      stage_sizes: units per block; ``BIT_DEPTHS[50]`` is R50.
      width_factor: BiT's ×1…×4: multiplies every width.
      num_classes: the head's width; 0 or None: no head (the pooled features, ``(N, C)``).
      width: the root's channels at width factor 1 (BiT: 64); small values build tiny test networks.
      conv: the convolution, BiT's by default (``WSConv`` with ``PRESETS["bit"]``).
      norm: the norm, BiT's ``GroupNorm(32, eps=1e-5)`` by default; None: none.
      pool_padding: how the root pool pads: ``"zeros"`` (BiT, timm's BiT models) or ``"-inf"``.
      head_init: the head kernel's initializer; zeros, as BiT fine-tunes.
      dtype: the computation dtype; parameters stay float32 and the logits come back float32.
    """

    stage_sizes: Sequence[int] = BIT_DEPTHS[50]
    width_factor: int = 1
    num_classes: int | None = 1000
    width: int = 64
    conv: ModuleDef = BIT_CONV
    norm: ModuleDef | None = BIT_NORM
    pool_padding: str = "zeros"
    head_init: Any = nn.initializers.zeros
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Float32 logits ``(N, num_classes)`` of images ``(N, H, W, C)``; ``train`` only matters for BN."""
        if self.pool_padding not in POOL_PADDINGS:
            raise ValueError(
                f"ResNetV2: pool_padding must be one of {POOL_PADDINGS}, got {self.pool_padding!r}."
            )
        root = self.width * self.width_factor
        x = self.conv(
            root,
            (7, 7),
            2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            name="root_conv",
        )(x.astype(self.dtype))
        if self.pool_padding == "zeros":
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            x = nn.max_pool(x, (3, 3), (2, 2), padding="VALID")
        else:
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for block, units in enumerate(self.stage_sizes):
            for unit in range(units):
                x = PreActBottleneck(
                    root * 2**block,
                    strides=2 if block > 0 and unit == 0 else 1,
                    conv=self.conv,
                    norm=self.norm,
                    train=train,
                    dtype=self.dtype,
                    name=f"block{block + 1}_unit{unit + 1:02d}",
                )(x)
        if self.norm is not None:
            x = self.norm(use_running_average=not train, dtype=self.dtype, name="norm_pre_head")(x)
        x = jnp.mean(nn.relu(x), axis=(1, 2))
        if self.num_classes:
            x = nn.Dense(
                self.num_classes, kernel_init=self.head_init, dtype=self.dtype, name="head"
            )(x)
        return x.astype(jnp.float32)


def resnetv2(depth: int = 50, width_factor: int = 1, **kwargs: Any) -> ResNetV2:
    """BiT's ResNetV2 of a depth in :data:`BIT_DEPTHS` (e.g. ``resnetv2(50, 1)`` is BiT's R50x1).

    Args:
      depth: 50, 101 or 152.
      width_factor: the width multiplier (BiT publishes ×1, ×2, ×3, ×4).
      **kwargs: any other :class:`ResNetV2` field.

    Raises:
      ValueError: a depth BiT does not define, or a width factor < 1.
    """
    if depth not in BIT_DEPTHS:
        raise ValueError(f"resnetv2: depth must be one of {sorted(BIT_DEPTHS)}, got {depth!r}.")
    if not isinstance(width_factor, int) or width_factor < 1:
        raise ValueError(f"resnetv2: width_factor must be an integer >= 1, got {width_factor!r}.")
    return ResNetV2(stage_sizes=BIT_DEPTHS[depth], width_factor=width_factor, **kwargs)
