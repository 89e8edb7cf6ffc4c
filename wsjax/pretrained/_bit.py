"""BiT-S / BiT-M checkpoints (big_transfer's ``.npz``) as a :class:`wsjax.models.ResNetV2`.

A BiT ``.npz`` holds TensorFlow names and layouts: convolution kernels ``HWIO`` as in Flax, GroupNorm
``gamma`` / ``beta`` of shape ``(C,)``, and a 1×1 convolution head ``(1, 1, C, classes)``::

    resnet/root_block/standardized_conv2d/kernel
    resnet/block1/unit01/a/group_norm/{gamma,beta}          # GN1, then conv1 (1×1)
    resnet/block1/unit01/a/standardized_conv2d/kernel
    resnet/block1/unit01/a/proj/standardized_conv2d/kernel  # the projection, first unit of each block
    resnet/block1/unit01/{b,c}/...                          # GN2 + conv2 (3×3), GN3 + conv3 (1×1)
    resnet/group_norm/{gamma,beta}                          # before the head
    resnet/head/conv2d/{kernel,bias}

The walk over the network (:func:`resnetv2_params`) is shared with the timm loader, which maps the same
Flax paths to its own names and layouts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wsjax.models._resnetv2 import ResNetV2
from wsjax.pretrained._weights import RenamedView, WeightReader, WeightsMismatchError

# take(flax path, flax shape) -> array in Flax layout
Take = Callable[[tuple[str, ...], tuple[int, ...]], np.ndarray]

SOURCE = "BiT .npz"
_ROOT = "resnet/root_block/standardized_conv2d/kernel"
_UNIT = re.compile(r"^resnet/block(\d+)/unit(\d+)/")
_LAYER = {"gn1": "a", "conv1": "a", "gn2": "b", "conv2": "b", "gn3": "c", "conv3": "c"}


def resnetv2_params(
    take: Take, stage_sizes: Sequence[int], root: int, in_channels: int
) -> dict[str, Any]:
    """The parameters of ``ResNetV2(stage_sizes, width=root)`` but its head, each asked of ``take``.

    Args:
      take: returns the array for a Flax path (e.g. ``("block1_unit01", "conv1", "kernel")``) in Flax
        layout, given the Flax shape it must have.
      stage_sizes: units per block.
      root: the root convolution's channels (``width * width_factor``).
      in_channels: the images' channels.

    Returns:
      The ``params`` collection without ``head``.
    """

    def conv(path: tuple[str, ...], size: int, cin: int, cout: int) -> dict[str, np.ndarray]:
        return {"kernel": take((*path, "kernel"), (size, size, cin, cout))}

    def norm(path: tuple[str, ...], channels: int) -> dict[str, np.ndarray]:
        return {leaf: take((*path, leaf), (channels,)) for leaf in ("scale", "bias")}

    params: dict[str, Any] = {"root_conv": conv(("root_conv",), 7, in_channels, root)}
    cin = root
    for block, units in enumerate(stage_sizes):
        mid = root * 2**block
        for unit in range(units):
            name = f"block{block + 1}_unit{unit + 1:02d}"
            p = {
                "gn1": norm((name, "gn1"), cin),
                "conv1": conv((name, "conv1"), 1, cin, mid),
                "gn2": norm((name, "gn2"), mid),
                "conv2": conv((name, "conv2"), 3, mid, mid),
                "gn3": norm((name, "gn3"), mid),
                "conv3": conv((name, "conv3"), 1, mid, 4 * mid),
            }
            if unit == 0:  # BiT's first units always project: a stride, or 64 -> 256 channels
                p["conv_proj"] = conv((name, "conv_proj"), 1, cin, 4 * mid)
            params[name] = p
            cin = 4 * mid
    params["norm_pre_head"] = norm(("norm_pre_head",), cin)
    return params


def head_params(
    reader: WeightReader,
    weights: Mapping[str, Any],
    names: tuple[str, str],
    num_classes: int | None,
    features: int,
    source_shape: Callable[[int], tuple[int, ...]],
    to_flax: Callable[[np.ndarray], np.ndarray],
    classes_axis: int,
) -> tuple[int, dict[str, np.ndarray] | None]:
    """The head's ``(num_classes, params)``: the checkpoint's, or zeros of another size (BiT's rule).

    Args:
      reader: the checkpoint's reader.
      weights: the same checkpoint, for the head kernel's shape (how many classes it has).
      names: the source's head kernel and bias names.
      num_classes: None: the checkpoint's head; 0: none; another size: zeros (the checkpoint's head,
        if any, is read, checked and dropped).
      features: the head's input width.
      source_shape: the source kernel's shape for a number of classes.
      to_flax: the source's kernel to Flax's ``(features, classes)``.
      classes_axis: the axis of the source's kernel that counts the classes.

    Raises:
      ValueError: ``num_classes`` negative or not an integer.
      WeightsMismatchError: no head in the checkpoint and ``num_classes`` None, or a misshapen head.
    """
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0
    ):
        raise ValueError(f"num_classes must be None or an integer >= 0, got {num_classes!r}.")
    kernel_name, bias_name = names
    if kernel_name in reader:
        shape = np.shape(weights[kernel_name])
        classes = shape[classes_axis] if len(shape) == len(source_shape(0)) else 0
        kernel = to_flax(reader.take(kernel_name, source_shape(classes)))
        bias = reader.take(bias_name, (classes,))
        if num_classes is None or num_classes == classes:
            return classes, {"kernel": kernel, "bias": bias}
    elif num_classes is None:
        raise WeightsMismatchError(
            f"the weights have no head ({kernel_name!r}): pass num_classes for a new one."
        )
    if num_classes == 0:
        return 0, None
    zeros = np.zeros((features, num_classes), np.float32)
    return num_classes, {"kernel": zeros, "bias": np.zeros((num_classes,), np.float32)}


def _bit_name(path: tuple[str, ...]) -> str:
    """BiT's name of a Flax path of :class:`ResNetV2`."""
    *module, leaf = path
    leaf = {"scale": "gamma", "bias": "beta"}.get(leaf, leaf)
    if module == ["root_conv"]:
        return _ROOT
    if module == ["norm_pre_head"]:
        return f"resnet/group_norm/{leaf}"
    unit, layer = module
    block, number = unit.split("_")
    prefix = f"resnet/{block}/{number}"
    if layer == "conv_proj":
        return f"{prefix}/a/proj/standardized_conv2d/{leaf}"
    kind = "group_norm" if layer.startswith("gn") else "standardized_conv2d"
    return f"{prefix}/{_LAYER[layer]}/{kind}/{leaf}"


