"""WS layers swapped into a third-party Flax model auto-name as the Flax layers they extend.

``ResNetBlock`` / ``TinyResNet`` are written in the style of flax's examples/imagenet ResNet: unnamed layers, a
``conv`` field defaulting to ``nn.Conv``, ``nn.BatchNorm`` with ``use_running_average=not train``.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import wsjax


class ResNetBlock(nn.Module):
    filters: int
    conv: type = nn.Conv
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
        residual = x
        y = nn.relu(norm()(self.conv(self.filters, (3, 3), self.strides)(x)))
        y = norm(scale_init=nn.initializers.zeros)(self.conv(self.filters, (3, 3))(y))
        if residual.shape != y.shape:
            residual = norm()(self.conv(self.filters, (1, 1), self.strides, name="conv_proj")(x))
        return nn.relu(residual + y)


class TinyResNet(nn.Module):
    conv: type = nn.Conv
    dense: type = nn.Dense
    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = self.conv(8, (3, 3))(x)  # a stem the block's convolutions must not renumber
        x = ResNetBlock(8, conv=self.conv)(x, train=train)
        x = ResNetBlock(16, conv=self.conv, strides=(2, 2))(x, train=train)
        x = nn.Conv(16, (1, 1))(x)  # a plain layer after the WS ones shares their counter
        return self.dense(self.num_classes)(x.mean(axis=(1, 2)))


X = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))


def _paths(tree):
    return {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize(
    "conv, dense",
    [
        (wsjax.WSConv, wsjax.WSDense),
        (functools.partial(wsjax.WSConv, standardization="bit", apply_to="output"), nn.Dense),
    ],
)
@pytest.mark.slow
def test_swapped_model_has_the_plain_models_tree_and_loads_its_checkpoint(conv, dense):
    plain = TinyResNet()
    plain_vars = plain.init(jax.random.key(1), X, train=False)
    ws = TinyResNet(conv=conv, dense=dense)
    ws_vars = ws.init(jax.random.key(1), X, train=False)
    assert _paths(ws_vars) == _paths(plain_vars)
    assert "Conv_0" in plain_vars["params"] and "Dense_0" in plain_vars["params"]
    # Same initial values too (same names, so the same RNG streams): the swap changes nothing stored.
    jax.tree.map(np.testing.assert_array_equal, ws_vars, plain_vars)
    # The plain checkpoint loads and runs, training and evaluation; WS makes a difference to the outputs.
    y, updates = ws.apply(plain_vars, X, train=True, mutable=["batch_stats"])
    assert y.shape == (2, 5) and np.isfinite(y).all()
    assert _paths(updates) == _paths({"batch_stats": plain_vars["batch_stats"]})
    y_ws = ws.apply(plain_vars, X, train=False)
    assert not np.allclose(y_ws, plain.apply(plain_vars, X, train=False), atol=1e-3)


def test_every_ws_layer_takes_its_flax_parents_name():
    class Every(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = wsjax.WSConv(4, (3, 3))(x)
            x = wsjax.ScaledWSConv(4, (3, 3))(x)
            x = nn.Conv(4, (3, 3))(x)
            x = wsjax.WSConvTranspose(4, (3, 3))(x)
            x = wsjax.WSDense(3)(x)
            x = wsjax.WSConv(4, (1, 1), name="mine")(x)  # explicit names win
            return x

    params = Every().init(jax.random.key(0), X)["params"]
    assert sorted(params) == ["ConvTranspose_0", "Conv_0", "Conv_1", "Conv_2", "Dense_0", "mine"]
    assert "gain" in params["Conv_1"]  # the ScaledWSConv, second in call order


def test_setup_names_and_user_subclasses_keep_flax_naming():
    class MyConv(wsjax.WSConv):
        pass

    class WithSetup(nn.Module):
        def setup(self):
            self.first = wsjax.WSConv(4, (3, 3))
            self.layers = [wsjax.WSDense(3), wsjax.WSDense(2)]

        def __call__(self, x):
            x = self.first(x)
            for layer in self.layers:
                x = layer(x)
            return x

    class WithSubclass(nn.Module):
        @nn.compact
        def __call__(self, x):
            return MyConv(4, (3, 3))(x)

    params = WithSetup().init(jax.random.key(0), X)["params"]
    assert sorted(params) == ["first", "layers_0", "layers_1"]
    assert list(WithSubclass().init(jax.random.key(0), X)["params"]) == ["MyConv_0"]


def test_fold_auto_named_model_into_the_plain_one():
    ws = TinyResNet(conv=wsjax.WSConv, dense=wsjax.WSDense)
    variables = ws.init(jax.random.key(1), X, train=False)
    variables = {**variables, "params": jax.tree.map(lambda p: p * 1.7 + 0.3, variables["params"])}
    folded = wsjax.fold_weight_standardization(ws, variables, X[:1], train=False)
    np.testing.assert_allclose(
        TinyResNet().apply(folded, X, train=False),
        ws.apply(variables, X, train=False),
        rtol=1e-5,
        atol=1e-5,
    )
