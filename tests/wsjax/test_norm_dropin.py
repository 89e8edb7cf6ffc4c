"""EstimatedBatchNorm and BatchChannelNorm replace ``nn.BatchNorm`` / ``nnx.BatchNorm`` with nothing else changed.

A ResNet written as flax's ``examples/imagenet`` writes one (written here, not copied: the norm as a partial
of ``nn.BatchNorm``'s keywords, ``scale_init=zeros`` on each block's last norm, 8-channel stages) trains a step
with the norm swapped; each norm with ``nn.BatchNorm``'s keywords equals the NumPy reference.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import wsjax
import wsjax.nnx as wnnx
from tests import reference


class Block(nn.Module):
    filters: int
    conv: type
    norm: type

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3))(x)
        y = nn.relu(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)  # the residual branch starts at zero
        return nn.relu(residual + y)


class ResNet(nn.Module):
    norm_cls: type = nn.BatchNorm
    filters: int = 8  # fewer channels than the paper's 32 groups

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=jnp.float32)
        norm = functools.partial(
            self.norm_cls,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=jnp.float32,
            axis_name=None,
        )
        x = nn.relu(norm(name="bn_init")(conv(self.filters, (3, 3), name="conv_init")(x)))
        for _ in range(2):
            x = Block(self.filters, conv, norm)(x)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


NORMS = {
    "EstimatedBatchNorm": wsjax.EstimatedBatchNorm,
    "BatchChannelNorm": wsjax.BatchChannelNorm,
    "BatchChannelNorm(estimate=False)": functools.partial(wsjax.BatchChannelNorm, estimate=False),
}


@pytest.mark.parametrize("name", list(NORMS))
def test_a_flax_style_resnet_trains_with_the_norm_swapped(name):
    model = ResNet(norm_cls=NORMS[name])
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    labels = jnp.arange(4) % 10
    variables = model.init(jax.random.key(1), x, train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    tx = optax.sgd(0.1, momentum=0.9)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, mutable=["batch_stats"]
        )
        one_hot = jax.nn.one_hot(labels, 10)
        return optax.softmax_cross_entropy(logits, one_hot).mean(), updates["batch_stats"]

    @jax.jit
    def step(params, opt_state):
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, new_stats, loss, grads

    new_params, _, new_stats, loss, grads = step(params, tx.init(params))
    assert np.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    moved = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), new_stats, batch_stats
    )
    assert all(jax.tree.leaves(moved)), "every running statistic updates in training"
    # zero-initialized last norms: each block starts as the identity on its input.
    last = {k: v for k, v in params.items() if k.startswith("Block")}
    for block in last.values():
        final = block[sorted(k for k in block if "Norm" in k or "norm" in k.lower())[-1]]
        scale = final["channel_norm"]["scale"] if "channel_norm" in final else final["scale"]
        assert np.all(np.asarray(scale) == 0)
    logits = model.apply({"params": new_params, "batch_stats": new_stats}, x, train=False)
    assert logits.shape == (4, 10) and np.all(np.isfinite(logits))


def test_the_groups_follow_the_channels_unless_given():
    x = jnp.ones((2, 4, 4, 48))
    for kwargs, groups in [({}, 16), ({"num_groups": 4}, 4), ({"group_size": 12}, 4)]:
        variables = wsjax.BatchChannelNorm(**kwargs).init(
            jax.random.key(0), x, use_running_average=True
        )
        assert variables["params"]["channel_norm"]["scale"].shape == (groups,), kwargs
        norm = wnnx.BatchChannelNorm(48, **kwargs)
        assert norm.channel_norm.scale[...].shape == (groups,), kwargs
    assert wsjax.BatchChannelNorm().init(
        jax.random.key(0), jnp.ones((1, 2, 2, 64)), use_running_average=True
    )["params"]["channel_norm"]["scale"].shape == (32,)  # the paper's 32 where the channels allow


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_groups": 5}, "not divisible into num_groups=5"),
        ({"group_size": 5}, "groups of group_size=5"),
        ({"num_groups": 4, "group_size": 12}, "num_groups or group_size, not both"),
    ],
)
def test_groups_that_do_not_fit_are_refused_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        wsjax.BatchChannelNorm(**kwargs).init(
            jax.random.key(0), jnp.ones((1, 2, 2, 48)), use_running_average=True
        )
    with pytest.raises(ValueError, match=message):
        wnnx.BatchChannelNorm(48, **kwargs)


def _bcn_reference(x_nhwc, state, ebn_scale, ebn_bias, groups, cn_scale, cn_bias, train):
    y, new_state = reference.estimated_batch_norm(x_nhwc, state, ebn_scale, ebn_bias, train=train)
    return reference.channel_norm(y, groups, cn_scale, cn_bias), new_state


@pytest.mark.parametrize("train", [True, False])
def test_bcn_with_batchnorms_keywords_equals_the_numpy_reference(train):
    """NCHW (``axis=1``), ``group_size``, a zero-initialized output scale replaced by a random one, no bias."""
    x = jax.random.normal(jax.random.key(0), (3, 12, 5, 4)) * 2.0 + 0.5  # (N, C, H, W)
    norm = wsjax.BatchChannelNorm(
        axis=1,
        group_size=3,
        use_bias=False,
        scale_init=nn.initializers.zeros,
        use_fast_variance=False,
        use_running_average=not train,
    )
    variables = norm.init(jax.random.key(1), x)
    assert variables["params"]["channel_norm"]["scale"].shape == (4,)
    assert "bias" not in variables["params"]["channel_norm"]
    params = jax.tree.map(
        lambda v: v + jax.random.uniform(jax.random.key(2), v.shape), variables["params"]
    )
    stats = {"mean": jnp.full((12,), 0.3), "var": jnp.full((12,), 1.7)}
    y, updates = norm.apply(
        {"params": params, "batch_stats": {"batch_norm": stats}}, x, mutable=["batch_stats"]
    )
    nhwc = np.moveaxis(np.asarray(x), 1, -1)
    want, (mean, var) = _bcn_reference(
        nhwc,
        (stats["mean"], stats["var"]),
        params["batch_norm"]["scale"],
        params["batch_norm"]["bias"],
        4,
        params["channel_norm"]["scale"],
        np.zeros(4),
        train,
    )
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), 1, -1), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        updates["batch_stats"]["batch_norm"]["mean"], mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        updates["batch_stats"]["batch_norm"]["var"], var, rtol=1e-5, atol=1e-6
    )


def test_estimated_batch_norm_takes_batchnorms_keywords():
    x = jax.random.normal(jax.random.key(0), (6, 5, 3)) + 4.0  # features on axis 1
    norm = wsjax.EstimatedBatchNorm(
        axis=1,
        use_scale=False,
        bias_init=nn.initializers.constant(0.25),
        use_fast_variance=False,
        use_running_average=False,
    )
    variables = norm.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"bias"}
    y, updates = norm.apply(variables, x, mutable=["batch_stats"])
    xt = np.moveaxis(np.asarray(x), 1, -1)
    want, (mean, var) = reference.estimated_batch_norm(
        xt, (np.zeros(5), np.ones(5)), np.ones(5), np.full(5, 0.25)
    )
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), 1, -1), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-5)


def test_two_pass_variance_is_exact_where_the_mean_dwarfs_the_spread():
    """``use_fast_variance=False`` as ``nn.BatchNorm``'s: E[x²] - E[x]² loses a spread of 1e-3 around 1e3."""
    x = 1e3 + 1e-3 * jax.random.normal(jax.random.key(0), (64, 4))
    want = np.asarray(x, np.float64).var(axis=0)
    for fast, close in [(False, True), (True, False)]:
        norm = wsjax.EstimatedBatchNorm(
            momentum=0.0, use_fast_variance=fast, use_running_average=False
        )
        _, updates = norm.apply(norm.init(jax.random.key(0), x), x, mutable=["batch_stats"])
        got = np.asarray(updates["batch_stats"]["var"])
        assert np.allclose(got, want, rtol=1e-2) == close, (fast, got, want)


class NNXNet(nnx.Module):
    """A CNN written as Flax's NNX tutorial writes one, with ``norm`` standing where ``nnx.BatchNorm`` did."""

    def __init__(self, norm, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.norm1 = norm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.norm2 = norm(8, scale_init=nnx.initializers.zeros, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.norm1(self.conv(x)))
        x = x + self.norm2(self.conv2(x))
        return self.head(jnp.mean(x, axis=(1, 2)))


@pytest.mark.parametrize(
    "norm",
    [
        wnnx.EstimatedBatchNorm,
        wnnx.BatchChannelNorm,
        functools.partial(wnnx.BatchChannelNorm, estimate=False),
    ],
)
def test_an_nnx_model_trains_with_batchnorm_swapped(norm):
    model = NNXNet(norm, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    x, labels = jax.random.normal(jax.random.key(0), (4, 6, 6, 3)), jnp.arange(4)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    assert np.isfinite(step(model, optimizer))
    model.eval()
    assert np.all(np.isfinite(model(x)))
