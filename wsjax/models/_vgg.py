"""VGG as in the PyTorch reference experiment of Weight Standardization (labml-nn, after Qiao et al.).

3×3 convolutions with padding 1 and bias, each followed by ``norm`` and ReLU, a 2×2 max-pool after each stage,
and one Dense classifier on the flattened 1×1×512 map.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax._layers import WSConv
from wsjax.models._norms import ModuleDef

VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
    """Zero-pads the spatial sides of ``(N, H, W, C)`` symmetrically up to a multiple (28×28 → 32×32).

    Args:
      x: ``(N, H, W, C)`` (or any rank: every axis but the first and last is padded).
      multiple: each side is padded to the next multiple of this, ``extra // 2`` zeros before.

    Returns:
      ``x`` padded, or ``x`` itself where every side is a multiple already.
    """
    pads = [(0, 0)]
    for size in x.shape[1:-1]:
        extra = -size % multiple
        pads.append((extra // 2, extra - extra // 2))
    return jnp.pad(x, pads + [(0, 0)]) if any(p != (0, 0) for p in pads) else x


def max_pool_2x2(x: jax.Array) -> jax.Array:
    r"""2×2 max-pool with stride 2 on ``(N, H, W, C)`` with even sides.

    .. math::

       y_{n,i,j,c} = \max_{a, b \in \{0, 1\}} x_{n,\,2i+a,\,2j+b,\,c}

    Written as a reshape and a max rather than ``nn.max_pool``: the same outputs, but a gradient that XLA:CPU
    computes 8× faster than ``reduce_window``'s select-and-scatter (66 ms vs 8 ms at 64×32×32×64 here). The
    gradient of a window whose maximum is tied goes in equal shares to the tied entries (``jnp.max``'s rule)
    instead of to one of them; after a ReLU the usual tie is at 0, where the ReLU passes no gradient anyway.

    Args:
      x: ``(N, H, W, C)`` with ``H`` and ``W`` even.

    Returns:
      ``(N, H / 2, W / 2, C)``.
    """
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG(nn.Module):
    r"""VGG for small images: per stage, 3×3 convolutions each followed by norm and ReLU, then a 2×2 max-pool.

    .. math::

       x \leftarrow \operatorname{relu}(N(C(x))) \ \text{per convolution}, \qquad
       x \leftarrow \operatorname{maxpool}_{2\times2}(x) \ \text{per stage}, \qquad
       \text{logits} = \text{Dense}(\operatorname{flatten}(x))

    Inputs ``(N, H, W, C)`` of any channel count; sides not a multiple of ``2 ** len(stages)`` are
    zero-padded up to one, so 28×28 Fashion-MNIST enters as 32×32.

    Args:
      stages: the channels of each convolution, stage by stage (:data:`VGG16_STAGES` for VGG16).
      num_classes: the classifier's width.
      conv: the convolution, :class:`wsjax.WSConv` by default (on CPU with
        :func:`wsjax.cpu.conv_general_dilated`).
      norm: the norm, as from :func:`norm_layer`; None: none.
      conv_bias: whether the convolutions have a bias (the reference's do).
      dtype: the computation dtype; parameters stay float32.
    """

    stages: Sequence[Sequence[int]] = VGG16_STAGES
    num_classes: int = 10
    conv: ModuleDef = WSConv
    norm: ModuleDef | None = None  # from wsjax.models.norm_layer; None: no normalization
    conv_bias: bool = True  # the reference's convolutions have a bias
    dtype: Any = jnp.float32  # computation dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Float32 logits ``(N, num_classes)`` of images ``(N, H, W, C)``; ``train`` uses batch statistics."""
        x = pad_to_multiple(x.astype(self.dtype), 2 ** len(self.stages))
        for s, stage in enumerate(self.stages, start=1):
            for i, features in enumerate(stage, start=1):
                x = self.conv(
                    features,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    use_bias=self.conv_bias,
                    dtype=self.dtype,
                    name=f"conv{s}_{i}",
                )(x)
                if self.norm is not None:
                    x = self.norm(
                        use_running_average=not train, dtype=self.dtype, name=f"norm{s}_{i}"
                    )(x)
                x = nn.relu(x)
            x = max_pool_2x2(x)
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(
            jnp.float32
        )


VGG16 = functools.partial(VGG, stages=VGG16_STAGES)
# A quarter of VGG16's width: minutes, not hours, on a CPU (use num_groups <= 16 with it).
VGG16Narrow = functools.partial(
    VGG, stages=tuple(tuple(f // 4 for f in stage) for stage in VGG16_STAGES)
)
