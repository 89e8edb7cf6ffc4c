"""ResNet-18 for 32×32 images (He et al. 2016, CIFAR variant): a 3×3 stride-1 stem and no stem pool."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax._layers import WSConv
from wsjax.models._norms import ModuleDef


class BasicBlock(nn.Module):
    r"""Two 3×3 convolutions with a residual; a 1×1 projection where the shape changes.

    .. math::

       y = \operatorname{relu}\Big(P(x) + N_2\big(C_2(\operatorname{relu}(N_1(C_1(x))))\big)\Big)

    with :math:`C` the convolutions, :math:`N` the norms (the identity when ``norm`` is None) and
    :math:`P` the identity, or a strided 1×1 convolution and norm where the shape changes.

    Args:
      features: the output channels.
      strides: the first convolution's (and the projection's) stride.
      conv: the convolution, called as ``conv(features, kernel_size, strides, ...)``.
      norm: the norm, as from :func:`norm_layer`; None: none (the convolutions then have a bias).
      train: batch statistics (True) or running averages (False).
      dtype: the computation dtype.
    """

    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef | None
    train: bool
    dtype: Any

    def _norm(self, x: jax.Array, name: str) -> jax.Array:
        if self.norm is None:
            return x
        y: jax.Array = self.norm(use_running_average=not self.train, dtype=self.dtype, name=name)(x)
        return y

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The block on ``x`` of shape ``(N, H, W, C)``; returns ``(N, H / strides, W / strides, features)``."""
        conv = functools.partial(self.conv, use_bias=self.norm is None, dtype=self.dtype)
        y = conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
        y = nn.relu(self._norm(y, "norm1"))
        y = conv(self.features, (3, 3), padding=1, name="conv2")(y)
        y = self._norm(y, "norm2")
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), self.strides, name="shortcut_conv")(x)
            x = self._norm(x, "shortcut_norm")
        return nn.relu(x + y)


class ResNet(nn.Module):
    """CIFAR ResNet: a 3×3 stem, stages of :class:`BasicBlock`, a global average and one Dense classifier.

    Works on any side length (28×28 included): the head averages over space. Stage ``s`` (from 0) has
    ``width * 2**s`` channels and, after the first, halves the map in its first block.

    Args:
      stage_sizes: blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18.
      num_classes: the classifier's width.
      width: the stem's channels.
      conv: the convolution, :class:`wsjax.WSConv` by default (on CPU with
        :func:`wsjax.cpu.conv_general_dilated`).
      norm: the norm, as from :func:`norm_layer`; None: none.
      dtype: the computation dtype; parameters stay float32.
    """

    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    num_classes: int = 10
    width: int = 64
    conv: ModuleDef = WSConv
    norm: ModuleDef | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Float32 logits ``(N, num_classes)`` of images ``(N, H, W, C)``; ``train`` uses batch statistics."""
        x = self.conv(
            self.width,
            (3, 3),
            padding=1,
            use_bias=self.norm is None,
            dtype=self.dtype,
            name="stem_conv",
        )(x.astype(self.dtype))
        if self.norm is not None:
            x = self.norm(use_running_average=not train, dtype=self.dtype, name="stem_norm")(x)
        x = nn.relu(x)
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                x = BasicBlock(
                    self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    conv=self.conv,
                    norm=self.norm,
                    train=train,
                    dtype=self.dtype,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(
            jnp.float32
        )


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
