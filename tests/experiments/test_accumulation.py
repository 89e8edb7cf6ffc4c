"""Gradient accumulation (``accumulate_steps``): k micro-batches of b/k per optimizer step.

Without batch statistics it is one batch of b; with BN the gradient of k vmapped replicas of b/k; its running
statistics (BN, and BCN's estimated batch norm, which also normalizes with them) are updated once per
micro-batch, in turn: checked against the model applied to the micro-batches one after another.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import train
from experiments.common.errors import ConfigError
from experiments.trainer import steps, validation
from experiments.trainer.metrics import read_metrics
from tests.helpers import tiny_config
from wsjax.models import VGG, norm_layer

BATCH = 16  # per device, every step
LEARNING_RATE = 0.1


def _model(norm: str) -> VGG:
    return VGG(stages=((8,), (16,)), norm=norm_layer(norm, num_groups=4))  # WSConv by default


def _data(devices: int, batches_per_shard: int):
    """``BATCH * batches_per_shard`` examples per device, uint8 8×8×3."""
    rng = np.random.default_rng(0)
    n = devices * BATCH * batches_per_shard
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(
        np.int32
    )


def _run(
    norm, *, devices=1, replicas=1, k=1, num_steps=1, batches_per_shard=1, augment=False, **cfg
):
    """Params, statistics and last metrics after ``num_steps`` SGD steps; each device's batch of ``BATCH`` over
    ``replicas`` replicas, each replica's batch in ``k`` micro-batches."""
    mesh = Mesh(np.array(jax.devices()[:devices]), (steps.AXIS,))
    state = steps.create_train_state(_model(norm), optax.sgd(LEARNING_RATE), (8, 8, 3), seed=0)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    images, labels = _data(devices, batches_per_shard)
    shards = devices * replicas
    sharding = NamedSharding(mesh, P(steps.AXIS))
    images = jax.device_put(images.reshape(shards, -1, 8, 8, 3), sharding)
    labels = jax.device_put(labels.reshape(shards, -1), sharding)
    step_config = steps.StepConfig(
        per_replica_batch=BATCH // replicas,
        steps_per_epoch=batches_per_shard,
        crop_padding=2 if augment else 0,
        flip=augment,
        mean=(0.5,),
        std=(0.5,),
        replicas_per_device=replicas,
        accumulate_steps=k,
        **cfg,
    )
    train_step = steps.make_train_step(mesh, step_config)
    for _ in range(num_steps):
        state, metrics = train_step(state, images, labels)
    assert train_step._cache_size() == 1  # every step reuses the first compilation
    return jax.device_get((state.params, state.batch_stats, metrics))


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def _differ(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return any(not np.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in leaves)


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_micro_batches_without_batch_statistics_equal_one_batch(norm):
    """GN+WS or WS alone: 4 micro-batches of 4 are one batch of 16 (two steps, two batches per shard)."""
    params_k, _, metrics_k = _run(norm, k=4, num_steps=2, batches_per_shard=2)
    params_1, _, metrics_1 = _run(norm, k=1, num_steps=2, batches_per_shard=2)
    _assert_trees_close(params_k, params_1)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(metrics_k[key], metrics_1[key], rtol=1e-5)


@pytest.mark.parametrize(
    "devices, replicas, k",
    [(1, 1, 4), (2, 2, 2)],
)
def test_batch_norm_micro_batches_equal_vmapped_replicas_in_gradient(devices, replicas, k):
    """BN: each device's replicas in k micro-batches give the parameters of k times the replicas, each with one
    micro-batch (the same examples in the same split: ``data_order="example"``, crops and flips included);
    the running statistics differ (k updates in turn against one averaged update)."""
    common = dict(
        devices=devices, num_steps=2, batches_per_shard=2, augment=True, data_order="example"
    )
    params_k, stats_k, metrics_k = _run("bn", replicas=replicas, k=k, **common)
    params_r, stats_r, metrics_r = _run("bn", replicas=replicas * k, **common)
    _assert_trees_close(params_k, params_r)
    np.testing.assert_allclose(metrics_k["loss"], metrics_r["loss"], rtol=1e-5)
    assert _differ(stats_k, stats_r)


def test_estimated_batch_norm_micro_batches_differ_from_vmapped_replicas():
    """BCN: micro-batch j normalizes with running statistics that hold micro-batches 0..j, so the gradient is
    not that of replicas, each normalizing with the step's statistics updated by its own micro-batch."""
    params_k, _, _ = _run("bcn", k=4, data_order="example")
    params_r, _, _ = _run("bcn", replicas=4, data_order="example")
    assert _differ(params_k, params_r)


def _sequential_reference(norm: str, k: int):
    """One SGD step over k micro-batches applied in turn, written with the model alone: the running statistics
    threaded from each micro-batch to the next, the micro-batches' gradients averaged."""
    model = _model(norm)
    state = steps.create_train_state(model, optax.sgd(LEARNING_RATE), (8, 8, 3), seed=0)
    images, labels = _data(1, 1)
    x = (
        images.astype(np.float32) / 255.0 - 0.5
    ) / 0.5  # the step's normalization, mean = std = 0.5
    params, stats = state.params, state.batch_stats

    def loss(params, stats, x, y):
        logits, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    grads = []
    for j in range(k):
        part = slice(j * BATCH // k, (j + 1) * BATCH // k)
        g, updates = jax.grad(loss, has_aux=True)(params, stats, jnp.asarray(x[part]), labels[part])
        grads.append(g)
        stats = updates["batch_stats"]
    mean_grad = jax.tree.map(lambda *g: sum(g) / k, *grads)
    return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, mean_grad), stats


@pytest.mark.parametrize("norm", ["bn", "bcn"])
def test_running_statistics_follow_the_micro_batches_in_turn(norm):
    k = 4
    # data_order="example" with one batch per shard: the batch is the examples in order, as in the reference.
    params, stats, _ = _run(norm, k=k, data_order="example")
    params_ref, stats_ref = _sequential_reference(norm, k)
    _assert_trees_close(params, params_ref)
    _assert_trees_close(stats, stats_ref)


def test_bad_accumulation_steps_are_refused():
    with pytest.raises(
        ValueError, match="accumulate_steps=3 must be a positive integer that divides"
    ):
        steps.StepConfig(
            per_replica_batch=16, steps_per_epoch=1, crop_padding=0, flip=False, mean=(0.5,),
            std=(0.5,), accumulate_steps=3,
        )  # fmt: skip
    # 16 images over 8 devices are 2 per device: not 4 micro-batches.
    with pytest.raises(ConfigError, match=r"over 8 devices × 4 micro-batches \(accumulate_steps\)"):
        validation.validate(tiny_config(accumulate_steps=4), num_devices=8)
    with pytest.raises(ConfigError, match="accumulate_steps must be a positive integer, got 0"):
        validation.validate(tiny_config(accumulate_steps=0), num_devices=1)
    validation.validate(tiny_config(accumulate_steps=2), num_devices=8)


def test_trainer_runs_with_accumulation(tmp_path):
    """End to end on synthetic data: 8 fake devices as vmapped replicas of 2 images, each in 2 micro-batches."""
    config = tiny_config(accumulate_steps=2, num_train_steps=2, eval_every_steps=2)
    result = train.train_and_evaluate(config, str(tmp_path))
    train_lines = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert [r["step"] for r in train_lines] == [2] and np.isfinite(train_lines[0]["loss"])
    assert np.isfinite(result["loss"])
