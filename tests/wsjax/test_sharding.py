"""Synced vs per-device batch statistics under jax.shard_map on 8 fake CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import wsjax
from wsjax.models import norm_layer

DEVICES = 8


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == DEVICES, "conftest.py sets 8 CPU devices"
    return jax.make_mesh((DEVICES,), ("batch",))


def _per_device_apply(module, variables, mesh):
    def step(x):
        y, updates = module.apply(variables, x, mutable=["batch_stats"])
        # Stack each device's statistics so that the test can see all of them.
        return y, jax.tree.map(lambda s: s[None], updates["batch_stats"])

    mapped = jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=P("batch"), out_specs=(P("batch"), P("batch")))
    )
    return lambda x: mapped(jax.device_put(x, jax.NamedSharding(mesh, P("batch"))))


@pytest.mark.parametrize("kind", ["bcn", "bn"])
def test_axis_name_gives_global_batch_statistics(mesh, kind):
    x = jax.random.normal(jax.random.key(0), (DEVICES * 2, 4, 4, 8)) * 3 + 1
    synced = norm_layer(kind, num_groups=4, axis_name="batch")(use_running_average=False)
    single = norm_layer(kind, num_groups=4)(use_running_average=False)
    variables = single.init(jax.random.key(1), x)
    y, stats = _per_device_apply(synced, variables, mesh)(x)
    y, stats = np.asarray(y), jax.tree.map(np.asarray, stats)
    y_global, updates = single.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_global, rtol=1e-5, atol=1e-5)
    for per_device, global_stat in zip(
        jax.tree.leaves(stats), jax.tree.leaves(updates["batch_stats"]), strict=True
    ):
        for d in range(DEVICES):
            np.testing.assert_allclose(per_device[d], global_stat, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["bcn", "bn"])
def test_without_axis_name_each_device_uses_its_own_batch(mesh, kind):
    x = jax.random.normal(jax.random.key(0), (DEVICES * 2, 4, 4, 8)) * 3 + 1
    x = x + jnp.arange(DEVICES * 2, dtype=jnp.float32).reshape(
        -1, 1, 1, 1
    )  # devices see different data
    local = norm_layer(kind, num_groups=4)(use_running_average=False)
    variables = local.init(jax.random.key(1), x)
    y, stats = _per_device_apply(local, variables, mesh)(x)
    y, stats = np.asarray(y), jax.tree.map(np.asarray, stats)
    for d in range(DEVICES):
        shard = x[2 * d : 2 * d + 2]
        y_d, updates = local.apply(variables, shard, mutable=["batch_stats"])
        np.testing.assert_allclose(y[2 * d : 2 * d + 2], y_d, rtol=1e-5, atol=1e-5)
        for per_device, own in zip(
            jax.tree.leaves(stats), jax.tree.leaves(updates["batch_stats"]), strict=True
        ):
            np.testing.assert_allclose(per_device[d], own, rtol=1e-5, atol=1e-6)
    # ...and they really differ from the global batch's statistics.
    _, global_updates = local.apply(variables, x, mutable=["batch_stats"])
    mean_leaf = np.asarray(jax.tree.leaves(stats)[0])
    assert not np.allclose(
        mean_leaf[0], jax.tree.leaves(global_updates["batch_stats"])[0], atol=1e-3
    )


def test_estimated_batch_norm_micro_batch_of_one(mesh):
    # The paper's extreme: one image per device. Statistics stay finite and per device.
    ebn = wsjax.EstimatedBatchNorm(use_running_average=False)
    x = jax.random.normal(jax.random.key(0), (DEVICES, 3, 3, 4))
    variables = ebn.init(jax.random.key(1), x)
    y, stats = _per_device_apply(ebn, variables, mesh)(x)
    assert np.all(np.isfinite(np.asarray(y)))
    means = np.asarray(stats["mean"])
    assert not np.allclose(means[0], means[1])
