r"""The paper's ImageNet ResNet and ResNeXt, in the layout of its official code.

Qiao et al. (arXiv 1903.10520) trained on ImageNet the networks of ``joe-siyuan-qiao/pytorch-classification``
(``models/imagenet/resnet.py`` and ``resnext.py``: GN + WS) and of
``joe-siyuan-qiao/Batch-Channel-Normalization`` (the same files: BCN + WS). Both follow torchvision's layout
("ResNet v1.5"):

- stem: 7×7 convolution, stride 2, 64 channels, explicit padding 3; norm; ReLU; 3×3 max-pool, stride 2,
  padding 1 (padded with :math:`-\infty`);
- four stages of bottlenecks, ``planes`` = 64, 128, 256, 512, stages 2-4 halving the map in their first
  block with the stride on the 3×3 convolution;
- bottleneck: 1×1 conv to ``width``, 3×3 conv (``cardinality`` groups, padding 1), 1×1 conv to
  ``4 · planes``, each followed by the norm, ReLU after the first two and after the sum; the shortcut is the
  identity, or a strided 1×1 convolution and a norm where the shape changes;
- head: average pool, then a Linear layer with bias. No convolution has a bias.

``width = floor(planes · base_width / 64) · cardinality``: ``base_width=64, cardinality=1`` is ResNet,
``base_width=4, cardinality=32`` ResNeXt 32×4d (the official training scripts' setting for both ResNeXt-50
and ResNeXt-101).

Padding is explicit and symmetric as in PyTorch (Flax's ``"SAME"`` would pad a stride-2 layer on one side
only on even maps: another network). The official ResNeXt pools with ``nn.AvgPool2d(7)``, not a global
average: on 224×224 inputs (7×7 maps) the two agree; elsewhere ``avg_pool_window`` reproduces it exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax._layers import WSConv
from wsjax.models._norms import GroupNorm, ModuleDef

# The official code initializes every convolution with He's normal over fan_out (resnet.py:
# kaiming_normal_(mode='fan_out'); resnext.py: normal(0, sqrt(2 / (k·k·out))), the same), untruncated as
# there. Under WS the forward pass ignores the kernel's scale, but its gradient scales as 1 / std.
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
EXPANSION = 4  # a bottleneck's output has 4 × planes channels


# The GN+WS checkpoints' convolution (pytorch-classification `models/layers.py`): per output channel
# (w - mean) / (std + 1e-5) with the unbiased std, the `qiao` preset. The BCN+WS code standardizes as
# (w - mean) / sqrt(var + 1e-5) instead: the `pytorch` preset, WSConv's default.
OFFICIAL_CONV: ModuleDef = functools.partial(WSConv, standardization="qiao")
# The GN+WS checkpoints' norm: nn.GroupNorm(32) with PyTorch's eps.
OFFICIAL_NORM: ModuleDef = functools.partial(GroupNorm, num_groups=32, epsilon=1e-5)


class Bottleneck(nn.Module):
    r"""The official bottleneck: 1×1, 3×3 (strided, grouped), 1×1, each with a norm; residual sum; ReLU.

    .. math::

       y = \operatorname{relu}\Big(P(x) + N_3 C_3\, \operatorname{relu}\big(N_2 C_2\,
       \operatorname{relu}(N_1 C_1 x)\big)\Big)

    with :math:`P` the identity, or ``downsample_conv`` (1×1, strided) and ``downsample_norm``.

    Args:
      width: the channels of the first two convolutions.
      features: the output channels (``4 · planes``).
      strides: the 3×3 convolution's (and the shortcut's) stride.
      groups: the 3×3 convolution's groups (ResNeXt's cardinality).
      conv: the convolution, called as ``conv(features, kernel_size, strides, ...)``.
      norm: the norm, called as ``norm(use_running_average=..., name=...)``; None: none (the convolutions
        then have a bias).
      zero_init_last_norm: initialize the last norm's scale to zero (``scale_init``), as the BCN code does.
      train: batch statistics (True) or running averages (False).
      dtype: the computation dtype.
    """

    width: int
    features: int
    strides: int
    groups: int
    conv: ModuleDef
    norm: ModuleDef | None
    zero_init_last_norm: bool
    train: bool
    dtype: Any

    def _norm(self, x: jax.Array, name: str, **kwargs: Any) -> jax.Array:
        if self.norm is None:
            return x
        try:
            norm = self.norm(
                use_running_average=not self.train, dtype=self.dtype, name=name, **kwargs
            )
        except TypeError as e:  # a norm without scale_init asked for zero_init_last_norm
            raise ValueError(
                f"zero_init_last_norm needs a norm that takes scale_init ({e})."
            ) from None
        y: jax.Array = norm(x)
        return y

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """The block on ``(N, H, W, C)``; returns ``(N, ceil(H / strides), ceil(W / strides), features)``."""
        conv = functools.partial(
            self.conv, use_bias=self.norm is None, kernel_init=CONV_INIT, dtype=self.dtype
        )
        y = nn.relu(self._norm(conv(self.width, (1, 1), name="conv1")(x), "norm1"))
        y = conv(
            self.width,
            (3, 3),
            self.strides,
            padding=((1, 1), (1, 1)),
            feature_group_count=self.groups,
            name="conv2",
        )(y)
        y = nn.relu(self._norm(y, "norm2"))
        y = conv(self.features, (1, 1), name="conv3")(y)
        last = {"scale_init": nn.initializers.zeros} if self.zero_init_last_norm else {}
        y = self._norm(y, "norm3", **last)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, (1, 1), self.strides, name="downsample_conv")(x)
            x = self._norm(x, "downsample_norm")
        return nn.relu(x + y)


class ImageNetResNet(nn.Module):
    """ResNet / ResNeXt for ImageNet in the official code's layout (see the module docstring).

    Submodules are named after the PyTorch ones: ``conv1``, ``norm1`` (PyTorch's ``bn1``), ``layer{s}_{b}``
    (``layer{s}.{b}``) with ``conv1-3``, ``norm1-3`` and ``downsample_conv`` / ``downsample_norm``
    (``downsample.0`` / ``.1``), and ``fc``; :func:`wsjax.pretrained.from_official` maps one onto the other.

    Args:
      stage_sizes: bottlenecks per stage: ``(3, 4, 6, 3)`` is the 50-layer network, ``(3, 4, 23, 3)`` the 101.
      num_classes: the classifier's width.
      stem_features: the stem's channels.
      planes: each stage's ``planes`` (its output has ``4 · planes`` channels).
      base_width: ResNeXt's base width (64 with ``cardinality=1``: ResNet).
      cardinality: the 3×3 convolutions' groups.
      conv: the convolution; by default the GN+WS checkpoints' (:data:`OFFICIAL_CONV`: :class:`wsjax.WSConv`
        with the ``qiao`` standardization).
      norm: the norm, called as ``norm(use_running_average=..., name=...)``; by default GN(32)
        (:data:`OFFICIAL_NORM`); None: none (the convolutions then have a bias).
      avg_pool_window: None: global average pool (ResNet's ``AdaptiveAvgPool2d(1)``); ``k``: PyTorch's
        ``AvgPool2d(k)`` as the official ResNeXt has it (``k = 7``), which averages the top-left ``k × k``
        positions and needs a last map of ``k`` to ``2k - 1`` positions a side (224 to 415 pixels for 7).
      zero_init_last_norm: the last norm of each bottleneck starts with scale 0 (the BCN code's ``bn3``); the
        norm must take ``scale_init``.
      dtype: the computation dtype; parameters stay float32.
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    num_classes: int = 1000
    stem_features: int = 64
    planes: Sequence[int] = (64, 128, 256, 512)
    base_width: int = 64
    cardinality: int = 1
    conv: ModuleDef = OFFICIAL_CONV
    norm: ModuleDef | None = OFFICIAL_NORM
    avg_pool_window: int | None = None
    zero_init_last_norm: bool = False
    dtype: Any = jnp.float32

    def stage_widths(self) -> list[int]:
        """The bottleneck width of each stage: ``floor(planes · base_width / 64) · cardinality``."""
        return [p * self.base_width // 64 * self.cardinality for p in self.planes]

    def _pool(self, x: jax.Array) -> jax.Array:
        if self.avg_pool_window is None:
            return jnp.mean(x, axis=(1, 2))
        k = self.avg_pool_window
        if not all(k <= side < 2 * k for side in x.shape[1:3]):
            raise ValueError(
                f"ImageNetResNet: AvgPool2d({k}) needs a last map of {k} to {2 * k - 1} positions a side "
                f"(as the official ResNeXt), got {x.shape[1]}x{x.shape[2]}; use avg_pool_window=None for a "
                "global average on other sizes."
            )
        return jnp.mean(x[:, :k, :k], axis=(1, 2))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        """Float32 logits ``(N, num_classes)`` of images ``(N, H, W, C)``; ``train`` uses batch statistics.

        Images are normalized as the source trained them (the official code: ``(x / 255 - mean) / std`` with
        ImageNet's per-channel mean ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``).
        """
        if len(self.stage_sizes) != len(self.planes):
            raise ValueError(
                f"ImageNetResNet: stage_sizes {tuple(self.stage_sizes)} and planes {tuple(self.planes)} "
                "need one entry per stage each."
            )
        x = self.conv(
            self.stem_features,
            (7, 7),
            2,
            padding=((3, 3), (3, 3)),
            use_bias=self.norm is None,
            kernel_init=CONV_INIT,
            dtype=self.dtype,
            name="conv1",
        )(x.astype(self.dtype))
        if self.norm is not None:
            x = self.norm(use_running_average=not train, dtype=self.dtype, name="norm1")(x)
        x = nn.relu(x)
        # PyTorch's MaxPool2d(3, 2, padding=1) pads with -inf, as reduce_window's max does here.
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for s, (blocks, planes, width) in enumerate(
            zip(self.stage_sizes, self.planes, self.stage_widths(), strict=True)
        ):
            for b in range(blocks):
                x = Bottleneck(
                    width=width,
                    features=EXPANSION * planes,
                    strides=2 if s > 0 and b == 0 else 1,
                    groups=self.cardinality,
                    conv=self.conv,
                    norm=self.norm,
                    zero_init_last_norm=self.zero_init_last_norm,
                    train=train,
                    dtype=self.dtype,
                    name=f"layer{s + 1}_{b}",
                )(x)
        x = self._pool(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


ResNet50 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 6, 3))
ResNet101 = functools.partial(ImageNetResNet, stage_sizes=(3, 4, 23, 3))
ResNeXt50_32x4d = functools.partial(
    ImageNetResNet, stage_sizes=(3, 4, 6, 3), base_width=4, cardinality=32, avg_pool_window=7
)
ResNeXt101_32x4d = functools.partial(
    ImageNetResNet, stage_sizes=(3, 4, 23, 3), base_width=4, cardinality=32, avg_pool_window=7
)
