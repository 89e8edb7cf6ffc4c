"""EstimatedBatchNorm, ChannelNorm and BatchChannelNorm against the NumPy references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx
from tests import reference


def _batches(n, shape=(4, 5, 5, 8), seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return [jax.random.normal(k, shape) * 2.0 + 1.5 for k in keys]


def _random_affine(params, seed=7):
    """Non-trivial scale/shift so that the test sees them."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            jax.random.uniform(k, v.shape, minval=0.5, maxval=1.5)
            for k, v in zip(keys, leaves, strict=True)
        ],
    )


@pytest.mark.parametrize(
    "estimate, variance_around",
    [(True, "batch_mean"), (True, "running_mean"), (False, "batch_mean")],
)
def test_bcn_training_steps_then_eval_match_numpy(estimate, variance_around):
    groups, momentum, eps = 4, 0.9, 1e-5
    bcn = wsjax.BatchChannelNorm(
        num_groups=groups,
        estimate=estimate,
        momentum=momentum,
        epsilon=eps,
        variance_around=variance_around,
    )
    batches = _batches(4)
    variables = bcn.init(jax.random.key(0), batches[0], use_running_average=False)
    params = _random_affine(variables["params"])
    stats = variables["batch_stats"]
    step = jax.jit(
        lambda p, s, x: bcn.apply(
            {"params": p, "batch_stats": s}, x, use_running_average=False, mutable=["batch_stats"]
        )
    )

    bn_ref = (
        functools.partial(reference.estimated_batch_norm, variance_around=variance_around)
        if estimate
        else reference.batch_norm
    )
    ref_state = (np.zeros(8), np.ones(8))
    bn_p, cn_p = params["batch_norm"], params["channel_norm"]
    for x in batches[:3]:
        y, updates = step(params, stats, x)
        stats = updates["batch_stats"]
        h, ref_state = bn_ref(x, ref_state, bn_p["scale"], bn_p["bias"], momentum, eps, train=True)
        want = reference.channel_norm(h, groups, cn_p["scale"], cn_p["bias"], eps)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(stats["batch_norm"]["mean"], ref_state[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(stats["batch_norm"]["var"], ref_state[1], rtol=1e-5, atol=1e-6)

    y_eval = bcn.apply(
        {"params": params, "batch_stats": stats}, batches[3], use_running_average=True
    )
    h, _ = bn_ref(batches[3], ref_state, bn_p["scale"], bn_p["bias"], momentum, eps, train=False)
    want = reference.channel_norm(h, groups, cn_p["scale"], cn_p["bias"], eps)
    np.testing.assert_allclose(y_eval, want, rtol=1e-4, atol=1e-4)


def test_estimated_batch_norm_updates_first_then_normalizes():
    ebn = wsjax.EstimatedBatchNorm(momentum=0.5)
    x = _batches(1, (16, 3))[0]
    variables = ebn.init(jax.random.key(0), x, use_running_average=False)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], 0.0)  # init does not update
    np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)
    y, updates = ebn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    mean = 0.5 * np.asarray(x, np.float64).mean(0)
    var = 0.5 + 0.5 * np.asarray(x, np.float64).var(0)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-5)
    np.testing.assert_allclose(
        y, (np.asarray(x) - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("variance_around", ["batch_mean", "running_mean"])
def test_nnx_estimated_batch_norm_steps_match_numpy(variance_around):
    momentum, eps = 0.8, 1e-5
    ebn = wnnx.EstimatedBatchNorm(8, momentum=momentum, variance_around=variance_around)
    ebn.scale[...], ebn.bias[...] = _random_affine((ebn.scale[...], ebn.bias[...]))
    state = (np.zeros(8), np.ones(8))
    for x in _batches(4):
        y = ebn(x)
        want, state = reference.estimated_batch_norm(
            x, state, ebn.scale[...], ebn.bias[...], momentum, eps, variance_around=variance_around
        )
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(ebn.mean[...], state[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ebn.var[...], state[1], rtol=1e-5, atol=1e-6)


def test_the_two_variance_updates_differ_by_the_squared_mean_shift():
    # Batches of mean 1.5 against a running mean that starts at 0: the official form's variance exceeds
    # labml's by (1 - m) (E_B[x] - old)^2 on the first step, about 0.1 * 2.25 here.
    x = _batches(1, (16, 3))[0]
    runs = {}
    for form in ("batch_mean", "running_mean"):
        ebn = wsjax.EstimatedBatchNorm(momentum=0.9, variance_around=form)
        variables = ebn.init(jax.random.key(0), x, use_running_average=False)
        _, updates = ebn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
        runs[form] = np.asarray(updates["batch_stats"]["var"], np.float64)
    shift = 0.1 * np.square(np.asarray(x, np.float64).mean(0))
    np.testing.assert_allclose(runs["running_mean"] - runs["batch_mean"], shift, rtol=1e-4)
    assert np.all(shift > 0.05)


def test_unknown_or_misplaced_variance_around_is_rejected():
    with pytest.raises(ValueError, match="EstimatedBatchNorm: variance_around must be one of"):
        wsjax.EstimatedBatchNorm(variance_around="old")
    with pytest.raises(ValueError, match="EstimatedBatchNorm: variance_around must be one of"):
        wnnx.EstimatedBatchNorm(3, variance_around="old")
    for make in (
        lambda: wsjax.BatchChannelNorm(estimate=False, variance_around="running_mean"),
        lambda: wnnx.BatchChannelNorm(8, 4, estimate=False, variance_around="running_mean"),
    ):
        with pytest.raises(ValueError, match="needs estimate=True"):
            make()


def test_no_gradient_through_the_estimated_statistics():
    # With the statistics constant, each output depends on its own input only: dy_i/dx_i = 1/sqrt(var+eps).
    ebn = wsjax.EstimatedBatchNorm(momentum=0.9)
    x = _batches(1, (6, 3))[0]
    variables = ebn.init(jax.random.key(0), x, use_running_average=False)

    def f(x):
        return ebn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0]

    jac = jax.jacobian(f)(x)  # (6, 3, 6, 3)
    _, updates = ebn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    diag = 1.0 / np.sqrt(np.asarray(updates["batch_stats"]["var"]) + 1e-5)
    want = np.einsum("ik,jl,j->ijkl", np.eye(6), np.eye(3), diag)
    np.testing.assert_allclose(jac, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 8), (3, 5, 8), (3, 4, 4, 8), (2, 3, 3, 3, 8)])
