"""WS layers equal their Flax parent applied with the kernel standardized by the NumPy reference."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from tests import reference
from tests.helpers import CONV_CASES, conv_kwargs, replace_kernel, standardized


@pytest.mark.parametrize("name", CONV_CASES)
@pytest.mark.parametrize("preset", ["pytorch", "qiao", "bit"])
def test_ws_conv_equals_conv_with_standardized_kernel(name, preset):
    case = CONV_CASES[name]
    s = wsjax.PRESETS[preset]
    x = jax.random.normal(jax.random.key(0), case["x"])
    ws = wsjax.WSConv(**conv_kwargs(case), standardization=s)
    params = ws.init(jax.random.key(1), x)["params"]
    w_hat = standardized(params["kernel"], s)
    plain = nn.Conv(**conv_kwargs(case))
    want = plain.apply({"params": replace_kernel(params, w_hat)}, x)
    got = jax.jit(ws.apply)({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_parameter_names_and_shapes_are_those_of_conv():
    x = jnp.ones((1, 8, 8, 4))
    for kwargs in [
        dict(features=6, kernel_size=(3, 3)),
        dict(features=8, kernel_size=(3, 3), feature_group_count=4),
    ]:
        ws = jax.tree.map(jnp.shape, wsjax.WSConv(**kwargs).init(jax.random.key(0), x))
        plain = jax.tree.map(jnp.shape, nn.Conv(**kwargs).init(jax.random.key(0), x))
        assert ws == plain
    ws = wsjax.WSConv(6, (3, 3)).init(jax.random.key(0), x)
    plain = nn.Conv(6, (3, 3)).init(jax.random.key(0), x)
    # The stored kernel is the raw one, initialised exactly as nn.Conv's.
    np.testing.assert_array_equal(ws["params"]["kernel"], plain["params"]["kernel"])


def test_bf16_compute_float32_params():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    ws = wsjax.WSConv(6, (3, 3), dtype=jnp.bfloat16)
    params = ws.init(jax.random.key(1), x)["params"]
    assert params["kernel"].dtype == jnp.float32
    got = ws.apply({"params": params}, x)
    assert got.dtype == jnp.bfloat16
    w_hat = reference.standardize(params["kernel"])
    want = nn.Conv(6, (3, 3)).apply({"params": replace_kernel(params, w_hat)}, x)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=3e-2, atol=5e-2)


def test_bf16_params():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)).astype(jnp.bfloat16)
    ws = wsjax.WSConv(6, (3, 3), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = ws.init(jax.random.key(1), x)["params"]
    assert params["kernel"].dtype == jnp.bfloat16
    got = ws.apply({"params": params}, x)
    assert got.dtype == jnp.bfloat16
    w_hat = reference.standardize(np.asarray(params["kernel"], np.float64))
    want = nn.Conv(6, (3, 3)).apply(
        {
            "params": {
                "kernel": jnp.asarray(w_hat, jnp.float32),
                "bias": params["bias"].astype(jnp.float32),
            }
        },
        x.astype(jnp.float32),
    )
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=5e-2, atol=1e-1)


def test_mask_applied_after_standardization():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    mask = np.ones((3, 3, 4, 6), np.float32)
    mask[2] = 0.0  # causal in height
    ws = wsjax.WSConv(6, (3, 3), mask=jnp.asarray(mask))
    params = ws.init(jax.random.key(1), x)["params"]
    w_hat = reference.standardize(params["kernel"]) * mask
    want = nn.Conv(6, (3, 3)).apply({"params": replace_kernel(params, w_hat)}, x)
    np.testing.assert_allclose(ws.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(features=6, kernel_size=(3, 3)),
        dict(features=6, kernel_size=(3, 3), strides=2, padding="VALID"),
        dict(features=6, kernel_size=(2, 2), strides=2, kernel_dilation=2, use_bias=False),
        dict(features=6, kernel_size=(3, 3), padding="CIRCULAR"),
        dict(features=6, kernel_size=(3, 3), transpose_kernel=True),
        dict(features=5, kernel_size=(3,)),
    ],
)
def test_ws_conv_transpose(kwargs):
    x = jax.random.normal(
        jax.random.key(0), (2, 6, 6, 4) if len(kwargs["kernel_size"]) == 2 else (2, 7, 4)
    )
    ws = wsjax.WSConvTranspose(**kwargs)
    params = ws.init(jax.random.key(1), x)["params"]
    want = nn.ConvTranspose(**kwargs).apply(
        {"params": replace_kernel(params, reference.standardize(params["kernel"]))}, x
    )
    np.testing.assert_allclose(ws.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_ws_dense(use_bias):
    x = jax.random.normal(jax.random.key(0), (3, 7, 20))
    ws = wsjax.WSDense(10, use_bias=use_bias, standardization="timm")
    params = ws.init(jax.random.key(1), x)["params"]
    w_hat = reference.standardize(params["kernel"], 1e-6, 0)
    want = nn.Dense(10, use_bias=use_bias).apply({"params": replace_kernel(params, w_hat)}, x)
    np.testing.assert_allclose(ws.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "form, ref",
    [("nfnet", reference.scaled_standardize), ("timm", reference.scaled_standardize_timm)],
)
@pytest.mark.parametrize("name", ["2d", "2d_depthwise", "3d", "2d_stride_valid"])
def test_scaled_ws_conv(name, form, ref):
    case = CONV_CASES[name]
    x = jax.random.normal(jax.random.key(0), case["x"])
    ws = wsjax.ScaledWSConv(**conv_kwargs(case), form=form)
    variables = ws.init(jax.random.key(1), x)
    params = dict(variables["params"])
    np.testing.assert_array_equal(params["gain"], 1.0)
    params["gain"] = jax.random.uniform(
        jax.random.key(2), params["gain"].shape, minval=0.5, maxval=2
    )
    w_hat = ref(params["kernel"], params["gain"], {"nfnet": 1e-4, "timm": 1e-6}[form])
    plain_params = {k: v for k, v in replace_kernel(params, w_hat).items() if k != "gain"}
    want = nn.Conv(**conv_kwargs(case)).apply({"params": plain_params}, x)
    np.testing.assert_allclose(ws.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "layer",
    [wsjax.WSConv(6, (3, 3)), wsjax.ScaledWSConv(6, (3, 3)), wsjax.WSConvTranspose(6, (3, 3))],
)
def test_gradients_reach_the_raw_kernel(layer):
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    params = layer.init(jax.random.key(1), x)["params"]
    target = jax.random.normal(jax.random.key(2), layer.apply({"params": params}, x).shape)
    grads = jax.grad(lambda p: jnp.mean((layer.apply({"params": p}, x) - target) ** 2))(params)
    g = np.asarray(grads["kernel"])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


def test_gradient_is_orthogonal_to_kernel_mean_and_scale():
    # With eps = 0, WS makes the output invariant to each output channel's kernel mean and scale, so the
    # gradient has no component along either direction (the paper's Sec. 4 argument).
    layer = wsjax.WSConv(6, (3, 3), standardization=wsjax.Standardization(eps=0.0))
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    params = layer.init(jax.random.key(1), x)["params"]
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(layer.apply({"params": p}, x))))(params)
    flat_g = np.asarray(grads["kernel"], np.float64).reshape(-1, 6)
    flat_w = np.asarray(params["kernel"], np.float64).reshape(-1, 6)
    scale = np.linalg.norm(flat_g, axis=0) * np.linalg.norm(flat_w, axis=0)
    np.testing.assert_allclose(flat_g.sum(axis=0) / np.linalg.norm(flat_g, axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose((flat_g * flat_w).sum(axis=0) / scale, 0.0, atol=1e-5)


def test_second_jitted_call_does_not_recompile():
    layer = wsjax.WSConv(6, (3, 3))
    x = jnp.ones((2, 8, 8, 4))
    params = layer.init(jax.random.key(0), x)
    apply = jax.jit(layer.apply)
    apply(params, x)
    apply(jax.tree.map(lambda p: p + 1.0, params), x * 2.0)
    assert apply._cache_size() == 1


def test_errors_surface_from_the_layers():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        wsjax.WSConv(6, (3, 3), standardization=wsjax.Standardization(eps=-1.0))
    with pytest.raises(ValueError, match="unbiased=False"):
        wsjax.WSConv(6, (1, 1)).init(jax.random.key(0), jnp.ones((1, 5, 5, 1)))
    with pytest.raises(ValueError, match="ScaledWSConv: form must be one of"):
        wsjax.ScaledWSConv(6, (3, 3), form="haiku")  # when the layer is built


def test_big_vision_convention_in_a_layer():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4))
    layer = wsjax.WSConv(5, (3, 3), standardization="big_vision")
    params = layer.init(jax.random.key(1), x)["params"]
    w_hat = standardized(params["kernel"], wsjax.PRESETS["big_vision"])
    want = nn.Conv(5, (3, 3)).apply({"params": replace_kernel(params, w_hat)}, x)
    np.testing.assert_allclose(layer.apply({"params": params}, x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layer_type", [wsjax.WSConv, wsjax.WSConvTranspose, wsjax.WSDense])
def test_one_field_holds_the_convention(layer_type):
    args = (6,) if layer_type is wsjax.WSDense else (6, (3, 3))
    bit = wsjax.PRESETS["bit"]
    for layer in [
        layer_type(*args, standardization=bit),
        layer_type(*args, standardization="bit"),
        layer_type(*args, standardization=wsjax.Standardization(1e-10, unbiased=False)),
    ]:
        assert layer.standardization == bit
        assert layer.clone().standardization == bit
        assert hash(layer) == hash(layer_type(*args, standardization=bit))
    assert layer_type(*args).standardization == wsjax.Standardization()
    for removed in ("eps", "unbiased", "eps_outside_sqrt"):
        assert removed not in {f.name for f in dataclasses.fields(layer_type)}
    with pytest.raises(ValueError, match="unknown standardization 'bti'"):
        layer_type(*args, standardization="bti")