def bit_architecture(
    reader: WeightReader, weights: Mapping[str, Any]
) -> tuple[tuple[int, ...], int, int]:
    """``(stage_sizes, root_channels, in_channels)`` of a BiT checkpoint, from its names and root shape.

    Raises:
      WeightsMismatchError: no ``resnet/blockB/unitUU/`` names or no root kernel (not a BiT checkpoint).
    """
    units: dict[int, int] = {}
    for name in reader.names():
        match = _UNIT.match(name)
        if match:
            block, unit = int(match[1]), int(match[2])
            units[block] = max(units.get(block, 0), unit)
    if not units or _ROOT not in reader:
        raise WeightsMismatchError(
            f"not a {SOURCE} checkpoint: no 'resnet/block1/unit01/...' names or no {_ROOT!r} "
            f"(first names: {reader.names()[:3]})."
        )
    stage_sizes = tuple(units.get(b, 0) for b in range(1, max(units) + 1))
    if 0 in stage_sizes:
        missing = stage_sizes.index(0) + 1
        raise WeightsMismatchError(f"{SOURCE} weights have no 'resnet/block{missing}/...' names.")
    shape = np.shape(weights[_ROOT])
    if len(shape) != 4 or shape[:2] != (7, 7):
        # Name the shape in BiT's own HWIO layout: from an OIHW kernel (a PyTorch export), its transpose.
        needed = (
            (7, 7, shape[1], shape[0]) if len(shape) == 4 and shape[2:] == (7, 7) else (7, 7, 3, 64)
        )
        raise WeightsMismatchError(
            f"{SOURCE} weight {_ROOT!r} has shape {shape}, but the root needs a 7×7 kernel in BiT's HWIO "
            f"layout, (7, 7, in_channels, out_channels): {needed} for these weights."
        )
    return stage_sizes, shape[3], shape[2]


