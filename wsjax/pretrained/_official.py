"""The paper's own ImageNet checkpoints: GN+WS (pytorch-classification) and BCN+WS (Batch-Channel-Normalization).

Both repositories train the ResNet / ResNeXt of :mod:`wsjax.models._imagenet_resnet` and save PyTorch state
dicts (``checkpoint['state_dict']``, names prefixed ``module.`` by ``DataParallel``). They differ in two
places, both read off the checkpoint here:

============  =======================================================  ==========================================
checkpoint    weight standardization (per output channel)              norm (named ``bn*`` in both)
============  =======================================================  ==========================================
GN+WS         ``(w - mean) / (std + 1e-5)``, unbiased: preset ``qiao``  ``nn.GroupNorm(32)``: ``bn1.weight`` (C,)
BCN+WS        ``(w - mean) / sqrt(var + 1e-5)``, unbiased: ``pytorch``  ``nn.BatchNorm2d`` (``bn1.pbn.*``, with
                                                                       running statistics) then a channel norm
                                                                       with per-group ``bn1.weight`` (1, 32, 1)
============  =======================================================  ==========================================

Names map one to one: ``layer{s}.{b}`` ↔ ``layer{s}_{b}``, ``bn{k}`` ↔ ``norm{k}``, ``downsample.0`` / ``.1``
↔ ``downsample_conv`` / ``downsample_norm``, ``pbn`` ↔ ``batch_norm`` (``running_mean`` / ``running_var`` into
``batch_stats`` ``mean`` / ``var``), the BCN norm's own ``weight`` / ``bias`` ↔ ``channel_norm`` ``scale`` /
``bias``; layouts: conv ``(O, I, H, W)`` → ``(H, W, I, O)``, Linear ``(out, in)`` → ``(in, out)``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wsjax._layers import WSConv
from wsjax._normalization import BatchChannelNorm
from wsjax.models._imagenet_resnet import (
    OFFICIAL_CONV,
    OFFICIAL_NORM,
    ResNet50,
    ResNet101,
    ResNeXt50_32x4d,
    ResNeXt101_32x4d,
)
from wsjax.pretrained._weights import RenamedView, WeightReader, WeightsMismatchError

ARCHS = {
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnext50_32x4d": ResNeXt50_32x4d,
    "resnext101_32x4d": ResNeXt101_32x4d,
}
# PyTorch's BatchNorm2d momentum 0.1 in Flax's sense; what the BCN code trained with.
_BN_MOMENTUM = 0.9
_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def torch_name(path: tuple[str, ...]) -> str:
    """The official state dict's name of a wsjax variable, from its path below the collection.

    ``('layer1_0', 'downsample_norm', 'batch_norm', 'mean')`` → ``'layer1.0.downsample.1.pbn.running_mean'``.

    Raises:
      KeyError: a path that is not in the official layout.
    """
    parts = []
    for module in path[:-1]:
        layer = re.fullmatch(r"layer(\d+)_(\d+)", module)
        if layer:
            parts.append(f"layer{layer[1]}.{layer[2]}")
        elif module in ("downsample_conv", "downsample_norm"):
            parts.append("downsample.0" if module == "downsample_conv" else "downsample.1")
        elif re.fullmatch(r"norm\d", module):
            parts.append("bn" + module[4:])
        elif module == "batch_norm":
            parts.append("pbn")
        elif module != "channel_norm":  # BCN's channel norm owns the norm's own weight and bias
            if not re.fullmatch(r"conv\d|fc", module):
                raise KeyError(f"no official name for {'/'.join(path)}")
            parts.append(module)
    return ".".join([*parts, _LEAVES[path[-1]]])


def _torch_layout(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
    """The official tensor's shape for a wsjax variable of ``shape``, and the map from that tensor to it."""
    if path[-1] == "kernel" and len(shape) == 4:  # conv: (O, I, H, W) -> (H, W, I, O)
        h, w, i, o = shape
        return (o, i, h, w), lambda a: a.transpose(2, 3, 1, 0)
    if path[-1] == "kernel" and len(shape) == 2:  # Linear: (out, in) -> (in, out)
        return shape[::-1], lambda a: a.T
    if "channel_norm" in path:  # BCN's per-group affine, stored (1, G, 1)
        return (1, *shape, 1), lambda a: a.reshape(shape)
    return shape, lambda a: a


