"""wsjax.cpu.conv_general_dilated: the shifted-matmul path for output maps smaller than the kernel, on CPU."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

import wsjax
import wsjax.nnx as wnnx
from tests import reference
from wsjax.cpu import takes_shifted_matmul_path

# (input shape, kernel shape, padding): every one has an output side smaller than the kernel's.
SMALL_MAPS = [
    ((2, 2, 2, 8), (3, 3, 8, 5), ((1, 1), (1, 1))),  # VGG16's last stage on 32x32 inputs, narrowed
    ((3, 1, 1, 4), (3, 3, 4, 6), ((1, 1), (1, 1))),  # a 1x1 map
    ((2, 2, 2, 3), (3, 3, 3, 2), ((0, 1), (1, 0))),  # asymmetric padding
    ((2, 3, 3, 3), (3, 3, 3, 2), ((-1, 1), (0, 0))),  # negative padding crops
    ((2, 2, 4), (3, 4, 3), ((1, 1),)),  # 1-D
    ((1, 2, 1, 2, 3), (3, 3, 3, 3, 2), ((1, 1), (1, 1), (1, 1))),  # 3-D
    ((1, 1, 1, 1), (3, 3, 1, 1), ((1, 1), (1, 1))),  # one channel, one pixel
]


def _operands(lhs_shape, rhs_shape, dtype=jnp.float32):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return (
        jax.random.normal(k1, lhs_shape).astype(dtype),
        jax.random.normal(k2, rhs_shape).astype(dtype),
    )


def _dimension_numbers(ndim):
    spatial = "DHW"[3 - (ndim - 2) :]
    return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")


@pytest.mark.parametrize("lhs_shape, rhs_shape, padding", SMALL_MAPS)
def test_small_maps_equal_the_definition_and_lax(lhs_shape, rhs_shape, padding):
    x, w = _operands(lhs_shape, rhs_shape)
    dn = _dimension_numbers(len(lhs_shape))
    strides = (1,) * (len(lhs_shape) - 2)
    assert takes_shifted_matmul_path(x.shape, w.shape, strides, padding, dimension_numbers=dn)
    got = wsjax.cpu.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    np.testing.assert_allclose(
        got, reference.conv_channels_last(x, w, padding), rtol=1e-5, atol=1e-5
    )
    expected = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if any(lo < 0 or hi < 0 for lo, hi in padding):
        return  # XLA:CPU's own convolution is wrong with negative padding (jaxlib 0.10.2): reads past the crop
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lhs_shape, rhs_shape, padding", SMALL_MAPS[:3])
def test_small_map_gradients_equal_lax(lhs_shape, rhs_shape, padding):
    x, w = _operands(lhs_shape, rhs_shape)
    dn = _dimension_numbers(len(lhs_shape))

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=dn)))

    got = jax.grad(loss(wsjax.cpu.conv_general_dilated), (0, 1))(x, w)
    expected = jax.grad(loss(lax.conv_general_dilated), (0, 1))(x, w)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_padding_strings_are_resolved():
    x, w = _operands((2, 2, 2, 3), (3, 3, 3, 4))
    for padding in ("SAME", "SAME_LOWER"):
        got = wsjax.cpu.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=_dimension_numbers(4)
        )
        expected = lax.conv_general_dilated(
            x, w, (1, 1), padding, dimension_numbers=_dimension_numbers(4)
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bfloat16_accumulates_in_float32():
    x, w = _operands((2, 2, 2, 64), (3, 3, 64, 8), jnp.bfloat16)
    dn = _dimension_numbers(4)
    got = wsjax.cpu.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    assert got.dtype == jnp.bfloat16
    exact = reference.conv_channels_last(
        x.astype(jnp.float32), w.astype(jnp.float32), ((1, 1), (1, 1))
    )
    # One bf16 rounding of an f32-accumulated sum: within half a bf16 ulp (2**-8 relative), plus f32 slack.
    np.testing.assert_allclose(np.asarray(got, np.float32), exact, rtol=2**-8, atol=1e-3)
    wide = wsjax.cpu.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, preferred_element_type=jnp.float32
    )
    assert wide.dtype == jnp.float32
    np.testing.assert_allclose(wide, exact, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "lhs_shape, rhs_shape, kwargs",
    [
        ((2, 4, 4, 3), (3, 3, 3, 2), {}),  # 4x4 output: XLA's convolution is the faster one there
        ((2, 2, 2, 4), (3, 3, 4, 2), {"window_strides": (2, 2)}),
        ((2, 2, 2, 4), (3, 3, 2, 2), {"feature_group_count": 2}),
        ((2, 2, 2, 4), (3, 3, 4, 2), {"rhs_dilation": (2, 2)}),
        ((2, 2, 2, 4), (3, 3, 4, 2), {"lhs_dilation": (2, 2)}),
    ],
)
def test_other_convolutions_are_lax_unchanged(lhs_shape, rhs_shape, kwargs):
    x, w = _operands(lhs_shape, rhs_shape)
    args = {
        "window_strides": (1, 1),
        "padding": ((1, 1), (1, 1)),
        "dimension_numbers": _dimension_numbers(4),
    }
    args.update(kwargs)
    assert not takes_shifted_matmul_path(x.shape, w.shape, **args)
    np.testing.assert_array_equal(
        wsjax.cpu.conv_general_dilated(x, w, **args), lax.conv_general_dilated(x, w, **args)
    )


def test_channels_first_and_other_backends_take_lax():
    assert not takes_shifted_matmul_path(
        (2, 4, 2, 2),
        (2, 4, 3, 3),
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
    )
    shape_args = ((2, 2, 2, 4), (3, 3, 4, 2), (1, 1), ((1, 1), (1, 1)))
    assert takes_shifted_matmul_path(*shape_args, dimension_numbers=_dimension_numbers(4))
    for backend in ("gpu", "tpu"):
        assert not takes_shifted_matmul_path(
            *shape_args, dimension_numbers=_dimension_numbers(4), backend=backend
        )


@pytest.mark.parametrize("module", [nn.Conv, wsjax.WSConv])
def test_flax_convolutions_accept_it(module):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 2, 16))
    plain = module(
        8, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=lax.conv_general_dilated
    )
    fast = module(
        8, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=wsjax.cpu.conv_general_dilated
    )
    variables = plain.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(
        fast.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: wsjax.WSConv(8, (3, 3)),
        lambda: wsjax.ScaledWSConv(8, (3, 3)),
        lambda: wnnx.WSConv(4, 8, (3, 3), rngs=nnx.Rngs(0)),
        lambda: wnnx.ScaledWSConv(4, 8, (3, 3), rngs=nnx.Rngs(0)),
    ],
)
def test_it_is_what_a_library_user_gets(make):
    assert make().conv_general_dilated is wsjax.cpu.conv_general_dilated


def test_the_path_is_chosen_per_lowering_platform():
    """Lowered for CUDA or TPU from this CPU host (jax.export), the program is lax's convolution alone; for the
    CPU, the shifted matmuls alone; for several platforms at once, each gets its own."""
    x, w = _operands((2, 2, 2, 8), (3, 3, 8, 5))  # a small map: shifted matmuls on CPU
    args = ((1, 1), ((1, 1), (1, 1)))
    dn = _dimension_numbers(4)
    ours = jax.jit(lambda x, w: wsjax.cpu.conv_general_dilated(x, w, *args, dimension_numbers=dn))

    def ops(platforms):
        text = jax.export.export(ours, platforms=platforms)(x, w).mlir_module()
        return (
            len(re.findall(r"= stablehlo\.convolution\b", text)),
            len(re.findall(r"= stablehlo\.dot_general\b", text)),
        )

    assert ops(["cpu"])[0] == 0 and ops(["cpu"])[1] > 0
    for platform in ("cuda", "rocm", "tpu"):
        assert ops([platform]) == (1, 0), platform
    both = ops(["cpu", "cuda"])
    assert both[0] >= 1 and both[1] > 0
    assert not wsjax.cpu.takes_shifted_matmul_path(
        x.shape, w.shape, *args, None, None, dn, backend="gpu"
    )
    assert wsjax.cpu.takes_shifted_matmul_path(
        x.shape, w.shape, *args, None, None, dn, backend="cpu"
    )


def test_layer_default_values_and_gradients_match_lax():
    """VGG16's last stage in small: the default (shifted matmuls here) against lax, forward and backward."""
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 2, 16))
    default = wsjax.WSConv(8, (3, 3), padding=((1, 1), (1, 1)))
    plain_lax = default.clone(conv_general_dilated=lax.conv_general_dilated)
    variables = default.init(jax.random.PRNGKey(0), x)

    def loss(layer):
        return lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x)))

    np.testing.assert_allclose(
        default.apply(variables, x), plain_lax.apply(variables, x), rtol=1e-5, atol=1e-5
    )
    got = jax.grad(loss(default), (0, 1))(variables, x)
    want = jax.grad(loss(plain_lax), (0, 1))(variables, x)
    # The kernel's gradient through WS removes its mean and scale components: float32 rounding of the
    # convolution (another summation order) shows relative to the largest entry, not to each.
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * float(np.abs(e).max()))


def test_nnx_passes_out_sharding_through():
    x, w = _operands((2, 2, 2, 8), (3, 3, 8, 5))
    dn = _dimension_numbers(4)
    np.testing.assert_array_equal(
        wsjax.cpu.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=dn, out_sharding=None
        ),
        wsjax.cpu.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn),
    )


def test_the_convolution_has_one_name():
    """wsjax.cpu.conv_general_dilated; the top-level alias of 0.1 is gone (see CHANGELOG.md)."""
    assert "conv_general_dilated" not in wsjax.__all__
    with pytest.raises(AttributeError, match="no attribute 'conv_general_dilated'"):
        wsjax.conv_general_dilated  # noqa: B018
