"""The paper's ImageNet ResNet / ResNeXt (official layout): parameter counts, pooling, init, options.

The forward pass against a NumPy reference of the official network is in test_pretrained_official.py (it
loads the reference's state dict through ``from_official``).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests.official_reference import Spec, parameter_count
from wsjax.models import (
    Bottleneck,
    GroupNorm,
    ImageNetResNet,
    ResNet50,
    ResNet101,
    ResNeXt50_32x4d,
    ResNeXt101_32x4d,
    norm_layer,
)


def _abstract(model, side=224):
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False)
    )


def _count(model):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(_abstract(model)["params"]))


@pytest.mark.parametrize(
    ("model", "spec", "known"),
    [
        # torchvision's resnet50, resnet101, resnext50_32x4d and timm's resnext101_32x4d: GN's affine
        # parameters are BN's (BN's running statistics are buffers, not parameters).
        (ResNet50, Spec(), 25_557_032),
        (ResNet101, Spec(stage_sizes=(3, 4, 23, 3)), 44_549_160),
        (ResNeXt50_32x4d, Spec(base_width=4, cardinality=32), 25_028_904),
        (
            ResNeXt101_32x4d,
            Spec(stage_sizes=(3, 4, 23, 3), base_width=4, cardinality=32),
            44_177_704,
        ),
    ],
)
def test_parameter_counts_are_the_official_networks(model, spec, known):
    assert _count(model()) == parameter_count(spec) == known


def test_bcn_adds_a_batch_norm_affine_and_a_per_group_affine_per_norm():
    bcn = functools.partial(wsjax.BatchChannelNorm, num_groups=32, estimate=False)
    # 53 norms in ResNet-50 (stem, 16 blocks x 3, 4 projections), each 2 x 32 channel-norm parameters more.
    assert _count(ResNet50(norm=bcn)) == parameter_count(Spec(kind="bcn")) == 25_557_032 + 53 * 64


def test_official_resnext_pool_averages_the_top_left_window_and_refuses_other_sizes():
    # PyTorch's AvgPool2d(k) (stride k, no padding) gives one output per side on k to 2k - 1 positions: the
    # mean of the top-left k x k. test_pretrained_official.py runs it inside a network.
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 5)).astype(np.float32)
    np.testing.assert_allclose(
        ImageNetResNet(avg_pool_window=2)._pool(x), x[:, :2, :2].mean(axis=(1, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(ImageNetResNet()._pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    for side in (1, 4):
        with pytest.raises(
            ValueError, match=rf"AvgPool2d\(2\) needs a last map of 2 to 3 .* got {side}x3"
        ):
            ImageNetResNet(avg_pool_window=2)._pool(np.zeros((1, side, 3, 5), np.float32))
    assert ResNeXt50_32x4d().avg_pool_window == ResNeXt101_32x4d().avg_pool_window == 7
    assert ResNet50().avg_pool_window is None


def _bottleneck(norm, **kw):
    return Bottleneck(
        width=16,
        features=32,
        strides=2,
        groups=1,
        conv=wsjax.WSConv,
        norm=norm,
        train=False,
        dtype=jnp.float32,
        **kw,
    )


def test_bottleneck_init_zero_last_norm_and_official_conv_init():
    x = jnp.zeros((1, 8, 8, 16))
    gn = functools.partial(GroupNorm, num_groups=4)
    params = jax.jit(_bottleneck(gn, zero_init_last_norm=True).init)(jax.random.key(0), x)["params"]
    assert not np.any(params["norm3"]["scale"]) and np.all(params["norm2"]["scale"] == 1)
    assert np.all(params["downsample_norm"]["scale"] == 1)
    # He's normal over fan_out, untruncated: conv2 is 3x3x16x16, std sqrt(2 / (9 * 16)).
    kernel, std = np.asarray(params["conv2"]["kernel"]), np.sqrt(2 / (9 * 16))
    assert abs(kernel.std() / std - 1) < 0.06  # 2,304 draws: 1.5% standard error
    assert np.abs(kernel).max() > 2.5 * std  # not truncated at 2 std
    assert "bias" not in params["conv1"]
    # BCN takes nn.BatchNorm's scale_init: its output's (the channel norm's) scale starts at zero.
    bcn = functools.partial(wsjax.BatchChannelNorm, num_groups=4)
    params = jax.jit(_bottleneck(bcn, zero_init_last_norm=True).init)(jax.random.key(0), x)[
        "params"
    ]
    assert not np.any(params["norm3"]["channel_norm"]["scale"])
    assert np.all(params["norm3"]["batch_norm"]["scale"] == 1)


def test_defaults_are_the_gn_ws_checkpoints():
    model = ResNet50()
    assert model.conv.keywords["standardization"] == "qiao"
    assert model.norm.keywords == {"num_groups": 32, "epsilon": 1e-5}
    params = _abstract(model)["params"]
    assert "bias" not in params["conv1"] and params["fc"]["bias"].shape == (1000,)
    assert params["layer3_0"]["conv2"]["kernel"].shape == (
        3,
        3,
        256,
        256,
    )  # the stride is on the 3x3


# Stem 32 = 4 x 8: the first block keeps the shape (identity shortcut), the second projects and strides.
TINY = functools.partial(
    ImageNetResNet, stage_sizes=(1, 1), planes=(8, 16), stem_features=32, num_classes=5
)


def test_shapes_shortcuts_and_any_norm_of_the_package():
    x = jnp.ones((2, 23, 20, 3))
    for kind in ("bn", "gn", "bcn", "none"):
        model = TINY(norm=norm_layer(kind, num_groups=4))
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
        logits, updates = jax.eval_shape(
            functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x
        )
        assert logits.shape == (2, 5) and logits.dtype == jnp.float32
        params = variables["params"]
        assert "downsample_conv" not in params["layer1_0"]
        assert params["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 32, 64)
        assert ("bias" in params["layer1_0"]["conv1"]) == (kind == "none")
        assert ("batch_stats" in updates) == (kind in ("bn", "bcn"))
    with pytest.raises(ValueError, match="need one entry per stage each"):
        jax.eval_shape(ImageNetResNet(stage_sizes=(1, 1), planes=(8,)).init, jax.random.key(0), x)


def test_plain_conv_has_the_same_tree():
    ws = _abstract(ResNeXt50_32x4d())
    plain = _abstract(ResNeXt50_32x4d(conv=nn.Conv))
    assert jax.tree.structure(ws) == jax.tree.structure(plain)
