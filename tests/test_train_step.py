"""The data-parallel train step: 8 devices with synced statistics equal 1 device with the global batch."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import steps
from wsjax.models import VGG, norm_layer

GLOBAL_BATCH = 16


def _setup(num_devices: int, norm: str, synced: bool):
    mesh = Mesh(np.array(jax.devices()[:num_devices]), (steps.AXIS,))
    model = VGG(
        stages=((8,), (16,)),
        norm=norm_layer(norm, num_groups=4, axis_name=steps.AXIS if synced else None),
    )
    state = steps.create_train_state(model, optax.sgd(0.1), (8, 8, 3), seed=0)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    # One batch's worth of examples, spread over the devices: each device's shard is its whole batch, so
    # the step sees the same 16 examples whatever the device count (the order within a device is
    # irrelevant to the mean loss, its gradient and the batch statistics).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (GLOBAL_BATCH, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
    per_device = GLOBAL_BATCH // num_devices
    sharding = NamedSharding(mesh, P(steps.AXIS))
    images = jax.device_put(images.reshape(num_devices, per_device, 8, 8, 3), sharding)
    labels = jax.device_put(labels.reshape(num_devices, per_device), sharding)
    cfg = steps.StepConfig(per_device, 1, crop_padding=0, flip=False, mean=(0.5,), std=(0.5,))
    return steps.make_train_step(mesh, cfg), state, images, labels


def _step(num_devices, norm, synced):
    train_step, state, images, labels = _setup(num_devices, norm, synced)
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
