"""NNX evaluation: ``nnx.view(model, use_running_average=...)`` and ``model.eval()`` reach every wsjax norm.

A model that mixes ``nnx.BatchNorm`` with our estimated batch norm and BCN is evaluated the way Flax's NNX
documentation does it; the outputs must be the running-statistics formula (NumPy) and no running statistic
may move, while the training view updates them all.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax.nnx as wnnx

C = 8


class Mixed(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.bn = nnx.BatchNorm(C, momentum=0.9, rngs=rngs)
        self.ebn = wnnx.EstimatedBatchNorm(C, rngs=rngs)
        self.bcn = wnnx.BatchChannelNorm(C, num_groups=4, rngs=rngs)

    def __call__(self, x):
        return self.bcn(self.ebn(self.bn(x)))


def _batch_stats(model) -> dict:
    return {
        jax.tree_util.keystr(path): np.array(v)
        for path, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.BatchStat))
    }


def _trained_model():
    """Running statistics away from their initial values, so that evaluation has something to use."""
    model = Mixed(nnx.Rngs(0))
    for seed in range(3):
        model(jax.random.normal(jax.random.key(seed), (16, 5, 5, C)) * 2.0 + 1.0)
    return model


def _normalize(x, mean, var, scale, bias, eps=1e-5):
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _channel_norm(y, groups, scale, bias, eps=1e-5):
    b, *_, c = y.shape
    g = y.reshape(b, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    z = ((g - mean) / np.sqrt(var + eps)).reshape(y.shape)
    return z * np.repeat(scale, c // groups) + np.repeat(bias, c // groups)


def _reference_eval(model, x):
    """The model at evaluation, from its variables, in float64 NumPy."""
    s = lambda v: np.asarray(v[...], np.float64)  # noqa: E731
    y = _normalize(x, s(model.bn.mean), s(model.bn.var), s(model.bn.scale), s(model.bn.bias))
    y = _normalize(y, s(model.ebn.mean), s(model.ebn.var), s(model.ebn.scale), s(model.ebn.bias))
    ebn = model.bcn.batch_norm
    y = _normalize(y, s(ebn.mean), s(ebn.var), s(ebn.scale), s(ebn.bias))
    cn = model.bcn.channel_norm
    return _channel_norm(y, 4, s(cn.scale), s(cn.bias))


SHIFTED = np.asarray(jax.random.normal(jax.random.key(7), (4, 5, 5, C)) * 3.0 - 2.0, np.float64)


@pytest.mark.parametrize("evaluate", ["view", "eval"])
def test_evaluation_uses_and_keeps_every_running_statistic(evaluate):
    model = _trained_model()
    before = _batch_stats(model)
    if evaluate == "view":
        evaluator = nnx.view(model, use_running_average=True)
    else:
        model.eval()
        evaluator = model
    y = evaluator(jnp.asarray(SHIFTED, jnp.float32))
    after = _batch_stats(model)
    assert before.keys() == after.keys() and len(before) == 6  # mean and var of three batch norms
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    np.testing.assert_allclose(np.asarray(y), _reference_eval(model, SHIFTED), rtol=2e-5, atol=2e-5)


def test_the_training_view_updates_every_running_statistic():
    model = _trained_model()
    model.eval()
    before = _batch_stats(model)
    nnx.view(model, use_running_average=False)(jnp.asarray(SHIFTED, jnp.float32))
    after = _batch_stats(model)
    for name in before:
        assert not np.array_equal(after[name], before[name]), f"{name} did not move in training"


@pytest.mark.parametrize(
    "make",
    [
        lambda: wnnx.EstimatedBatchNorm(C, rngs=nnx.Rngs(0)),
        lambda: wnnx.BatchChannelNorm(C, num_groups=4, rngs=nnx.Rngs(0)),
        lambda: wnnx.BatchChannelNorm(C, num_groups=4, estimate=False, rngs=nnx.Rngs(0)),
    ],
)
def test_each_norm_alone_takes_the_view(make):
    norm = make()
    x = jnp.asarray(SHIFTED, jnp.float32)
    before = _batch_stats(norm)
    nnx.view(norm, use_running_average=True)(x)
    after = _batch_stats(norm)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    nnx.view(norm, use_running_average=False)(x)
    assert any(not np.array_equal(_batch_stats(norm)[n], before[n]) for n in before)
