"""wsjax.nnx.fold_weight_standardization: plain Flax layers, the folded kernels, the WS model's outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx
from wsjax.nnx._layers import _TransformsKernel


class CNN(nnx.Module):
    """Flax's NNX MNIST tutorial CNN, written with every wsjax layer and a BCN."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = wnnx.WSConv(1, 8, (3, 3), standardization="qiao", rngs=rngs)
        self.norm1 = wnnx.BatchChannelNorm(8, num_groups=4, rngs=rngs)
        self.conv2 = wnnx.ScaledWSConv(8, 8, (3, 3), strides=(2, 2), rngs=rngs)
        self.up = wnnx.WSConvTranspose(
            8, 4, (2, 2), strides=(2, 2), standardization="bit", rngs=rngs
        )
        self.conv3 = wnnx.WSConv(4, 4, (3, 3), apply_to="output", rngs=rngs)
        self.head = wnnx.WSDense(4, 10, rngs=rngs)
        self.plain = nnx.Linear(10, 10, rngs=rngs)  # not WS: left as it is

    def __call__(self, x):
        x = nnx.relu(self.norm1(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        x = self.conv3(nnx.relu(self.up(x)))
        return self.plain(self.head(jnp.mean(x, axis=(1, 2))))


def _trained(x):
    model = CNN(nnx.Rngs(0))
    # Random parameters (a gain away from 1, kernels with a mean) and running statistics from two batches.
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(
        model,
        jax.tree.unflatten(
            tree,
            [v + 0.3 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys, strict=True)],
        ),
    )
    model(x)
    model(x * 2.0)
    model.eval()
    return model


def test_folded_model_has_plain_layers_and_the_ws_models_outputs():
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 1))
    model = _trained(x)
    want = model(x)
    folded = wnnx.fold_weight_standardization(model)
    kinds = {
        name: type(getattr(folded, name)) for name in ("conv1", "conv2", "up", "conv3", "head")
    }
    assert kinds == {
        "conv1": nnx.Conv,
        "conv2": nnx.Conv,
        "up": nnx.ConvTranspose,
        "conv3": nnx.Conv,
        "head": nnx.Linear,
    }
    assert not [n for _, n in nnx.iter_graph(folded) if isinstance(n, _TransformsKernel)]
    assert not hasattr(folded.conv2, "gain") and not hasattr(folded.conv1, "standardization")
    np.testing.assert_allclose(folded(x), want, rtol=2e-5, atol=2e-5)
    # The kernels are the standardized ones, the original model untouched and still WS.
    np.testing.assert_array_equal(folded.conv1.kernel[...], model.conv1.effective_kernel())
    assert isinstance(model.conv1, wnnx.WSConv)
    np.testing.assert_array_equal(model(x), want)
    # Under jit, and its parameter tree is the plain model's (no gain).
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(folded, x), want, rtol=2e-5, atol=2e-5)
    assert "gain" not in nnx.state(folded, nnx.Param)["conv2"]


def test_the_linen_function_points_an_nnx_model_to_the_nnx_one():
    with pytest.raises(TypeError, match="wsjax.nnx.fold_weight_standardization"):
        wsjax.fold_weight_standardization(CNN(nnx.Rngs(0)), {}, jnp.zeros((1, 8, 8, 1)))


def test_layers_inside_a_sequential_and_a_model_that_is_one_layer():
    rngs = nnx.Rngs(0)
    model = nnx.Sequential(
        wnnx.WSConv(3, 4, (3, 3), rngs=rngs), nnx.relu, wnnx.WSConv(4, 4, (1, 1), rngs=rngs)
    )
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    folded = wnnx.fold_weight_standardization(model)
    assert [type(layer) for layer in folded.layers if isinstance(layer, nnx.Module)] == [
        nnx.Conv,
        nnx.Conv,
    ]
    np.testing.assert_allclose(folded(x), model(x), rtol=2e-5, atol=2e-5)
    layer = wnnx.WSDense(3, 2, rngs=rngs)
    alone = wnnx.fold_weight_standardization(layer)
    assert type(alone) is nnx.Linear
    np.testing.assert_allclose(alone(x), layer(x), rtol=2e-5, atol=2e-5)