def test_channel_norm_matches_numpy(shape):
    cn = wsjax.ChannelNorm(num_groups=4)
    x = _batches(1, shape)[0]
    params = _random_affine(cn.init(jax.random.key(0), x)["params"])
    assert params["scale"].shape == (4,) and params["bias"].shape == (4,)
    want = reference.channel_norm(x, 4, params["scale"], params["bias"])
    np.testing.assert_allclose(cn.apply({"params": params}, x), want, rtol=1e-4, atol=1e-5)


def test_channel_norm_with_one_group_per_channel_is_instance_norm():
    cn = wsjax.ChannelNorm(num_groups=8, use_scale=False, use_bias=False)
    x = _batches(1)[0]
    y = np.asarray(cn.apply({}, x), np.float64)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(1, 2)), 1.0, rtol=1e-3)


@pytest.mark.parametrize(
    "module", [wsjax.ChannelNorm(num_groups=3), wsjax.BatchChannelNorm(num_groups=3)]
)
def test_channels_not_divisible_by_groups(module):
    with pytest.raises(ValueError, match="8 channels are not divisible into num_groups=3"):
        module.init(
            jax.random.key(0),
            jnp.ones((2, 4, 4, 8)),
            **({} if isinstance(module, wsjax.ChannelNorm) else {"use_running_average": False}),
        )


def test_bf16_inputs_float32_statistics():
    bcn = wsjax.BatchChannelNorm(num_groups=2, dtype=jnp.bfloat16)
    x = (
        _batches(1, (4, 3, 3, 4))[0] * 100 + 1000
    )  # a large offset: bf16 statistics would be far off
    variables = bcn.init(jax.random.key(0), x.astype(jnp.bfloat16), use_running_average=False)
    y, updates = bcn.apply(
        variables, x.astype(jnp.bfloat16), use_running_average=False, mutable=["batch_stats"]
    )
    assert y.dtype == jnp.bfloat16
    assert updates["batch_stats"]["batch_norm"]["mean"].dtype == jnp.float32
    h, _ = reference.estimated_batch_norm(
        np.asarray(x.astype(jnp.bfloat16), np.float64), (np.zeros(4), np.ones(4)), 1.0, 0.0
    )
    want = reference.channel_norm(h, 2, np.ones(2), np.zeros(2))
    np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=3e-2)


def test_momentum_is_flax_sense():
    # PyTorch momentum 0.1 == Flax 0.9: the running mean moves 10% of the way to the batch mean.
    ebn = wsjax.EstimatedBatchNorm()
    x = jnp.full((4, 2), 10.0)
    variables = ebn.init(jax.random.key(0), x, use_running_average=False)
    _, updates = ebn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 1.0, rtol=1e-6)


def test_use_running_average_is_required():
    with pytest.raises(ValueError, match="use_running_average"):
        wsjax.EstimatedBatchNorm().init(jax.random.key(0), jnp.ones((2, 3)))
    assert isinstance(wsjax.BatchChannelNorm(), nn.Module)


def test_normalization_is_named_in_the_compiled_program():
    """jax.named_scope: profiles and HLO dumps name the statistics and the normalizations, Linen and NNX."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
    bcn = wsjax.BatchChannelNorm(num_groups=4)
    variables = bcn.init(jax.random.key(1), x, use_running_average=False)
    train = lambda v, x: bcn.apply(v, x, use_running_average=False, mutable=["batch_stats"])  # noqa: E731
    hlo = jax.jit(train).lower(variables, x).compile().as_text()
    for scope in ("batch_statistics", "batch_normalize", "channel_norm"):
        assert f"/{scope}/" in hlo
    module = wnnx.BatchChannelNorm(8, 4)
    module.eval()  # no running-average update: a pure function of x, fit for jax.jit
    hlo = jax.jit(lambda x: module(x)).lower(x).compile().as_text()
    for scope in ("batch_normalize", "channel_norm"):
        assert f"/{scope}/" in hlo
    assert isinstance(module, nnx.Module)
