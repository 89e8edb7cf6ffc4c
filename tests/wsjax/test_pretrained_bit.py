"""from_bit / from_timm: round trips through each source's names and layouts, inference, every error path.

The inverse mappings (Flax -> BiT .npz, Flax -> timm state dict) are written here independently of the
loaders, from big_transfer's ``bit_pytorch/models.py`` ``load_from`` and timm's ``resnetv2.py`` names.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests import reference
from tests.helpers import (
    flax_to_bit,
    flax_to_timm,
    logits_of,
    random_params,
    same_params,
    shapes_only,
)
from wsjax.models import ResNetV2, resnetv2
from wsjax.pretrained import WeightsMismatchError, from_bit, from_timm

TINY = dict(stage_sizes=(2, 1, 1), width=32, num_classes=5)  # GN(32) as BiT's, at test size


@pytest.fixture(scope="module")
def tiny():
    x = jax.random.normal(jax.random.key(0), (2, 23, 23, 3))
    model = ResNetV2(**TINY)
    return model, random_params(model, x), x


def test_bit_npz_round_trip_gives_the_same_logits(tiny, tmp_path):
    model, params, x = tiny
    np.savez(tmp_path / "BiT-tiny.npz", **flax_to_bit(params))
    loaded, variables = from_bit(np.load(tmp_path / "BiT-tiny.npz"))
    assert (loaded.stage_sizes, loaded.width * loaded.width_factor, loaded.num_classes) == (
        (2, 1, 1),
        32,
        5,
    )
    assert loaded.conv.keywords["standardization"] == wsjax.PRESETS["bit"]
    same_params(variables["params"], params)
    assert loaded == model
    # The loaded network's logits are BiT's equations' (the NumPy reference, GN(32)) on the written weights.
    want = reference.resnetv2(params, x, 32)
    got = logits_of(loaded, variables["params"], x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_bit_architecture_is_read_off_the_shapes():
    """BiT-M R50x1 (21843 classes) from names and shapes alone; a ×2 width from the root's 128 channels."""
    model, variables = from_bit(flax_to_bit(shapes_only(resnetv2(50, 1, num_classes=21843))))
    assert model == resnetv2(50, 1, num_classes=21843)
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, want)
    wide = ResNetV2(stage_sizes=(1, 2), width_factor=2, num_classes=3)
    model, _ = from_bit(flax_to_bit(shapes_only(wide, 32)))
    assert model == wide


def test_timm_round_trip_r50x1():
    """timm's names for resnetv2_50x1_bit, parameters back bit for bit; timm's eps 1e-8 by default."""
    model = resnetv2(50, 1)
    params = random_params(model, jnp.zeros((1, 64, 64, 3)))
    loaded, variables = from_timm(flax_to_timm(params), "timm/resnetv2_50x1_bit.goog_in21k_ft_in1k")
    same_params(variables["params"], params)
    timm_std = wsjax.Standardization(eps=1e-8, unbiased=False, eps_outside_sqrt=False)
    assert loaded.conv.keywords["standardization"] == timm_std
    assert (loaded.stage_sizes, loaded.width_factor, loaded.num_classes) == ((3, 4, 6, 3), 1, 1000)
    bit, _ = from_timm(flax_to_timm(params), "resnetv2_50x1_bit", standardization="bit")
    assert bit.conv.keywords["standardization"] == wsjax.PRESETS["bit"]


def test_timm_width_factor_comes_from_the_name():
    weights = flax_to_timm(shapes_only(resnetv2(50, 1, num_classes=10), 32))
    with pytest.raises(
        WeightsMismatchError,
        match=r"timm weight 'stem.conv.weight' has shape \(64, 3, 7, 7\), but the architecture needs "
        r"\(192, 3, 7, 7\)",
    ):
        from_timm(weights, "resnetv2_50x3_bit")


