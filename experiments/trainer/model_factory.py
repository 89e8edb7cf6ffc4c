"""The model a config names, built from wsjax parts."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import wsjax
from experiments.common.errors import ConfigError
from wsjax.models import (
    VGG,
    VGG16,
    ResNet18,
    ResNet50,
    ResNet101,
    ResNeXt50_32x4d,
    ResNeXt101_32x4d,
    VGG16Narrow,
    norm_layer,
)

# Three 3x3 convs of 8-16-32 channels: for tests and smoke runs (use num_groups <= 8).
VGGTiny = functools.partial(VGG, stages=((8,), (16,), (32,)))
# Six 3x3 convs in three stages of 16-32-64 channels: the micro-batch study's CPU budget (num_groups <= 16).
VGGSmall = functools.partial(VGG, stages=((16, 16), (32, 32), (64, 64)))
MODELS = {
    "vgg16": VGG16,
    "vgg16_narrow": VGG16Narrow,
    "resnet18": ResNet18,
    "vgg_small": VGGSmall,
    "vgg_tiny": VGGTiny,
    # The paper's ImageNet networks (official layout; wsjax.pretrained.from_official loads their checkpoints).
    # The ResNeXts average globally here: the same as their official AvgPool2d(7) on 224 x 224 images, and
    # defined on any other size.
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnext50_32x4d": functools.partial(ResNeXt50_32x4d, avg_pool_window=None),
    "resnext101_32x4d": functools.partial(ResNeXt101_32x4d, avg_pool_window=None),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONVS = ("ws", "plain")  # weight-standardized or plain nn.Conv
CONV_IMPLS = {"auto": wsjax.cpu.conv_general_dilated, "xla": jax.lax.conv_general_dilated}


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None
) -> nn.Module:
    """``config.model`` with ``config.conv`` convolutions and ``config.norm`` normalization.

    The names in ``config`` are those :func:`experiments.trainer.validation.validate` accepts.

    Args:
      config: the experiment config.
      num_classes: classifier width.
      axis_name: the mapped batch axis when batch statistics are synced, else None (per device).
    """
    dtype = DTYPES[config.dtype]
    conv: Any = nn.Conv
    if config.conv == "ws":
        conv = functools.partial(
            wsjax.WSConv, apply_to=config.ws_apply_to, standardization=config.ws_preset
        )
    # XLA:CPU is slow on maps smaller than the kernel: see wsjax.cpu. "auto" (the library's default for
    # WSConv) takes that path only on the CPU backend; "xla" is lax's own convolution everywhere.
    conv = functools.partial(conv, conv_general_dilated=CONV_IMPLS[config.conv_impl])
    norm = norm_layer(
        config.norm,
        num_groups=config.num_groups,
        momentum=config.bn_momentum,
        axis_name=axis_name,
        dtype=dtype,
    )
    return MODELS[config.model](num_classes=num_classes, conv=conv, norm=norm, dtype=dtype)


# config.init_from_format -> the wsjax.pretrained loader, looked up when used (the loaders arrive separately).
INIT_FROM_FORMATS = {"official": "from_official", "bit": "from_bit", "timm": "from_timm"}


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A network converted from a checkpoint: the model to train and its starting variables."""

    model: nn.Module
    variables: dict[str, Any]


def load_init_from(
    config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None
) -> Pretrained | None:
    """The network of ``config.init_from`` (an ``.npz`` of the source's names), or None when it is unset.

    The checkpoint defines the architecture and its conventions (WS preset, norm): ``config.conv``,
    ``config.norm``, ``config.ws_preset`` and ``config.num_groups`` do not apply. ``config.model`` names the
    architecture for ``official`` (``resnet50`` ...) and ``timm`` (timm's model name); ``bit`` infers it. The
    head gets ``num_classes`` outputs (a new one starts at zero); ``config.dtype`` and synced batch statistics
    apply; an official ResNeXt averages globally (its AvgPool2d(7) on 224 x 224, any size otherwise).

    Raises:
      ConfigError: a loader this wsjax lacks, an unreadable file, or weights that do
        not fit (the loader's message, naming the first offending key).
    """
    path, fmt = config.init_from, config.init_from_format
    if not path:
        return None
    import wsjax.pretrained

    loader = getattr(wsjax.pretrained, INIT_FROM_FORMATS[fmt], None)
    if loader is None:
        raise ConfigError(
            f"init_from_format={fmt!r} needs wsjax.pretrained.{INIT_FROM_FORMATS[fmt]}, which this "
            "version of wsjax lacks."
        )
    try:
        weights = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"init_from: cannot read {path!r} as an .npz of named arrays ({e})."
        ) from e
    with weights:
        try:
            if fmt == "bit":
                model, variables = loader(weights, num_classes=num_classes)
            else:
                model, variables = loader(weights, config.model, num_classes=num_classes)
        except ValueError as e:  # unknown arch, WeightsMismatchError: the loader names the problem
            raise ConfigError(f"init_from {path!r}: {e}") from e
    changes: dict[str, Any] = {}
    if "dtype" in model.__dataclass_fields__:
        changes["dtype"] = DTYPES[config.dtype]
    if getattr(model, "avg_pool_window", None) is not None:
        changes["avg_pool_window"] = None
    norm = getattr(model, "norm", None)
    if axis_name is not None and isinstance(norm, functools.partial):
        if "axis_name" in getattr(norm.func, "__dataclass_fields__", {}):
            changes["norm"] = functools.partial(norm, axis_name=axis_name)
    return Pretrained(model.clone(**changes), variables)


def start_from(state: Any, pretrained: Pretrained) -> Any:
    """``state`` (a fresh TrainState of ``pretrained.model``) with the pretrained variables and a fresh
    optimizer state for them.

    Raises:
      ConfigError: the variables do not fit the model on this dataset's images (e.g. a 3-channel stem on
        1-channel images), naming the first such variable.
    """
    for collection, fresh in (("params", state.params), ("batch_stats", state.batch_stats)):
        loaded = pretrained.variables.get(collection, {})
        want = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])
        got = dict(jax.tree_util.tree_flatten_with_path(loaded)[0])
        for path in list(want) + [p for p in got if p not in want]:
            name = f"{collection}/{jax.tree_util.keystr(path, simple=True, separator='/')}"
            if path not in got or path not in want:
                raise ConfigError(
                    f"init_from: {name} is in {'the model' if path in want else 'the checkpoint'} only."
                )
            if tuple(got[path].shape) != tuple(want[path].shape):
                raise ConfigError(
                    f"init_from: {name} has shape {tuple(got[path].shape)} in the checkpoint but "
                    f"{tuple(want[path].shape)} in the model on this dataset's images (another channel count?)."
                )
    params = jax.tree.map(jnp.asarray, pretrained.variables["params"])
    batch_stats = jax.tree.map(jnp.asarray, pretrained.variables.get("batch_stats", {}))
    return state.replace(params=params, batch_stats=batch_stats, opt_state=state.tx.init(params))