def from_bit(
    weights: Mapping[str, Any], num_classes: int | None = None, **model_kwargs: Any
) -> tuple[ResNetV2, dict[str, Any]]:
    """A BiT-S / BiT-M checkpoint as ``(model, variables)``, architecture read off the names and shapes.

    ``model.apply(variables, images_nhwc, train=False)`` gives the logits of big_transfer's own models
    (``bit_jax``, ``bit_pytorch``): their standardization, biased variance and
    :math:`\\sqrt{\\sigma^2 + 10^{-10}}` (``wsjax.PRESETS["bit"]``, the eps the weights were trained with),
    GroupNorm(32) with eps 1e-5, and the root pool's zero padding. The depth (units per block) comes from
    the ``unitUU`` names, the width factor from the root kernel (``64 · factor`` channels); depths 50,
    101 and 152 of BiT are ``BIT_DEPTHS``, others build all the same. Images are what BiT was trained on:
    RGB in [-1, 1] (``x / 127.5 - 1``).

    Args:
      weights: the ``.npz`` as a mapping, e.g. ``np.load("BiT-M-R50x1.npz")``. Names of the form
        ``.../standardized_conv2d_1/...``, found in some BiT files, read as ``.../standardized_conv2d/...``.
      num_classes: None: the checkpoint's head (21843 for BiT-M, 1000 for BiT-S); 0: no head (the
        pooled features); another number: a new head of zeros, as BiT fine-tunes.
      **model_kwargs: other :class:`wsjax.models.ResNetV2` fields (``dtype``; ``norm`` and ``conv``
        change the network: the logits are BiT's only with the defaults).

    Returns:
      ``(ResNetV2, {"params": ...})``.

    Raises:
      WeightsMismatchError: not a BiT checkpoint, or a name missing, unused or misshapen (the first one).
      ValueError: a bad ``num_classes``.
      TypeError: ``weights`` is not a mapping.
    """
    if not hasattr(weights, "keys"):
        raise TypeError(
            f"{SOURCE} weights must be a mapping of names to arrays, got {type(weights).__name__}."
        )
    normalized = RenamedView(
        weights,
        lambda k: re.sub(r"/standardized_conv2d_\d+/", "/standardized_conv2d/", k),
        SOURCE,
    )
    reader = WeightReader(normalized, SOURCE)
    stage_sizes, root, in_channels = bit_architecture(reader, normalized)
    params = resnetv2_params(
        lambda path, shape: reader.take(_bit_name(path), shape), stage_sizes, root, in_channels
    )
    features = params["norm_pre_head"]["scale"].shape[0]
    classes, head = head_params(
        reader,
        normalized,
        ("resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"),
        num_classes,
        features,
        lambda classes: (1, 1, features, classes),
        lambda kernel: kernel[0, 0],
        -1,
    )
    if head is not None:
        params["head"] = head
    reader.finish()
    width, factor = (64, root // 64) if root % 64 == 0 else (root, 1)
    model = ResNetV2(
        stage_sizes=stage_sizes,
        width_factor=factor,
        width=width,
        num_classes=classes,
        **model_kwargs,
    )
    return model, {"params": jax.tree.map(jnp.asarray, params)}