def test_a_new_head_is_zeros_and_features_only_has_none(tiny):
    _, params, _ = tiny
    weights = flax_to_bit(params)
    model, variables = from_bit(weights, num_classes=7)
    assert model.num_classes == 7
    assert not np.any(variables["params"]["head"]["kernel"]) and variables["params"]["head"][
        "kernel"
    ].shape == (512, 7)
    assert not np.any(variables["params"]["head"]["bias"])
    same_params(from_bit(weights, num_classes=5)[1], from_bit(weights)[1])
    model, variables = from_bit(weights, num_classes=0)
    assert model.num_classes == 0 and "head" not in variables["params"]
    headless = {k: v for k, v in weights.items() if "/head/" not in k}
    assert from_bit(headless, num_classes=3)[0].num_classes == 3
    with pytest.raises(WeightsMismatchError, match=r"no head \('resnet/head/conv2d/kernel'\)"):
        from_bit(headless)
    timm_model, timm_vars = from_timm(
        flax_to_timm(shapes_only(resnetv2(50, 1), 32)), "resnetv2_50x1_bit", num_classes=10
    )
    assert timm_vars["params"]["head"]["kernel"].shape == (2048, 10)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="num_classes must be None or an integer >= 0"):
            from_bit(weights, num_classes=bad)


def test_bits_numbered_conv_names_are_read(tiny):
    """Some BiT files name a kernel ``standardized_conv2d_1`` (big_vision works around it too)."""
    _, params, _ = tiny
    weights = flax_to_bit(params)
    name = "resnet/block2/unit01/b/standardized_conv2d/kernel"
    weights[name.replace("conv2d/", "conv2d_1/")] = weights.pop(name)
    same_params(from_bit(weights)[1]["params"], params)
    weights[name] = weights[name.replace("conv2d/", "conv2d_1/")]
    with pytest.raises(WeightsMismatchError, match="have both"):
        from_bit(weights)


@pytest.fixture(scope="module")
def bit_weights(tiny):
    return flax_to_bit(tiny[1])


def test_missing_unknown_and_misshapen_names_are_named(bit_weights):
    gamma = "resnet/block2/unit01/b/group_norm/gamma"
    missing = {k: v for k, v in bit_weights.items() if k != gamma}
    with pytest.raises(WeightsMismatchError, match=f"BiT .npz weights have no '{gamma}'"):
        from_bit(missing)
    extra = {**bit_weights, "resnet/block1/unit01/a/extra": np.zeros(3)}
    with pytest.raises(WeightsMismatchError, match="first 'resnet/block1/unit01/a/extra'"):
        from_bit(extra)
    kernel = "resnet/block3/unit01/c/standardized_conv2d/kernel"
    transposed = {**bit_weights, kernel: bit_weights[kernel].transpose(0, 1, 3, 2)}
    with pytest.raises(WeightsMismatchError, match=rf"'{kernel}' has shape \(1, 1, 512, 128\)"):
        from_bit(transposed)
    head = {**bit_weights, "resnet/head/conv2d/kernel": np.zeros((1, 1, 64, 5), np.float32)}
    with pytest.raises(WeightsMismatchError, match=r"'resnet/head/conv2d/kernel' has shape"):
        from_bit(head)


def test_other_files_are_refused_with_the_reason(bit_weights):
    timm_dict = flax_to_timm(shapes_only(resnetv2(50, 1), 32))
    with pytest.raises(WeightsMismatchError, match=r"not a BiT \.npz checkpoint"):
        from_bit(timm_dict)
    with pytest.raises(WeightsMismatchError, match="timm weights have no 'stem.conv.weight'"):
        from_timm(bit_weights, "resnetv2_50x1_bit")
    gap = {k: v for k, v in bit_weights.items() if "/block2/" not in k}
    with pytest.raises(WeightsMismatchError, match="no 'resnet/block2/...' names"):
        from_bit(gap)
    with pytest.raises(ValueError, match=r"'resnet50' is not a timm BiT model"):
        from_timm(timm_dict, "resnet50")
    with pytest.raises(ValueError, match=r"'resnetv2_34x1_bit' is not a timm BiT model"):
        from_timm(timm_dict, "resnetv2_34x1_bit")
    with pytest.raises(TypeError, match="must be a mapping"):
        from_bit([("resnet/root", np.zeros(1))])
    extra = {**timm_dict, "stages.0.blocks.0.norm1.running_mean": np.zeros(256)}
    with pytest.raises(WeightsMismatchError, match="first 'stages.0.blocks.0.norm1.running_mean'"):
        from_timm(extra, "resnetv2_50x1_bit")
