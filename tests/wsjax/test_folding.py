"""Folding WS into plain kernels leaves the outputs unchanged."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import wsjax
from wsjax.models import ResNet, VGG16Narrow, norm_layer


class Mixed(nn.Module):
    """A user model: WS conv, scaled WS conv, WS dense and a nested submodule, all explicitly named."""

    conv: type = wsjax.WSConv
    scaled: type = wsjax.ScaledWSConv
    dense: type = wsjax.WSDense

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.conv(8, (3, 3), name="a")(x))
        x = nn.relu(self.scaled(8, (3, 3), strides=2, name="b")(x))
        x = x.mean(axis=(1, 2))
        return self.dense(4, name="head")(x)


def test_fold_user_model():
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 2))
    model = Mixed()
    variables = model.init(jax.random.key(1), x)
    variables["params"]["b"]["gain"] = jnp.linspace(0.5, 2.0, 8)
    folded = wsjax.fold_weight_standardization(model, variables, x)
    assert "gain" not in folded["params"]["b"]
    assert "gain" in variables["params"]["b"]  # the input is not modified
    plain = Mixed(conv=nn.Conv, scaled=nn.Conv, dense=nn.Dense)
    np.testing.assert_allclose(
        plain.apply(folded, x), model.apply(variables, x), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize(
    "make_model",
    [
        lambda: VGG16Narrow(norm=norm_layer("bcn", num_groups=8)),
        lambda: ResNet(stage_sizes=(1, 1), width=16, norm=norm_layer("gn", num_groups=8)),
    ],
)
@pytest.mark.slow
def test_fold_models_after_training_steps(make_model):
    model = make_model()
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    variables = model.init(jax.random.key(1), x, train=False)
    # Move the weights away from their init so that the kernels' means and scales are arbitrary.
    variables = {**variables, "params": jax.tree.map(lambda p: p * 1.7 + 0.3, variables["params"])}
    folded = wsjax.fold_weight_standardization(model, variables, x[:1], train=False)
    plain = model.clone(conv=nn.Conv)
    want = model.apply(variables, x, train=False)
    np.testing.assert_allclose(plain.apply(folded, x, train=False), want, rtol=1e-6, atol=1e-6)


def test_folded_kernel_is_the_standardized_one():
    layer = wsjax.WSConv(4, (3, 3), name="c")
    x = jnp.ones((1, 5, 5, 2))
    variables = layer.init(jax.random.key(0), x)
    folded = wsjax.fold_weight_standardization(layer, variables, x)
    np.testing.assert_array_equal(
        folded["params"]["kernel"], wsjax.standardize(variables["params"]["kernel"])
    )


def test_fold_in_training_mode_over_an_unbound_axis_is_a_clear_error():
    class Synced(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            x = wsjax.WSConv(4, (3, 3))(x)
            return nn.BatchNorm(use_running_average=not train, axis_name="batch")(x)

    model, x = Synced(), jnp.ones((2, 5, 5, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="mapped axis that is not bound.*train=False"):
        wsjax.fold_weight_standardization(model, variables, x, train=True)
    folded = wsjax.fold_weight_standardization(
        model, variables, x, train=False
    )  # the inference path
    np.testing.assert_array_equal(
        folded["params"]["Conv_0"]["kernel"],
        wsjax.standardize(variables["params"]["Conv_0"]["kernel"]),
    )


def test_a_users_name_error_is_not_rewritten():
    class Broken(nn.Module):
        @nn.compact
        def __call__(self, x):
            raise NameError("undefined_thing")

    with pytest.raises(NameError, match="undefined_thing"):
        wsjax.fold_weight_standardization(Broken(), {"params": {}}, jnp.ones((1, 3)))
