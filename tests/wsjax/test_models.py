"""Model shapes, pinned parameter counts and injected layers."""

import functools
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from wsjax.models import VGG16, VGG16_STAGES, ResNet18, VGG16Narrow, norm_layer


def _count(model, x):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def _vgg16_count(in_channels, norm_params_per_channel, norm_params_per_layer=0):
    """Written out from the architecture: 3x3 conv + bias, norm, one Dense 512 -> 10."""
    total, cin = 0, in_channels
    for stage in VGG16_STAGES:
        for cout in stage:
            total += 9 * cin * cout + cout + norm_params_per_channel * cout + norm_params_per_layer
            cin = cout
    return total + 512 * 10 + 10


RGB = jnp.zeros((1, 32, 32, 3))


def test_vgg16_parameter_counts():
    assert _count(VGG16(norm=None), RGB) == _vgg16_count(3, 0) == 14_719_818
    assert _count(VGG16(norm=norm_layer("bn")), RGB) == _vgg16_count(3, 2) == 14_728_266
    assert _count(VGG16(norm=norm_layer("gn")), RGB) == 14_728_266
    # BCN: per-channel scale/shift of the batch norm plus per-group (32) scale/shift of the channel norm.
    assert _count(VGG16(norm=norm_layer("bcn")), RGB) == _vgg16_count(3, 2, 64) == 14_729_098


def test_resnet18_parameter_count():
    # The CIFAR ResNet-18 of the literature (conv 3x3 stem, no biases, BN, Dense 512 -> 10).
    assert _count(ResNet18(norm=norm_layer("bn")), RGB) == 11_173_962
    assert _count(ResNet18(norm=norm_layer("bn"), conv=nn.Conv), RGB) == 11_173_962


@pytest.mark.parametrize("norm", ["bn", "gn", "bcn", "none"])
@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (2, 28, 28, 1)])
@pytest.mark.slow
def test_models_run_on_cifar_and_fashion_mnist_shapes(norm, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    for model in [
        VGG16Narrow(norm=norm_layer(norm, num_groups=8)),
        ResNet18(width=16, norm=norm_layer(norm, num_groups=8)),
    ]:
        variables = model.init(jax.random.key(1), x, train=False)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        assert logits.shape == (2, 10) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(logits)))
        assert ("batch_stats" in updates) == (norm in ("bn", "bcn"))


def test_convs_are_injected():
    x = jnp.zeros((1, 32, 32, 3))
    model = VGG16Narrow(norm=None, conv=wsjax.ScaledWSConv)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    assert "gain" in params["conv1_1"]
    assert (
        "gain"
        not in jax.eval_shape(lambda: VGG16Narrow(norm=None).init(jax.random.key(0), x))["params"][
            "conv1_1"
        ]
    )


@pytest.mark.slow
def test_models_get_the_cpu_convolution_by_default_with_the_same_parameters():
    """VGG16's last stage on 32x32 inputs has 2x2 maps: the default takes shifted matmuls there."""
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = VGG16Narrow(norm=norm_layer("bcn", num_groups=8))
    assert model.conv is wsjax.WSConv
    with_lax = model.clone(
        conv=functools.partial(wsjax.WSConv, conv_general_dilated=jax.lax.conv_general_dilated)
    )
    variables = model.init(jax.random.key(1), x, train=False)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
        jnp.shape, with_lax.init(jax.random.key(1), x, train=False)
    )

    def loss(m):
        return lambda p: jnp.sum(
            jnp.sin(m.apply({**variables, "params": p}, x, train=True, mutable=["batch_stats"])[0])
        )

    got, want = (jax.value_and_grad(loss(m))(variables["params"]) for m in (model, with_lax))
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def test_bf16_model():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    model = VGG16Narrow(
        norm=norm_layer("bcn", num_groups=8, dtype=jnp.bfloat16), dtype=jnp.bfloat16
    )
    variables = model.init(jax.random.key(1), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits, _ = model.apply(variables, x, mutable=["batch_stats"])
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("kind", ["bn", "gn", "bcn"])
def test_bf16_norm_layers_run_under_strict_promotion(kind):
    """The tests run under 'strict' dtype promotion (conftest.py), where Flax's own BatchNorm and GroupNorm
    refuse bfloat16 inputs; ours compute what Flax computes under 'standard' promotion."""
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 8)).astype(jnp.bfloat16)
    layer = norm_layer(kind, num_groups=4, dtype=jnp.bfloat16)(use_running_average=False)
    variables = layer.init(jax.random.key(1), x)
    y, _ = layer.apply(variables, x, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    flax_layer = {"bn": nn.BatchNorm, "gn": nn.GroupNorm}.get(kind)
    if flax_layer is not None:
        kwargs = {"use_running_average": False} if kind == "bn" else {"num_groups": 4}
        with jax.numpy_dtype_promotion("standard"):
            want, _ = flax_layer(dtype=jnp.bfloat16, **kwargs).apply(
                variables, x, mutable=["batch_stats"]
            )
        np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))
    bcn = norm_layer("bcn", num_groups=4, dtype=jnp.bfloat16)
    if (
        kind == "bcn"
    ):  # BCN with Flax's batch norm inside (estimate=False), as the official models use it
        layer = bcn.func(**{**bcn.keywords, "estimate": False}, use_running_average=False)
        variables = layer.init(jax.random.key(1), x)
        assert layer.apply(variables, x, mutable=["batch_stats"])[0].dtype == jnp.bfloat16


def test_unknown_norm():
    with pytest.raises(ValueError, match="unknown norm 'ln'"):
        norm_layer("ln")


def test_import_wsjax_does_not_import_tensorflow():
    # (optax is imported by flax.nnx itself, so it is not checked.)
    code = "import sys, wsjax, wsjax.nnx, wsjax.models; bad = [m for m in ('tensorflow', 'tensorflow_datasets', 'orbax') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_api():
    for name in wsjax.__all__:
        assert hasattr(wsjax, name)


def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient():
    from wsjax.models import max_pool_2x2

    x = jax.random.normal(
        jax.random.PRNGKey(3), (2, 8, 6, 5)
    )  # no ties: the gradients must agree exactly
    np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
    np.testing.assert_array_equal(
        jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x))))(x),
        jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2)))))(x),
    )
    tied = jnp.zeros((1, 2, 2, 1))  # a tie: the gradient is shared equally
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(max_pool_2x2(x)))(tied), 0.25)
