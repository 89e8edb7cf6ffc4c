"""The NNX mirrors give the Linen modules' outputs from the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx
from tests.helpers import load_into_nnx


def _random_like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.uniform(k, v.shape, v.dtype, 0.5, 1.5)
            for k, v in zip(keys, leaves, strict=True)
        ],
    )


MASK = jnp.ones((3, 3, 4, 6)).at[2].set(0.0)

LAYER_CASES = [
    (
        lambda: wsjax.WSConv(6, (3, 3), strides=2, feature_group_count=2),
        lambda: wnnx.WSConv(4, 6, (3, 3), strides=2, feature_group_count=2, rngs=nnx.Rngs(0)),
    ),
    (
        lambda: wsjax.WSConv(6, (3, 3), padding="CIRCULAR", standardization="qiao"),
        lambda: wnnx.WSConv(
            4, 6, (3, 3), padding="CIRCULAR", standardization="qiao", rngs=nnx.Rngs(0)
        ),
    ),
    (
        lambda: wsjax.WSConv(6, (3, 3), dtype=jnp.bfloat16),
        lambda: wnnx.WSConv(4, 6, (3, 3), dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
    ),
    (
        lambda: wsjax.WSConvTranspose(6, (3, 3), strides=2),
        lambda: wnnx.WSConvTranspose(4, 6, (3, 3), strides=2, rngs=nnx.Rngs(0)),
    ),
    (
        lambda: wsjax.WSDense(5, standardization="bit"),
        lambda: wnnx.WSDense(4, 5, standardization=wsjax.PRESETS["bit"], rngs=nnx.Rngs(0)),
    ),
    (
        lambda: wsjax.WSConv(6, (3, 3), standardization="big_vision", mask=MASK),
        lambda: wnnx.WSConv(
            4, 6, (3, 3), standardization="big_vision", mask=MASK, rngs=nnx.Rngs(0)
        ),
    ),
    (
        lambda: wsjax.ScaledWSConv(6, (3, 3), gain_init=nn.initializers.constant(0.5)),
        lambda: wnnx.ScaledWSConv(
            4, 6, (3, 3), gain_init=nnx.initializers.constant(0.5), rngs=nnx.Rngs(0)
        ),
    ),
    (
        lambda: wsjax.ScaledWSConv(6, (3, 3)),
        lambda: wnnx.ScaledWSConv(4, 6, (3, 3), rngs=nnx.Rngs(0)),
    ),
    (
        lambda: wsjax.ScaledWSConv(6, (3, 3), form="timm"),
        lambda: wnnx.ScaledWSConv(4, 6, (3, 3), form="timm", rngs=nnx.Rngs(0)),
    ),
]


@pytest.mark.parametrize("make_linen, make_nnx", LAYER_CASES)
def test_ws_layers_linen_equals_nnx(make_linen, make_nnx):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    linen = make_linen()
    params = _random_like(linen.init(jax.random.key(1), x)["params"], seed=2)
    module = make_nnx()
    load_into_nnx(module, params)
    # Same operations in the same order: bit-identical, eagerly and under jit.
    np.testing.assert_array_equal(module(x), linen.apply({"params": params}, x))
    np.testing.assert_array_equal(
        nnx.jit(lambda m, x: m(x))(module, x), jax.jit(linen.apply)({"params": params}, x)
    )


def test_nnx_mask_applied_after_standardization():
    mask = np.ones((3, 3, 4, 6), np.float32)
    mask[:, 0] = 0.0
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    linen = wsjax.WSConv(6, (3, 3), mask=jnp.asarray(mask))
    params = linen.init(jax.random.key(1), x)["params"]
    module = wnnx.WSConv(4, 6, (3, 3), mask=jnp.asarray(mask), rngs=nnx.Rngs(0))
    load_into_nnx(module, params)
    np.testing.assert_array_equal(module(x), linen.apply({"params": params}, x))


def test_nnx_gradients_reach_kernel_and_gain():
    module = wnnx.ScaledWSConv(4, 6, (3, 3), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(module)
    assert np.abs(np.asarray(grads["kernel"][...])).max() > 0
    assert np.abs(np.asarray(grads["gain"][...])).max() > 0


@pytest.mark.parametrize(
    "estimate, variance_around",
    [(True, "batch_mean"), (True, "running_mean"), (False, "batch_mean")],
)
def test_bcn_linen_equals_nnx_over_training_and_eval(estimate, variance_around):
    batches = [jax.random.normal(jax.random.key(i), (4, 5, 5, 8)) * 2 + 1 for i in range(3)]
    linen = wsjax.BatchChannelNorm(num_groups=4, estimate=estimate, variance_around=variance_around)
    variables = linen.init(jax.random.key(0), batches[0], use_running_average=False)
    params, stats = _random_like(variables["params"], 3), variables["batch_stats"]
    module = wnnx.BatchChannelNorm(8, 4, estimate=estimate, variance_around=variance_around)
    load_into_nnx(module, params)
    for x in batches[:2]:
        want, updates = linen.apply(
            {"params": params, "batch_stats": stats},
            x,
            use_running_average=False,
            mutable=["batch_stats"],
        )
        stats = updates["batch_stats"]
        np.testing.assert_allclose(module(x), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(module.batch_norm.mean[...], stats["batch_norm"]["mean"], rtol=1e-6)
    np.testing.assert_allclose(module.batch_norm.var[...], stats["batch_norm"]["var"], rtol=1e-6)
    module.eval()
    want = linen.apply(
        {"params": params, "batch_stats": stats}, batches[2], use_running_average=True
    )
    np.testing.assert_allclose(module(batches[2]), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimate", [True, False])
def test_bf16_bcn_linen_equals_nnx_under_strict_promotion(estimate):
    """The tests run under 'strict' dtype promotion (conftest.py), which Flax's batch norms refuse in
    bfloat16; both APIs' BCN run there, alike."""
    x = (jax.random.normal(jax.random.key(0), (4, 5, 5, 8)) * 2 + 1).astype(jnp.bfloat16)
    linen = wsjax.BatchChannelNorm(num_groups=4, estimate=estimate, dtype=jnp.bfloat16)
    variables = linen.init(jax.random.key(0), x, use_running_average=False)
    want, _ = linen.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    module = wnnx.BatchChannelNorm(8, 4, estimate=estimate, dtype=jnp.bfloat16)
    got = module(x)
    assert got.dtype == want.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))


