"""The model a config names, built from wsjax parts."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

import wsjax
from experiments.errors import ConfigError
from wsjax import APPLY_TO
from wsjax.models import VGG, VGG16, ResNet18, VGG16Narrow, norm_layer

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
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONV_IMPLS = {"auto": wsjax.cpu.conv_general_dilated, "xla": jax.lax.conv_general_dilated}


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, axis_name: str | None
) -> nn.Module:
    """``config.model`` with ``config.conv`` convolutions and ``config.norm`` normalization.

    Args:
      config: the experiment config.
      num_classes: classifier width.
      axis_name: the mapped batch axis when batch statistics are synced, else None (per device).

    Raises:
      ConfigError: an unknown model, dtype, conv, ws_preset, ws_apply_to, conv_impl or norm.
    """
    if config.model not in MODELS:
        raise ConfigError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}.")
    if config.dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {config.dtype!r}; choose one of {', '.join(DTYPES)}.")
    dtype = DTYPES[config.dtype]
    if config.conv == "ws":
        if config.ws_apply_to not in APPLY_TO:
            raise ConfigError(
                f"unknown ws_apply_to {config.ws_apply_to!r}; choose one of {', '.join(APPLY_TO)}."
            )
        if config.ws_preset not in wsjax.PRESETS:
            raise ConfigError(
                f"unknown ws_preset {config.ws_preset!r}; choose one of {', '.join(wsjax.PRESETS)}."
            )
        conv = functools.partial(
            wsjax.WSConv, apply_to=config.ws_apply_to, standardization=config.ws_preset
        )
    elif config.conv == "plain":
        conv = nn.Conv
    else:
        raise ConfigError(f"unknown conv {config.conv!r}; choose 'ws' or 'plain'.")
    # XLA:CPU is slow on maps smaller than the kernel: see wsjax.cpu. "auto" (the library's default for
    # WSConv) takes that path only on the CPU backend; "xla" is lax's own convolution everywhere.
    if config.conv_impl not in CONV_IMPLS:
        raise ConfigError(
            f"unknown conv_impl {config.conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}."
        )
    conv = functools.partial(conv, conv_general_dilated=CONV_IMPLS[config.conv_impl])
    try:
        norm = norm_layer(
            config.norm,
            num_groups=config.num_groups,
            momentum=config.bn_momentum,
            axis_name=axis_name,
            dtype=dtype,
        )
    except ValueError as e:  # an unknown norm name: the library's message names the valid ones
        raise ConfigError(str(e)) from e
    return MODELS[config.model](num_classes=num_classes, conv=conv, norm=norm, dtype=dtype)
