"""timm's ``resnetv2_{50,101,152}x{1,2,3,4}_bit`` state dicts as a :class:`wsjax.models.ResNetV2`.

timm builds these as BiT's network (``stem_type='fixed'``: the root pool pads with zeros; stride on the 3×3;
pre-activated projection; GN(32) + ReLU before a 1×1 convolution head) with PyTorch names and layouts::

    stem.conv.weight                                  # (O, I, 7, 7)
    stages.{b}.blocks.{u}.norm{1,2,3}.{weight,bias}   # GroupNormAct: GN, then ReLU
    stages.{b}.blocks.{u}.conv{1,2,3}.weight          # OIHW
    stages.{b}.blocks.0.downsample.conv.weight        # the projection
    norm.{weight,bias}
    head.fc.{weight,bias}                             # (classes, C, 1, 1), (classes,)

Its ``StdConv2d`` standardizes with ``F.batch_norm`` in training mode: biased variance and
:math:`\\sqrt{\\sigma^2 + \\epsilon}` with ``eps=1e-8`` for the BiT models (the layer's default is 1e-6).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsjax._layers import WSConv
from wsjax._standardization import Standardization, as_standardization
from wsjax.models._resnetv2 import BIT_DEPTHS, ResNetV2
from wsjax.pretrained._bit import head_params, resnetv2_params
from wsjax.pretrained._weights import WeightReader

SOURCE = "timm"
#: timm's StdConv2d as its ``resnetv2_*_bit`` models build it.
TIMM_BIT_STANDARDIZATION = Standardization(eps=1e-8, unbiased=False, eps_outside_sqrt=False)
_NAME = re.compile(r"^(?:timm/)?resnetv2_(\d+)x(\d+)_bit(?:\.[\w-]+)?$")
_NORMS = {"gn1": "norm1", "gn2": "norm2", "gn3": "norm3"}


def timm_architecture(name: str) -> tuple[int, int]:
    """``(depth, width_factor)`` of a timm BiT model name, e.g. ``"resnetv2_50x1_bit.goog_in21k"``.

    Raises:
      ValueError: not a ``resnetv2_{depth}x{factor}_bit`` name of a BiT depth.
    """
    match = _NAME.match(name) if isinstance(name, str) else None
    if not match or int(match[1]) not in BIT_DEPTHS or int(match[2]) < 1:
        raise ValueError(
            f"from_timm: {name!r} is not a timm BiT model; expected 'resnetv2_{{depth}}x{{factor}}_bit' "
            f"(optionally '.tag'), depth one of {sorted(BIT_DEPTHS)}, e.g. 'resnetv2_50x1_bit'."
        )
    return int(match[1]), int(match[2])


def _timm_name(path: tuple[str, ...]) -> str:
    """timm's name of a Flax path of :class:`ResNetV2`."""
    *module, leaf = path
    leaf = {"scale": "weight", "kernel": "weight"}.get(leaf, leaf)
    if module == ["root_conv"]:
        return "stem.conv.weight"
    if module == ["norm_pre_head"]:
        return f"norm.{leaf}"
    unit, layer = module
    block, number = (int(n) for n in re.findall(r"\d+", unit))
    prefix = f"stages.{block - 1}.blocks.{number - 1}"
    if layer == "conv_proj":
        return f"{prefix}.downsample.conv.{leaf}"
    return f"{prefix}.{_NORMS.get(layer, layer)}.{leaf}"


def _take(reader: WeightReader, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The array of a Flax path, from timm's name and layout (OIHW kernels to HWIO)."""
    if len(shape) == 4:
        kh, kw, cin, cout = shape
        return reader.take(_timm_name(path), (cout, cin, kh, kw)).transpose(2, 3, 1, 0)
    return reader.take(_timm_name(path), shape)


def from_timm(
    weights: Mapping[str, Any],
    name: str,
    num_classes: int | None = None,
    *,
    standardization: Standardization | str = TIMM_BIT_STANDARDIZATION,
    **model_kwargs: Any,
) -> tuple[ResNetV2, dict[str, Any]]:
    """A timm ``resnetv2_*_bit`` state dict as ``(model, variables)``, with timm's logits.

    By default ``model.apply(variables, images_nhwc, train=False)`` equals timm's model in eval mode: its
    ``StdConv2d`` with eps **1e-8** (:data:`TIMM_BIT_STANDARDIZATION`), biased variance inside the root.
    timm's published BiT weights are BiT's own (trained with eps 1e-10 in big_transfer and big_vision), so
    ``standardization="bit"`` gives big_transfer's logits instead; the two differ where a kernel channel's
    variance is small enough for 1e-8 to count. GroupNorm eps 1e-5 and the root pool's zero padding are
    timm's ``fixed`` stem, as BiT's. Images: timm's BiT configs normalize with mean = std = 0.5.

    Args:
      weights: the state dict as NumPy arrays: ``safetensors.numpy.load_file(path)``, or
        ``{k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}``.
      name: the timm model name (``"resnetv2_50x1_bit"``, optionally ``"timm/"`` before and a
        ``".tag"`` after): depth and width factor; the shapes are checked against them.
      num_classes: None: the checkpoint's head; 0: no head (the pooled features); another number: a new
        head of zeros, as BiT fine-tunes.
      standardization: the convolutions' convention; timm's by default.
      **model_kwargs: other :class:`wsjax.models.ResNetV2` fields (``dtype``; ``norm`` changes the network).

    Returns:
      ``(ResNetV2, {"params": ...})``.

    Raises:
      ValueError: not a timm BiT name, or a bad ``num_classes``.
      WeightsMismatchError: a name missing, unused or misshapen (the first one).
    """
    depth, factor = timm_architecture(name)
    conv_std = as_standardization(standardization)
    reader = WeightReader(weights, SOURCE, ignore=("num_batches_tracked",))
    root = 64 * factor
    # The input channels are read off the stem kernel only where it is in timm's OIHW layout,
    # (root, in, 7, 7); otherwise the stem's shape check names the shape needed for RGB, (root, 3, 7, 7).
    stem: tuple[int, ...] = (
        tuple(np.shape(weights["stem.conv.weight"])) if "stem.conv.weight" in reader else ()
    )
    in_channels = stem[1] if len(stem) == 4 and stem[0] == root and stem[2:] == (7, 7) else 3
    params = resnetv2_params(
        lambda path, shape: _take(reader, path, shape), BIT_DEPTHS[depth], root, in_channels
    )
    features = params["norm_pre_head"]["scale"].shape[0]
    classes, head = head_params(
        reader,
        weights,
        ("head.fc.weight", "head.fc.bias"),
        num_classes,
        features,
        lambda classes: (classes, features, 1, 1),
        lambda kernel: kernel[:, :, 0, 0].T,
        0,
    )
    if head is not None:
        params["head"] = head
    reader.finish()
    model_kwargs.setdefault("conv", functools.partial(WSConv, standardization=conv_std))
    model = ResNetV2(
        stage_sizes=BIT_DEPTHS[depth], width_factor=factor, num_classes=classes, **model_kwargs
    )
    return model, {"params": jax.tree.map(jnp.asarray, params)}