def _norm_of(reader: WeightReader, source: str) -> tuple[Any, Any]:
    """``(conv, norm)`` of the checkpoint: GN+WS or BCN+WS, told apart by the stem norm's names."""
    if "bn1.pbn.weight" in reader:
        shape = np.shape(reader.take("bn1.weight"))
        if len(shape) != 3 or shape[0] != 1 or shape[2] != 1:
            raise WeightsMismatchError(
                f"{source} (BCN+WS) weight 'bn1.weight' has shape {shape}, but a BCN checkpoint's channel "
                "norm stores (1, groups, 1)."
            )
        norm = functools.partial(
            BatchChannelNorm,
            num_groups=shape[1],
            estimate=False,  # the ImageNet code's BCN normalizes with nn.BatchNorm2d's statistics
            momentum=_BN_MOMENTUM,
            epsilon=1e-5,
        )
        return functools.partial(WSConv, standardization="pytorch"), norm
    return OFFICIAL_CONV, OFFICIAL_NORM


def from_official(
    weights: Mapping[str, Any], arch: str, num_classes: int | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The paper's GN+WS or BCN+WS ImageNet network with its official weights.

    Args:
      weights: the PyTorch state dict as ``name -> array`` (e.g. ``{k: v.numpy() for k, v in
        torch.load(path, weights_only=True)['state_dict'].items()}``); a mapping that holds it under
        ``'state_dict'`` is unwrapped, and ``DataParallel``'s ``module.`` prefix is dropped. GN+WS or BCN+WS
        is read off the names; ``num_batches_tracked`` is ignored.
      arch: one of :data:`ARCHS`: ``'resnet50'``, ``'resnet101'``, ``'resnext50_32x4d'``,
        ``'resnext101_32x4d'`` (the official ``l_resnet50``, ``l_resnet101``, ``l_resnext50``, ``l_resnext101``
        with base width 4 and cardinality 32).
      num_classes: the classifier's width; None: the checkpoint's. Another width gets a new head of zeros
        (as BiT fine-tunes), and the checkpoint's ``fc`` is checked but left unused.

    Returns:
      ``(model, variables)``: ``model.apply(variables, x, train=False)`` gives the official network's logits
      on images ``x`` of shape ``(N, H, W, 3)``, normalized as it was trained (ImageNet mean and std).
      ``variables`` has ``params`` and, for BCN+WS, ``batch_stats``.

    Raises:
      ValueError: an unknown ``arch`` or a ``num_classes`` < 1.
      WeightsMismatchError: a missing or unused name, or a shape that is not the architecture's, naming the
        first such key.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}.")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}.")
    if "state_dict" in weights and isinstance(weights["state_dict"], Mapping):
        weights = weights["state_dict"]
    source = f"official {arch}"
    reader = WeightReader(
        RenamedView(weights, lambda k: k.removeprefix("module."), source),
        source,
        ignore=("num_batches_tracked",),
    )
    conv, norm = _norm_of(reader, source)
    head_classes = np.shape(reader.take("fc.bias"))[0] if "fc.bias" in reader else None
    model = ARCHS[arch](num_classes=num_classes or head_classes or 1000, conv=conv, norm=norm)
    # Shapes only, on a side whose last map suits the ResNeXt's AvgPool2d(7): 224 for 4 stages.
    side = (model.avg_pool_window or 7) * 2 ** (len(model.stage_sizes) + 1)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False)
    )
    new_head = num_classes is not None and num_classes != head_classes
    variables: dict[str, Any] = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
        collection, *names = (k.key for k in keys)
        path = tuple(names)
        shape, to_flax = _torch_layout(path, tuple(leaf.shape))
        name = torch_name(path)
        if new_head and path[0] == "fc":
            # The checkpoint's head must still fit the features; a new one starts at zero.
            # (head_classes is None only for a checkpoint without 'fc.bias': take then reports the mismatch.)
            reader.take(
                name,
                (head_classes, *shape[1:]) if name == "fc.weight" else (head_classes,),  # type: ignore[arg-type]
            )
            value = np.zeros(leaf.shape, np.float32)
        else:
            value = to_flax(reader.take(name, shape))
        node = variables.setdefault(collection, {})
        for module in path[:-1]:
            node = node.setdefault(module, {})
        node[path[-1]] = jnp.asarray(value)
    reader.finish()
    return model, variables
