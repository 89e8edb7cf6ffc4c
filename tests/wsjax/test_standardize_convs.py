"""standardize_convs: WS for models written without wsjax, the predicate honoured, the parameter tree kept."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx


class Block(nn.Module):
    filters: int
    conv: type
    strides: tuple = (1, 1)

    @nn.compact
    def __call__(self, x):
        y = nn.relu(nn.GroupNorm(num_groups=4)(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = nn.GroupNorm(num_groups=4)(self.conv(self.filters, (3, 3))(y))
        if x.shape != y.shape:
            x = self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """Written as flax's examples/imagenet ResNet: the conv class a field, layers made in __call__."""

    conv_cls: type = nn.Conv
    dense_cls: type = nn.Dense

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(self.conv_cls, use_bias=False, dtype=jnp.float32)
        x = nn.relu(nn.GroupNorm(num_groups=4)(conv(8, (3, 3), name="conv_init")(x)))
        for i, filters in enumerate((8, 16)):
            x = Block(filters, conv, strides=(2, 2) if i else (1, 1))(x)
        return self.dense_cls(10, name="head")(jnp.mean(x, axis=(1, 2)))


X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


def _randomized(variables):
    """Kernels with a mean and a spread: standardizing them changes the outputs a lot."""
    leaves, tree = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    return jax.tree.unflatten(
        tree,
        [v + 0.2 + 0.3 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys, strict=True)],
    )


def test_linen_same_tree_and_the_outputs_of_the_model_written_with_wsconv():
    plain = ResNet()
    standardized = wsjax.standardize_convs(plain)
    variables = plain.init(jax.random.key(1), X)
    assert jax.tree.map(np.shape, standardized.init(jax.random.key(1), X)) == jax.tree.map(
        np.shape, variables
    )
    for a, b in zip(
        jax.tree.leaves(standardized.init(jax.random.key(1), X)),
        jax.tree.leaves(variables),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)  # the same initial values: a checkpoint loads both ways
    variables = _randomized(variables)
    by_hand = ResNet(conv_cls=wsjax.WSConv).apply(variables, X)
    got = jax.jit(standardized.apply)(variables, X)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(got) - np.asarray(plain.apply(variables, X))).max() > 1e-2


def test_linen_the_predicate_and_the_head():
    plain = ResNet()
    variables = _randomized(plain.init(jax.random.key(1), X))
    # Nothing chosen: the plain model.
    none = wsjax.standardize_convs(plain, where=lambda path: False, dense=True).apply(variables, X)
    np.testing.assert_allclose(none, plain.apply(variables, X), rtol=1e-6, atol=1e-6)
    # Everything, the head included: the model written with WSConv and WSDense.
    everything = wsjax.standardize_convs(plain, where=lambda path: True, dense=True)
    by_hand = ResNet(conv_cls=wsjax.WSConv, dense_cls=wsjax.WSDense).apply(variables, X)
    np.testing.assert_allclose(everything.apply(variables, X), by_hand, rtol=1e-5, atol=1e-5)
    # The default leaves the head out even with dense=True: the same as WS convolutions alone.
    default_dense = wsjax.standardize_convs(plain, dense=True).apply(variables, X)
    convs_only = ResNet(conv_cls=wsjax.WSConv).apply(variables, X)
    np.testing.assert_allclose(default_dense, convs_only, rtol=1e-5, atol=1e-5)
    # A path predicate: the stem left plain differs from all convolutions standardized.
    seen = []
    no_stem = wsjax.standardize_convs(
        plain, where=lambda path: seen.append(path) or path != ("conv_init",)
    )
    out = no_stem.apply(variables, X)
    assert ("conv_init",) in seen and ("Block_1", "conv_proj") in seen
    assert np.abs(np.asarray(out) - np.asarray(convs_only)).max() > 1e-3


def test_linen_options_reach_the_layers():
    plain = ResNet()
    variables = _randomized(plain.init(jax.random.key(1), X))
    bit = wsjax.standardize_convs(plain, standardization="bit", apply_to="output")
    by_hand = ResNet(conv_cls=functools.partial(wsjax.WSConv, standardization="bit")).apply(
        variables, X
    )
    np.testing.assert_allclose(bit.apply(variables, X), by_hand, rtol=1e-4, atol=1e-4)


def test_the_default_predicate_skips_classifier_heads():
    for head in [("head",), ("Block_0", "classifier"), ("fc",), ("logits",), ("output_1",)]:
        assert not wsjax.skip_head(head), head
    for layer in [("conv_init",), ("Block_0", "Conv_0"), ("header_conv",), ()]:
        assert wsjax.skip_head(layer), layer


class CNN(nnx.Module):
    """Flax's NNX MNIST tutorial CNN, with the conv and linear classes as arguments."""

    def __init__(self, rngs, conv=nnx.Conv, linear=nnx.Linear):
        self.conv1 = conv(1, 8, (3, 3), rngs=rngs)
        self.conv2 = conv(8, 8, (3, 3), rngs=rngs)
        self.blocks = nnx.List([conv(8, 8, (3, 3), rngs=rngs), conv(8, 8, (1, 1), rngs=rngs)])
        self.linear1 = linear(8, 16, rngs=rngs)
        self.head = linear(16, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        for conv in self.blocks:
            x = nnx.relu(conv(x))
        return self.head(nnx.relu(self.linear1(jnp.mean(x, axis=(1, 2)))))


def _nnx_randomized(model):
    state = nnx.state(model, nnx.Param)
    nnx.update(model, _randomized(state))
    return model


def test_nnx_same_state_and_the_outputs_of_the_model_written_with_wsconv():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    plain = _nnx_randomized(CNN(nnx.Rngs(0)))
    standardized = wnnx.standardize_convs(plain, dense=True)
    by_hand = CNN(nnx.Rngs(0), conv=wnnx.WSConv, linear=wnnx.WSDense)
    nnx.update(by_hand, nnx.state(plain, nnx.Param))
    by_hand.head = plain.head  # the default leaves the head plain
    np.testing.assert_allclose(standardized(x), by_hand(x), rtol=1e-5, atol=1e-5)
    assert type(standardized.blocks[0]) is wnnx.WSConv and type(standardized.head) is nnx.Linear
    assert type(standardized.linear1) is wnnx.WSDense and type(plain.conv1) is nnx.Conv  # a copy
    same = jax.tree.map(np.shape, nnx.state(standardized, nnx.Param))
    assert same == jax.tree.map(np.shape, nnx.state(plain, nnx.Param))
    np.testing.assert_allclose(
        nnx.jit(lambda m, x: m(x))(standardized, x), standardized(x), rtol=1e-5, atol=1e-4
    )


def test_nnx_the_predicate_is_honoured():
    plain = CNN(nnx.Rngs(0))
    standardized = wnnx.standardize_convs(plain, where=lambda path: path[0] == "blocks")
    assert [type(layer) for layer in standardized.blocks] == [wnnx.WSConv, wnnx.WSConv]
    assert type(standardized.conv1) is nnx.Conv and type(standardized.linear1) is nnx.Linear
    with pytest.raises(ValueError, match="apply_to"):
        wnnx.standardize_convs(plain, apply_to="both")
