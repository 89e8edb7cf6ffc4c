"""WSConv(apply_to='output' | 'auto'): the standardization moved from the kernel to the convolution's output.

References: the NumPy standardization from the equations (tests/reference.py) applied through a plain nn.Conv,
and for gradients the kernel-side layer, whose own gradient is checked against finite differences in
tests/wsjax/test_standardization.py.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx
from tests import reference
from tests.helpers import CONV_CASES, conv_kwargs, load_into_nnx, replace_kernel, standardized
from wsjax import standardization_statistics


def _params(layer, x, offset=0.0, seed=1):
    params = layer.init(jax.random.key(seed), x)["params"]
    return {**params, "kernel": params["kernel"] + offset}


@pytest.mark.parametrize("name", CONV_CASES)
@pytest.mark.parametrize("preset", ["pytorch", "qiao", "bit"])
def test_output_side_equals_conv_with_standardized_kernel(name, preset):
    case = CONV_CASES[name]
    s = wsjax.PRESETS[preset]
    x = jax.random.normal(jax.random.key(0), case["x"]) + 0.5  # a nonzero mean exercises conv(x, 1)
    layer = wsjax.WSConv(**conv_kwargs(case), apply_to="output", standardization=s)
    params = _params(layer, x)
    w_hat = standardized(params["kernel"], s)
    want = nn.Conv(**conv_kwargs(case)).apply({"params": replace_kernel(params, w_hat)}, x)
    got = jax.jit(layer.apply)({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize(
    "name", ["2d", "2d_stride_valid", "2d_circular", "2d_groups", "1d_causal", "3d", "2d_no_bias"]
)
def test_output_side_gradients_equal_kernel_side(name):
    case = CONV_CASES[name]
    x = jax.random.normal(jax.random.key(0), case["x"]) + 0.5
    kernel_side = wsjax.WSConv(**conv_kwargs(case))
    output_side = wsjax.WSConv(**conv_kwargs(case), apply_to="output")
    params = _params(kernel_side, x, offset=0.05)  # a kernel mean of the order of its spread

    def loss(layer, params, x):
        return jnp.sum(jnp.sin(layer.apply({"params": params}, x)))

    want = jax.grad(loss, argnums=(1, 2))(kernel_side, params, x)
    got = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)(output_side, params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def test_output_side_stays_accurate_with_a_kernel_mean_ten_times_its_spread():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16)) + 1.0
    layer = wsjax.WSConv(8, (3, 3), apply_to="output")
    params = layer.init(jax.random.key(1), x)["params"]
    std = float(np.std(params["kernel"]))
    params = {**params, "kernel": params["kernel"] + 10 * std}
    w_hat = reference.standardize(params["kernel"])
    want = nn.Conv(8, (3, 3)).apply(
        {"params": replace_kernel(params, w_hat)}, np.asarray(x, np.float64)
    )
    got = layer.apply({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * float(np.abs(want).max()))


def test_auto_takes_the_output_side_on_small_maps_and_the_kernel_side_on_large_ones():
    for x_shape, chosen in [((1, 4, 4, 32), "output"), ((8, 16, 16, 4), "kernel")]:
        # (1·4·4 = 16 positions < fan_in 288) and (8·16·16 = 2048 positions > fan_in 36)
        x = jax.random.normal(jax.random.key(0), x_shape) + 0.5
        layers = {m: wsjax.WSConv(8, (3, 3), apply_to=m) for m in ("auto", chosen)}
        params = _params(layers["auto"], x)
        np.testing.assert_array_equal(
            jax.jit(layers["auto"].apply)({"params": params}, x),
            jax.jit(layers[chosen].apply)({"params": params}, x),
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(dtype=jnp.bfloat16),
        dict(param_dtype=jnp.bfloat16, dtype=jnp.float32),
        dict(mask=jnp.ones((3, 3, 32, 8)).at[0].set(0.0)),
    ],
)
def test_auto_falls_back_to_the_kernel_side_and_output_refuses(kwargs):
    x = jax.random.normal(
        jax.random.key(0), (1, 4, 4, 32)
    )  # a small map: auto would take the output side
    auto = wsjax.WSConv(8, (3, 3), apply_to="auto", **kwargs)
    params = _params(auto, x)
    want = wsjax.WSConv(8, (3, 3), **kwargs).apply({"params": params}, x)
    np.testing.assert_array_equal(auto.apply({"params": params}, x), want)
    with pytest.raises(ValueError, match="apply_to='output'.*(float32|mask)"):
        wsjax.WSConv(8, (3, 3), apply_to="output", **kwargs).apply({"params": params}, x)


def test_bad_apply_to_is_refused_when_the_layer_is_built():
    with pytest.raises(ValueError, match="apply_to must be one of"):
        wsjax.WSConv(8, (3, 3), apply_to="weights")
    with pytest.raises(ValueError, match="apply_to must be one of"):
        wnnx.WSConv(4, 8, (3, 3), apply_to="weights", rngs=nnx.Rngs(0))


def test_folding_an_output_side_model_gives_the_same_outputs():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) + 0.5
    model = wsjax.WSConv(8, (3, 3), apply_to="output", name="conv")
    variables = model.init(jax.random.key(1), x)
    folded = wsjax.fold_weight_standardization(model, variables, x)
    want = model.apply(variables, x)
    np.testing.assert_allclose(
        nn.Conv(8, (3, 3)).apply(folded, x), want, rtol=0, atol=1e-5 * float(np.abs(want).max())
    )


@pytest.mark.parametrize("apply_to", ["output", "auto"])
@pytest.mark.parametrize(
    "kwargs", [dict(), dict(strides=2, feature_group_count=2, padding="CIRCULAR")]
)
def test_nnx_output_side_equals_linen(apply_to, kwargs):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4)) + 0.5
    linen = wsjax.WSConv(6, (3, 3), apply_to=apply_to, **kwargs)
    params = _params(linen, x, offset=0.05)
    module = wnnx.WSConv(4, 6, (3, 3), apply_to=apply_to, rngs=nnx.Rngs(0), **kwargs)
    load_into_nnx(module, params)
    np.testing.assert_allclose(module(x), linen.apply({"params": params}, x), rtol=1e-6, atol=1e-6)
    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(module)
    want = jax.grad(lambda p: jnp.sum(jnp.sin(linen.apply({"params": p}, x))))(params)
    np.testing.assert_allclose(grads["kernel"][...], want["kernel"], rtol=1e-5, atol=1e-5)


def test_nnx_output_side_refuses_a_mask():
    mask = jnp.ones((3, 3, 4, 6))
    module = wnnx.WSConv(4, 6, (3, 3), mask=mask, apply_to="output", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mask"):
        module(jnp.ones((1, 5, 5, 4)))


@pytest.mark.parametrize("preset", list(wsjax.PRESETS))
def test_statistics_match_numpy_and_reproduce_standardize(preset):
    s = wsjax.PRESETS[preset]
    w = jax.random.normal(jax.random.key(0), (3, 3, 8, 5)) * 0.1 + 0.02
    mean, scale = standardization_statistics(w, s)
    w_hat = standardized(w, s)
    flat = np.asarray(w, np.float64).reshape(-1, 5)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        (flat - np.asarray(mean)) * np.asarray(scale), w_hat.reshape(-1, 5), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("eps_outside_sqrt", [True, False])
def test_statistics_gradient_is_that_of_the_equations(unbiased, eps_outside_sqrt):
    """The hand-written backward pass equals autodiff of the two-pass formula written out."""
    w = jax.random.normal(jax.random.key(0), (3, 3, 4, 6)) * 0.2 + 0.1
    cot = jax.random.normal(jax.random.key(1), (2, 6))

    def from_the_equations(w):
        flat = w.reshape(-1, 6)
        mean = jnp.mean(flat, axis=0)
        var = jnp.sum(jnp.square(flat - mean[None]), axis=0) / (flat.shape[0] - int(unbiased))
        scale = 1.0 / (jnp.sqrt(var) + 1e-5) if eps_outside_sqrt else jax.lax.rsqrt(var + 1e-5)
        return jnp.stack([mean, scale])

    def ours(w):
        return jnp.stack(
            standardization_statistics(w, wsjax.Standardization(1e-5, unbiased, eps_outside_sqrt))
        )

    np.testing.assert_allclose(ours(w), from_the_equations(w), rtol=1e-5)
    got = jax.grad(lambda w: jnp.sum(ours(w) * cot))(w)
    want = jax.grad(lambda w: jnp.sum(from_the_equations(w) * cot))(w)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_statistics_errors():
    with pytest.raises(ValueError, match="unbiased=False"):
        standardization_statistics(jnp.ones((1, 4)))
    with pytest.raises(ValueError, match="rank >= 2"):
        standardization_statistics(jnp.ones((4,)))


def test_statistics_from_raw_sums_hold_at_a_mean_thirty_times_the_spread():
    """Σw² - n·mean² cancels as mean²/var grows: at 30 (900× in var) the scale is still within 5e-4."""
    w = jax.random.normal(jax.random.key(0), (3, 3, 64, 4)) * 0.01 + 0.3
    _, scale = standardization_statistics(w)
    want = 1.0 / np.sqrt(np.asarray(w, np.float64).reshape(-1, 4).var(axis=0, ddof=1) + 1e-5)
    np.testing.assert_allclose(scale, want, rtol=5e-4)


class _SharedLayer(nn.Module):
    """One WSConv called twice, as a weight-shared block is."""

    @nn.compact
    def __call__(self, x):
        conv = wsjax.WSConv(4, (3, 3), apply_to="output", name="shared")
        return conv(jax.nn.relu(conv(x)))


def test_output_side_layer_called_twice_shares_its_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4)) + 0.5
    model = _SharedLayer()
    variables = model.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, variables["params"]) == {
        "shared": {"kernel": (3, 3, 4, 4), "bias": (4,)}
    }
    kernel_side = wsjax.WSConv(4, (3, 3))
    p = {"params": variables["params"]["shared"]}
    want = kernel_side.apply(p, jax.nn.relu(kernel_side.apply(p, x)))
    np.testing.assert_allclose(model.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_output_side_initializes_exactly_as_nn_conv():
    x = jnp.ones((1, 4, 4, 16))
    got = wsjax.WSConv(8, (3, 3), apply_to="output").init(jax.random.key(3), x)
    want = nn.Conv(8, (3, 3)).init(jax.random.key(3), x)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_output_side_correction_is_named_in_the_compiled_program():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 16))
    layer = wsjax.WSConv(8, (3, 3), apply_to="output")
    variables = layer.init(jax.random.key(1), x)
    hlo = jax.jit(layer.apply).lower(variables, x).compile().as_text()
    for scope in ("ws_window_sums", "ws_output_correction", "weight_standardization_statistics"):
        assert f"/{scope}/" in hlo
