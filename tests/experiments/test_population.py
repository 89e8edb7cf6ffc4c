"""BN's population statistics re-estimated after training (experiments/trainer/population.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments import train
from experiments.common.errors import ConfigError
from experiments.common.mesh import AXIS
from experiments.trainer import population
from experiments.trainer.validation import validate
from tests.helpers import tiny_config

MEAN, STD = (0.5,), (0.25,)


def _conv3x3_numpy(x, kernel, bias):
    """``(N, H, W, C) * (3, 3, C, F)`` with padding 1, from the definition, in float64."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    return np.einsum("nhwcij,ijcf->nhwf", windows, kernel) + bias


def _setup(replicas=2, per_replica=40, seed=0, devices=1):
    config = tiny_config(norm="bn", conv="plain", reestimate_bn_images=10_000)
    model = population.statistics_model(config, num_classes=10)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (replicas, per_replica, 8, 8, 3), dtype=np.uint8)
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 3)), train=False)
    mesh = Mesh(np.array(jax.devices()[:devices]), (AXIS,))
    return model, variables, jnp.asarray(images), mesh


def _first_layer_numpy(images, params):
    x = (np.asarray(images, np.float64).reshape(-1, 8, 8, 3) / 255 - MEAN[0]) / STD[0]
    conv = params["conv1_1"]
    return _conv3x3_numpy(x, np.asarray(conv["kernel"], np.float64), np.asarray(conv["bias"]))


@pytest.mark.parametrize("devices, replicas", [(1, 2), (2, 4)])
def test_first_layer_equals_the_mean_and_variance_over_every_image_used(devices, replicas):
    """80 images in batches of 10 per device (one device, or two holding two replicas each): the combined
    moments are those of all 80 images' positions."""
    model, variables, images, mesh = _setup(replicas, 80 // replicas, devices=devices)
    reestimate = population.make_reestimate(mesh, model, images, 80, 10, MEAN, STD)
    stats, used = reestimate(variables["params"], variables["batch_stats"])
    assert used == 80
    y = _first_layer_numpy(images, variables["params"])
    np.testing.assert_allclose(
        stats["norm1_1"]["mean"], y.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(stats["norm1_1"]["var"], y.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_the_replica_split_changes_nothing():
    """A cell trained as 32 replicas of one image and one of 32 are re-estimated with the same batches."""
    model, variables, images, mesh = _setup()
    args = (variables["params"], variables["batch_stats"])
    one, _ = population.make_reestimate(
        mesh, model, images.reshape(1, 80, 8, 8, 3), 80, 20, MEAN, STD
    )(*args)
    many, _ = population.make_reestimate(
        mesh, model, images.reshape(8, 10, 8, 8, 3), 80, 20, MEAN, STD
    )(*args)
    jax.tree.map(np.testing.assert_array_equal, one, many)


def test_uses_whole_batches_of_the_images_asked_for_and_ignores_the_old_statistics():
    model, variables, images, mesh = _setup()
    params, stats = variables["params"], variables["batch_stats"]
    # 25 asked in batches of 10: three batches (rounded up to a whole batch), 30 images.
    reestimate = population.make_reestimate(mesh, model, images, 25, 10, MEAN, STD)
    good, used = reestimate(params, stats)
    assert used == 30
    poisoned = jax.tree.map(lambda a: a + 5.0, stats)  # running averages far off: they play no part
    again, _ = reestimate(params, poisoned)
    jax.tree.map(np.testing.assert_array_equal, good, again)
    # More images than the split holds: all of it.
    everything = population.make_reestimate(mesh, model, images, 10**6, 10, MEAN, STD)
    assert everything(params, stats)[1] == 80


def test_combining_batches_keeps_a_variance_that_a_large_mean_dwarfs():
    """Means near 1000 (μ² = 1e6) that differ by ~0.01 between batches, within-batch variance 1e-4: the
    population variance is ~2e-4, which float32's E[x²] - μ² (resolution ~0.06 at 1e6) would lose."""
    rng = np.random.default_rng(0)
    means = (1000 + rng.normal(0, 0.01, (64, 4))).astype(np.float32)
    variances = rng.uniform(0.5e-4, 1.5e-4, (64, 4)).astype(np.float32)
    mean, var = population.combine(means, variances)
    m64, v64 = means.astype(np.float64), variances.astype(np.float64)
    np.testing.assert_allclose(mean, m64.mean(axis=0), rtol=1e-12)
    # The definition: the second moment over all batches' positions minus the squared mean.
    second = (v64 + m64**2).mean(axis=0)
    np.testing.assert_allclose(
        var, second - m64.mean(axis=0) ** 2, rtol=1e-5
    )  # its own rounding: 1e-10
    assert np.all(var > 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("replicas_per_device", [1, 4])
def test_a_bn_run_reports_both_accuracies_and_keeps_its_state(tmp_path, replicas_per_device):
    """The final evaluation with re-estimated statistics is an extra: the run's own is unchanged (8 devices,
    then 32 replicas of one image each)."""
    common = dict(
        norm="bn", conv="plain", replicas_per_device=replicas_per_device, global_batch_size=32
    )
    plain = train.train_and_evaluate(tiny_config(**common), str(tmp_path / "plain"))
    both = train.train_and_evaluate(
        tiny_config(**common, reestimate_bn_images=64), str(tmp_path / "both")
    )
    assert both["accuracy"] == plain["accuracy"] and both["loss"] == plain["loss"]
    info = json.loads((tmp_path / "both" / "run_info.json").read_text())
    assert info["final_test_accuracy"] == plain["accuracy"]
    assert 0.0 <= info["final_test_accuracy_population"] <= 1.0 and info["population_images"] >= 64
    records = [json.loads(line) for line in (tmp_path / "both" / "metrics.jsonl").open()]
    row = [r for r in records if r["split"] == "test_population"]
    assert len(row) == 1 and row[0]["accuracy"] == info["final_test_accuracy_population"]


@pytest.mark.slow
def test_other_norms_ignore_it(tmp_path):
    train.train_and_evaluate(tiny_config(norm="gn", reestimate_bn_images=64), str(tmp_path))
    assert "final_test_accuracy_population" not in json.loads(
        (tmp_path / "run_info.json").read_text()
    )


def test_a_negative_count_is_a_config_error():
    with pytest.raises(ConfigError, match="reestimate_bn_images"):
        validate(tiny_config(norm="bn", reestimate_bn_images=-1), 8)


def test_streaming_is_refused_with_the_fix_where_it_applies():
    with pytest.raises(ConfigError, match="input_pipeline='memory'"):
        validate(tiny_config(norm="bn", reestimate_bn_images=64, input_pipeline="stream"), 8)
    # Other norms ignore the setting, streaming or not (a sweep sets it for every cell).
    validate(tiny_config(norm="gn", reestimate_bn_images=64, input_pipeline="stream"), 8)
