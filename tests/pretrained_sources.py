"""Flax ResNetV2 parameters in the names and layouts of BiT's .npz and timm's state dicts (the loaders' inverses).

Written independently of the loaders, from big_transfer's ``bit_pytorch/models.py`` ``load_from`` and timm's
``resnetv2.py`` names. For the tests only.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np

UNIT = re.compile(r"block(\d)_unit(\d\d)")


def flax_to_bit(params):
    """A BiT .npz's names and layouts: HWIO kernels, GN gamma/beta (C,), a (1, 1, C, K) conv head."""
    out = {"resnet/root_block/standardized_conv2d/kernel": params["root_conv"]["kernel"]}
    out["resnet/group_norm/gamma"] = params["norm_pre_head"]["scale"]
    out["resnet/group_norm/beta"] = params["norm_pre_head"]["bias"]
    if "head" in params:
        out["resnet/head/conv2d/kernel"] = np.asarray(params["head"]["kernel"])[None, None]
        out["resnet/head/conv2d/bias"] = params["head"]["bias"]
    for name, unit in params.items():
        match = UNIT.fullmatch(name)
        if not match:
            continue
        prefix = f"resnet/block{match[1]}/unit{match[2]}"
        for i, letter in zip("123", "abc", strict=True):
            out[f"{prefix}/{letter}/standardized_conv2d/kernel"] = unit[f"conv{i}"]["kernel"]
            out[f"{prefix}/{letter}/group_norm/gamma"] = unit[f"gn{i}"]["scale"]
            out[f"{prefix}/{letter}/group_norm/beta"] = unit[f"gn{i}"]["bias"]
        if "conv_proj" in unit:
            out[f"{prefix}/a/proj/standardized_conv2d/kernel"] = unit["conv_proj"]["kernel"]
    return {k: np.asarray(v) for k, v in out.items()}


def flax_to_timm(params):
    """A timm resnetv2_*_bit state dict's names and layouts: OIHW kernels, a (K, C, 1, 1) conv head."""
    oihw = lambda k: np.asarray(k).transpose(3, 2, 0, 1)
    out = {
        "stem.conv.weight": oihw(params["root_conv"]["kernel"]),
        "norm.weight": params["norm_pre_head"]["scale"],
        "norm.bias": params["norm_pre_head"]["bias"],
    }
    if "head" in params:
        out["head.fc.weight"] = np.asarray(params["head"]["kernel"]).T[:, :, None, None]
        out["head.fc.bias"] = params["head"]["bias"]
    for name, unit in params.items():
        match = UNIT.fullmatch(name)
        if not match:
            continue
        prefix = f"stages.{int(match[1]) - 1}.blocks.{int(match[2]) - 1}"
        for i in "123":
            out[f"{prefix}.conv{i}.weight"] = oihw(unit[f"conv{i}"]["kernel"])
            out[f"{prefix}.norm{i}.weight"] = unit[f"gn{i}"]["scale"]
            out[f"{prefix}.norm{i}.bias"] = unit[f"gn{i}"]["bias"]
        if "conv_proj" in unit:
            out[f"{prefix}.downsample.conv.weight"] = oihw(unit["conv_proj"]["kernel"])
    return {k: np.asarray(v) for k, v in out.items()}


def same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def shapes_only(model, size=224):
    """A checkpoint of the right shapes that costs no memory (broadcast zeros)."""
    x = jnp.zeros((1, size, size, 3))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
