"""Optimizers: weight decay on kernels or on every parameter, and PyTorch's SGD arithmetic (NumPy reference)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.common.errors import ConfigError
from experiments.configs import default, imagenet_resnet50_bcn_ws, imagenet_resnet50_gn_ws
from experiments.trainer import optim

PARAMS = {"conv": {"kernel": jnp.full((3, 3, 2, 4), 2.0)}, "norm": {"scale": jnp.full((4,), 2.0)}}


def _config(**overrides):
    config = default.get_config()
    config.update(learning_rate=0.1, weight_decay=0.01, **overrides)
    return config


def _one_step(config, grads):
    tx = optim.make_optimizer(config, optax.constant_schedule(config.learning_rate))
    with jax.numpy_dtype_promotion("standard"):  # as the train step runs optax (steps.py)
        updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    return optax.apply_updates(PARAMS, updates)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "momentum"])
def test_weight_decay_on_kernels_or_on_everything(optimizer):
    zero = jax.tree.map(jnp.zeros_like, PARAMS)  # only the decay moves a parameter
    kernels = _one_step(_config(optimizer=optimizer, weight_decay_on="kernels"), zero)
    everything = _one_step(_config(optimizer=optimizer, weight_decay_on="all"), zero)
    assert float(kernels["conv"]["kernel"].max()) < 2.0
    assert float(kernels["norm"]["scale"].min()) == 2.0  # not decayed
    assert float(everything["conv"]["kernel"].max()) < 2.0
    assert float(everything["norm"]["scale"].max()) < 2.0


def test_momentum_is_pytorch_sgd_with_l2():
    """torch.optim.SGD(momentum=m, weight_decay=wd): v = m v + (g + wd p); p = p - lr v, from v = 0."""
    config = _config(optimizer="momentum", momentum=0.9, weight_decay_on="all")
    tx = optim.make_optimizer(config, optax.constant_schedule(0.1))
    params, state = PARAMS, tx.init(PARAMS)
    p = {
        k: np.asarray(v, np.float64)
        for k, v in (("k", PARAMS["conv"]["kernel"]), ("s", PARAMS["norm"]["scale"]))
    }
    v = {k: np.zeros_like(a) for k, a in p.items()}
    for step in range(3):
        g = {"k": np.full_like(p["k"], 0.5 + step), "s": np.full_like(p["s"], -1.0 * step)}
        grads = {
            "conv": {"kernel": jnp.asarray(g["k"], jnp.float32)},
            "norm": {"scale": jnp.asarray(g["s"], jnp.float32)},
        }
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for k in p:
            v[k] = 0.9 * v[k] + g[k] + 0.01 * p[k]
            p[k] = p[k] - 0.1 * v[k]
    np.testing.assert_allclose(params["conv"]["kernel"], p["k"], rtol=1e-6)
    np.testing.assert_allclose(params["norm"]["scale"], p["s"], rtol=1e-6)


def test_unknown_weight_decay_on_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown weight_decay_on 'biases'"):
        _one_step(_config(weight_decay_on="biases"), PARAMS)


def test_imagenet_recipe_decays_every_parameter_as_the_official_scripts():
    for recipe in (imagenet_resnet50_gn_ws, imagenet_resnet50_bcn_ws):
        assert recipe.get_config("8").weight_decay_on == "all"
    assert default.get_config().weight_decay_on == "kernels"
