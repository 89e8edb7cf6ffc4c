"""BiT's ResNetV2 against a NumPy forward written from BiT's equations, and its pinned parameter counts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests import reference
from wsjax.models import BIT_DEPTHS, GroupNorm, ResNetV2, resnetv2

TINY_GN = functools.partial(GroupNorm, num_groups=4, epsilon=1e-5, use_fast_variance=False)


def _tiny(**kwargs):
    """A ResNetV2 at test size: width 8, one unit per block, GN(4)."""
    fields = dict(stage_sizes=(1, 1, 1, 1), width=8, num_classes=5, norm=TINY_GN)
    return ResNetV2(**{**fields, **kwargs})


def random_params(model, x, kernel_std=None, seed=0):
    """Every parameter random (GN scale around 1, a non-zero head): init alone would hide mistakes."""
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    leaves, tree = jax.tree.flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if "'scale'" in name:
            value = 1 + 0.2 * rng.standard_normal(leaf.shape)
        elif "'bias'" in name:
            value = 0.2 * rng.standard_normal(leaf.shape)
        else:
            std = np.prod(leaf.shape[:-1]) ** -0.5
            if kernel_std == "spread":  # per output channel, variances from 1e-11 to 1e-7
                std = 10 ** rng.uniform(-5.5, -3.5, leaf.shape[-1])
            value = std * rng.standard_normal(leaf.shape) + 0.3 * std  # a mean for WS to remove
        out.append(np.asarray(value, np.float32))
    return jax.tree.unflatten(tree, out)


# ---- the reference: BiT's equations in float64 NumPy ----------------------------------------------


def _ws(w, eps, ddof):
    return reference.standardize(w, eps=eps, ddof=ddof)


def _conv(x, w, stride, pad, eps, ddof):
    """Standardized cross-correlation: ``y[n, p, o] = Σ_{q, c} x_pad[n, stride·p + q, c] ŵ[q, c, o]``."""
    w = _ws(w, eps, ddof)
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(kh):  # one kernel tap at a time
        for j in range(kw):
            y += x[:, i : i + stride * ho : stride, j : j + stride * wo : stride] @ w[i, j]
    return y


def test_the_strided_reference_conv_is_the_definition():
    """The reference's tap-by-tap conv against tests/reference.py's position-by-position one."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 9, 8, 3)), rng.standard_normal((3, 3, 3, 4))
    full = reference.conv_channels_last(x, _ws(w, 1e-10, 0), [(1, 1), (1, 1)])
    np.testing.assert_allclose(_conv(x, w, 2, 1, 1e-10, 0), full[:, ::2, ::2], rtol=1e-12)


def _gn(x, p, groups, eps=1e-5):
    if groups is None:  # a network without norms
        return x
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * np.asarray(p["scale"], np.float64) + np.asarray(p["bias"], np.float64)


def _max_pool_3x3_s2(x, pad_value):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2])
    return out


def resnetv2_reference(params, x, groups, eps=1e-10, ddof=0, pool_pad=0.0):
    """BiT's ResNetV2 forward (big_transfer ``bit_jax/models.py``'s equations), float64."""
    relu = functools.partial(np.maximum, 0.0)
    conv = functools.partial(_conv, eps=eps, ddof=ddof)
    x = conv(np.asarray(x, np.float64), params["root_conv"]["kernel"], 2, 3)
    x = _max_pool_3x3_s2(x, pool_pad)
    units = sorted(k for k in params if k.startswith("block"))
    for name in units:
        p = params[name]
        stride = 2 if name.endswith("unit01") and not name.startswith("block1_") else 1
        a = relu(_gn(x, p.get("gn1"), groups))
        shortcut = conv(a, p["conv_proj"]["kernel"], stride, 0) if "conv_proj" in p else x
        y = conv(a, p["conv1"]["kernel"], 1, 0)
        y = conv(relu(_gn(y, p.get("gn2"), groups)), p["conv2"]["kernel"], stride, 1)
        y = conv(relu(_gn(y, p.get("gn3"), groups)), p["conv3"]["kernel"], 1, 0)
        x = y + shortcut
    x = relu(_gn(x, params.get("norm_pre_head"), groups)).mean(axis=(1, 2))
    head = params["head"]
    return x @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


# ---- tests -------------------------------------------------------------------------------------


def _check(got, want):
    """Equal at float32's accuracy: 1e-4 of the logits' scale (the bar the pretrained loaders are held to)."""
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def logits_of(model, params, x):
    """The model's logits, compiled (eager dispatch of every op is far slower on a loaded CPU)."""
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))({"params": params}, x))


def test_tiny_resnetv2_matches_the_numpy_reference():
    """An odd, non-square size: the root conv's and pool's padding, the strided 3×3s' ceil(H / 2)."""
    x = jax.random.normal(jax.random.key(1), (2, 13, 11, 3))  # mostly border
    results = {}
    for pool, pad in (("zeros", 0.0), ("-inf", -np.inf)):
        model = _tiny(pool_padding=pool)
        params = random_params(model, x)
        results[pool] = logits_of(model, params, x)
        _check(results[pool], resnetv2_reference(params, x, 4, pool_pad=pad))
    # The root's output is not rectified: zero and -inf padding differ, by more than 10x the tolerance.
    diff = np.abs(results["zeros"] - results["-inf"]).max()
    assert diff > 1e-3 * np.abs(results["zeros"]).max()


def test_the_standardization_convention_is_bits():
    """Kernel variances 1e-11..1e-7: BiT's eps 1e-10, not timm's 1e-8; timm's conv gives timm's."""
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    params = random_params(_tiny(), x, kernel_std="spread")
    got = logits_of(_tiny(), params, x)
    _check(got, resnetv2_reference(params, x, 4))
    scale = np.abs(got).max()
    assert (
        np.abs(resnetv2_reference(params, x, 4, eps=1e-8) - got).max() > 1e-3 * scale
    )  # > 10x the tolerance
    timm_conv = functools.partial(wsjax.WSConv, standardization=wsjax.Standardization(1e-8, False))
    _check(logits_of(_tiny(conv=timm_conv), params, x), resnetv2_reference(params, x, 4, eps=1e-8))


def test_the_variance_is_biased():
    """GN removes a conv's uniform scale, so the n vs n - 1 of the variance shows without norms."""
    x = jax.random.normal(jax.random.key(3), (2, 19, 19, 3))
    model = _tiny(norm=None)
    params = random_params(model, x)
    got = logits_of(model, params, x)
    _check(got, resnetv2_reference(params, x, None))
    assert (
        np.abs(resnetv2_reference(params, x, None, ddof=1) - got).max() > 1e-3 * np.abs(got).max()
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
