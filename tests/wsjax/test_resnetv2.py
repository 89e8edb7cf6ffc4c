"""BiT's ResNetV2 against a NumPy forward written from BiT's equations, and its pinned parameter counts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests import reference
from tests.helpers import logits_of, random_params
from wsjax.models import BIT_DEPTHS, GroupNorm, ResNetV2, resnetv2

TINY_GN = functools.partial(GroupNorm, num_groups=4, epsilon=1e-5, use_fast_variance=False)


def _tiny(**kwargs):
    """A ResNetV2 at test size: width 8, one unit per block, GN(4)."""
    fields = dict(stage_sizes=(1, 1, 1, 1), width=8, num_classes=5, norm=TINY_GN)
    return ResNetV2(**{**fields, **kwargs})


def test_the_strided_reference_conv_is_the_definition():
    """The reference's tap-by-tap conv against tests/reference.py's position-by-position one."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 9, 8, 3)), rng.standard_normal((3, 3, 3, 4))
    full = reference.conv_channels_last(x, reference.bit_standardize(w, 1e-10, 0), [(1, 1), (1, 1)])
    np.testing.assert_allclose(
        reference.bit_conv(x, w, 2, 1, 1e-10, 0), full[:, ::2, ::2], rtol=1e-12
    )


def _check(got, want):
    """Equal at float32's accuracy: 1e-4 of the logits' scale (the bar the pretrained loaders are held to)."""
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_tiny_resnetv2_matches_the_numpy_reference():
    """An odd, non-square size: the root conv's and pool's padding, the strided 3×3s' ceil(H / 2)."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 3))  # mostly border
    results = {}
    for pool, pad in (("zeros", 0.0), ("-inf", -np.inf)):
        model = _tiny(pool_padding=pool)
        params = random_params(model, x)
        results[pool] = logits_of(model, params, x)
        _check(results[pool], reference.resnetv2(params, x, 4, pool_pad=pad))
    # The root's output is not rectified: zero and -inf padding differ, by more than 10x the tolerance.
    diff = np.abs(results["zeros"] - results["-inf"]).max()
    assert diff > 1e-3 * np.abs(results["zeros"]).max()


def test_the_standardization_convention_is_bits():
    """Kernel variances 1e-11..1e-7: BiT's eps 1e-10, not timm's 1e-8; timm's conv gives timm's."""
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    params = random_params(_tiny(), x, kernel_std="spread")
    got = logits_of(_tiny(), params, x)
    _check(got, reference.resnetv2(params, x, 4))
    scale = np.abs(got).max()
    assert (
        np.abs(reference.resnetv2(params, x, 4, eps=1e-8) - got).max() > 1e-3 * scale
    )  # > 10x the tolerance
    timm_conv = functools.partial(wsjax.WSConv, standardization=wsjax.Standardization(1e-8, False))
    _check(logits_of(_tiny(conv=timm_conv), params, x), reference.resnetv2(params, x, 4, eps=1e-8))


def test_the_variance_is_biased():
    """GN removes a conv's uniform scale, so the n vs n - 1 of the variance shows without norms."""
    x = jax.random.normal(jax.random.key(3), (2, 19, 19, 3))
    model = _tiny(norm=None)
    params = random_params(model, x)
    got = logits_of(model, params, x)
    _check(got, reference.resnetv2(params, x, None))
    assert (
        np.abs(reference.resnetv2(params, x, None, ddof=1) - got).max() > 1e-3 * np.abs(got).max()
    )


def test_shapes_names_and_features_only():
    x = jnp.zeros((1, 37, 37, 3))
    shapes = lambda model: jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert "head" not in shapes(_tiny(num_classes=0))["params"]
    features = jax.eval_shape(
        functools.partial(_tiny(num_classes=0).apply, train=False), shapes(_tiny(num_classes=0)), x
    )
    assert features.shape == (1, 4 * 8 * 8) and features.dtype == jnp.float32
    names = set(shapes(_tiny())["params"])
    assert names == {"root_conv", "norm_pre_head", "head"} | {
        f"block{b}_unit01" for b in range(1, 5)
    }
    blocks = shapes(_tiny(stage_sizes=(2, 1)))["params"]
    assert "conv_proj" not in blocks["block1_unit02"] and "conv_proj" in blocks["block2_unit01"]
    bf16 = _tiny(dtype=jnp.bfloat16)
    with jax.numpy_dtype_promotion("standard"):  # Flax's GroupNorm promotes bfloat16 implicitly
        out = jax.eval_shape(functools.partial(bf16.apply, train=False), shapes(bf16), x)
    assert out.dtype == jnp.float32


def test_batch_norm_can_be_injected():
    """``norm`` is injected as in wsjax.models: BN trains with batch statistics and keeps running ones."""
    from wsjax.models import norm_layer

    x = jnp.zeros((2, 33, 33, 3))
    model = _tiny(norm=norm_layer("bn"))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    logits, updates = jax.eval_shape(
        functools.partial(model.apply, train=True, mutable=["batch_stats"]), variables, x
    )
    assert logits.shape == (2, 5) and set(updates["batch_stats"]) == set(variables["batch_stats"])


def bit_parameter_count(stage_sizes, width_factor, classes, in_channels=3):
    """Written out from BiT's architecture: biasless convs, GN scale + shift, a 1×1 conv head with bias."""
    root = 64 * width_factor
    total, cin = 7 * 7 * in_channels * root, root
    for block, units in enumerate(stage_sizes):
        mid = root * 2**block
        for unit in range(units):
            total += 2 * cin + cin * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * 4 * mid
            total += cin * 4 * mid if unit == 0 else 0  # the projection
            cin = 4 * mid
    return total + 2 * cin + cin * classes + classes


def _count(model):
    x = jnp.zeros((1, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize(
    "depth, factor, classes, count",
    [
        # timm 1.0.31's own counts (its resnetv2_*_bit models, built on torch's meta device)
        (50, 1, 1000, 25_549_352),  # resnetv2_50x1_bit, "25.55M"
        (50, 1, 21843, 68_256_659),  # BiT-M R50x1
        (101, 3, 21843, 516_015_123),  # BiT-M R101x3
        (152, 4, 1000, 936_533_224),  # resnetv2_152x4_bit
    ],
)
def test_parameter_counts(depth, factor, classes, count):
    formula = bit_parameter_count(BIT_DEPTHS[depth], factor, classes)
    assert _count(resnetv2(depth, factor, num_classes=classes)) == formula == count


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match=r"depth must be one of \[50, 101, 152\], got 34"):
        resnetv2(34)
    with pytest.raises(ValueError, match="width_factor must be an integer >= 1, got 0"):
        resnetv2(50, 0)
    with pytest.raises(
        ValueError, match=r"pool_padding must be one of \('zeros', '-inf'\), got 'same'"
    ):
        _tiny(pool_padding="same").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_default_conv_and_norm_are_bits():
    model = ResNetV2()
    assert model.conv.keywords["standardization"] == wsjax.PRESETS["bit"]
    assert model.norm.keywords == {"num_groups": 32, "epsilon": 1e-5, "use_fast_variance": False}
    assert isinstance(model.head_init(jax.random.key(0), (2, 2)), jax.Array)
    assert not np.any(np.asarray(model.head_init(jax.random.key(0), (2, 2))))
    assert issubclass(model.conv.func, nn.Conv)