def test_nnx_channel_norm_errors():
    with pytest.raises(ValueError, match="not divisible"):
        wnnx.ChannelNorm(6, 4)
    assert isinstance(wnnx.EstimatedBatchNorm(3), nnx.Module)
    assert issubclass(wsjax.WSConv, nn.Conv)


def test_nnx_holds_one_standardization():
    make = lambda **kw: wnnx.WSConv(4, 6, (3, 3), rngs=nnx.Rngs(0), **kw)  # noqa: E731
    bit = wsjax.PRESETS["bit"]
    for module in [
        make(standardization=bit),
        make(standardization="bit"),
        make(standardization=wsjax.Standardization(1e-10, unbiased=False)),
    ]:
        assert module.standardization == bit
        assert not hasattr(module, "eps")
    assert make().standardization == wsjax.Standardization()
    with pytest.raises(ValueError, match="unknown standardization"):
        make(standardization="bti")
    with pytest.raises(TypeError, match=r"write wsjax.Standardization\(eps=1e-05\)"):
        make(standardization=1e-5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'eps'"):
        make(eps=1e-5)


def test_nnx_call_leaves_the_stored_kernel_raw():
    module = wnnx.WSConv(4, 6, (3, 3), rngs=nnx.Rngs(0))
    raw = np.asarray(module.kernel[...]).copy()
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    module(x)
    nnx.jit(lambda m, x: m(x))(module, x)
    np.testing.assert_array_equal(module.kernel[...], raw)
    assert set(nnx.state(module, nnx.Param).keys()) == {"kernel", "bias"}


def test_nnx_scaled_ws_conv_unknown_form():
    with pytest.raises(ValueError, match="ScaledWSConv: form must be one of"):
        wnnx.ScaledWSConv(4, 6, (3, 3), form="haiku", rngs=nnx.Rngs(0))


def test_nnx_scaled_ws_conv_gain_init():
    module = wnnx.ScaledWSConv(
        4, 6, (3, 3), gain_init=nnx.initializers.constant(2.0), rngs=nnx.Rngs(0)
    )
    np.testing.assert_array_equal(module.gain[...], np.full(6, 2.0, np.float32))
    np.testing.assert_array_equal(
        wnnx.ScaledWSConv(4, 6, (3, 3), rngs=nnx.Rngs(0)).gain[...], np.ones(6, np.float32)
    )
    # The gain scales each output channel's kernel, hence (without bias) its output.
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    unit = wnnx.ScaledWSConv(4, 6, (3, 3), use_bias=False, rngs=nnx.Rngs(0))
    doubled = wnnx.ScaledWSConv(
        4, 6, (3, 3), use_bias=False, gain_init=nnx.initializers.constant(2.0), rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(doubled(x), 2.0 * unit(x), rtol=1e-6, atol=1e-6)
