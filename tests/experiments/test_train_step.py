"""The data-parallel train step: 8 devices with synced statistics equal 1 device with the global batch."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.trainer import steps
from wsjax.models import VGG, norm_layer

GLOBAL_BATCH = 16


def _setup(
    num_devices: int, norm: str, synced: bool, replicas: int = 1, batches_per_shard: int = 1
):
    mesh = Mesh(np.array(jax.devices()[:num_devices]), (steps.AXIS,))
    model = VGG(
        stages=((8,), (16,)),
        norm=norm_layer(norm, num_groups=4, axis_name=steps.AXIS if synced else None),
    )
    state = steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), seed=0)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    # One batch's worth of examples per step, spread over the replicas: with one batch per shard each
    # replica's shard is its whole batch, so the step sees the same 16 examples whatever the device count
    # (the order within a replica is irrelevant to the mean loss, its gradient and the batch statistics).
    rng = np.random.default_rng(0)
    n = GLOBAL_BATCH * batches_per_shard
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int32)
    shards = num_devices * replicas
    per_replica = GLOBAL_BATCH // shards
    sharding = NamedSharding(mesh, P(steps.AXIS))
    images = jax.device_put(images.reshape(shards, n // shards, 8, 8, 3), sharding)
    labels = jax.device_put(labels.reshape(shards, n // shards), sharding)
    cfg = steps.StepConfig(
        per_replica_batch=per_replica,
        steps_per_epoch=batches_per_shard,
        crop_padding=0,
        flip=False,
        mean=(0.5,),
        std=(0.5,),
        replicas_per_device=replicas,
        pool_replicas=synced,
    )
    return steps.make_train_step(mesh, cfg), state, images, labels


def _step(num_devices, norm, synced, replicas=1, num_steps=1, batches_per_shard=1):
    train_step, state, images, labels = _setup(
        num_devices, norm, synced, replicas, batches_per_shard
    )
    for _ in range(num_steps):
        state, metrics = train_step(state, images, labels)
    return jax.device_get((state.params, state.batch_stats, metrics))


@pytest.mark.parametrize("norm", ["bn", "bcn"])
def test_eight_devices_synced_equal_one_device(norm):
    params1, stats1, metrics1 = _step(1, norm, synced=True)
    params8, stats8, metrics8 = _step(8, norm, synced=True)
    # Tolerance: float32 reductions in a different order (per-device partial sums, then pmean).
    for a, b in zip(jax.tree.leaves(params8), jax.tree.leaves(params1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats8), jax.tree.leaves(stats1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics8["loss"], metrics1["loss"], rtol=1e-5)


@pytest.mark.parametrize("norm", ["bn", "bcn"])
@pytest.mark.slow
def test_eight_devices_per_device_statistics_differ(norm):
    params1, stats1, metrics1 = _step(1, norm, synced=True)
    params8, stats8, metrics8 = _step(8, norm, synced=False)
    # Micro-batches of 2: normalization uses each device's own statistics, so the step differs...
    assert not np.allclose(metrics8["loss"], metrics1["loss"], rtol=1e-4)
    leaves8, leaves1 = jax.tree.leaves(params8), jax.tree.leaves(params1)
    assert any(
        not np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(leaves8, leaves1, strict=True)
    )
    # ...while the running means stay the average of the per-device means, which is the global mean.
    mean8 = [
        v
        for k, v in jax.tree_util.tree_flatten_with_path(stats8)[0]
        if "mean" in jax.tree_util.keystr(k)
    ]
    mean1 = [
        v
        for k, v in jax.tree_util.tree_flatten_with_path(stats1)[0]
        if "mean" in jax.tree_util.keystr(k)
    ]
    np.testing.assert_allclose(mean8[0], mean1[0], rtol=1e-4, atol=1e-5)  # first layer: same input


@pytest.mark.parametrize("norm", ["bn", "gn", "bcn"])
@pytest.mark.parametrize("devices, replicas", [(1, 8), (2, 4)])
@pytest.mark.slow
def test_replicas_on_fewer_devices_equal_one_replica_per_device(norm, devices, replicas):
    """r vmapped replicas per device are the same maths as r times more devices: per-replica statistics,
    the same examples per replica (3 steps over shards of 2 batches: the data order must match too), and
    the gradient averaged over all replicas."""
    params8, stats8, metrics8 = _step(8, norm, False, num_steps=3, batches_per_shard=2)
    params_r, stats_r, metrics_r = _step(
        devices, norm, False, replicas=replicas, num_steps=3, batches_per_shard=2
    )
    for a, b in zip(jax.tree.leaves(params_r), jax.tree.leaves(params8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats_r), jax.tree.leaves(stats8), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics_r["loss"], metrics8["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_r["accuracy"], metrics8["accuracy"])


@pytest.mark.parametrize("norm", ["bn", "bcn"])
def test_synced_replicas_equal_synced_devices(norm):
    """Synced statistics span a device's replicas too (pooled): 1 device × 8 replicas is 8 devices, the
    data order included; it is how train_and_evaluate runs 8 fake CPU devices with sync_batch_stats=True."""
    params8, stats8, metrics8 = _step(8, norm, True, num_steps=3, batches_per_shard=2)
    params_r, stats_r, metrics_r = _step(
        1, norm, True, replicas=8, num_steps=3, batches_per_shard=2
    )
    for a, b in zip(
        jax.tree.leaves((params_r, stats_r)), jax.tree.leaves((params8, stats8)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(metrics_r["loss"], metrics8["loss"], rtol=1e-5)
    # ...and differ from per-replica statistics.
    _, _, unsynced = _step(1, norm, False, replicas=8, num_steps=3, batches_per_shard=2)
    assert not np.allclose(unsynced["loss"], metrics_r["loss"], rtol=1e-4)


def test_replicas_keep_their_own_statistics():
    """8 replicas of 2 images on one device differ from one replica of 16 (per-replica statistics)."""
    _, _, metrics_r = _step(1, "bn", False, replicas=8)
    _, _, metrics_1 = _step(1, "bn", False, replicas=1)
    assert not np.allclose(metrics_r["loss"], metrics_1["loss"], rtol=1e-4)
