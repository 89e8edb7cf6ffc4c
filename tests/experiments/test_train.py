"""train_and_evaluate end to end: synthetic data, mocked CIFAR-10, real Fashion-MNIST, and bad input."""

import json

import numpy as np
import pytest

from experiments import train
from experiments.common.errors import ConfigError
from experiments.trainer import loop
from experiments.trainer.input import data
from experiments.trainer.metrics import read_metrics
from tests.helpers import SHARED_TFDS, needs_fashion_mnist, tiny_config


@pytest.mark.slow
def test_end_to_end_synthetic(tmp_path, capsys):
    result = train.train_and_evaluate(tiny_config(), str(tmp_path))
    records = read_metrics(tmp_path)
    train_lines = [r for r in records if r["split"] == "train"]
    test_lines = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in train_lines] == [2, 4]
    assert [r["step"] for r in test_lines] == [4]
    for r in train_lines:
        assert {"loss", "accuracy", "learning_rate", "images_per_sec", "step_time"} <= set(r)
    assert test_lines[-1]["accuracy"] == pytest.approx(result["accuracy"])
    assert f"final test accuracy: {result['accuracy']:.4f}" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2", "4"]
    assert any((tmp_path / "tensorboard").iterdir())
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "vgg_tiny"


def test_evaluation_covers_the_whole_test_split():
    # 509 test examples over 8 devices with eval batches of 8 per device: padded and masked, none dropped.
    mesh = train.Mesh(np.array(train.jax.devices()), ("batch",))
    dataset = data.load("synthetic", mesh, synthetic_examples=(64, 509), test_pad_multiple=8)
    assert dataset.test.num_examples == 509
    assert float(np.asarray(dataset.test.mask).sum()) == 509
    assert dataset.test.per_replica % 8 == 0
    labels, mask = np.asarray(dataset.test.labels), np.asarray(dataset.test.mask)
    _, synthetic_labels = data._synthetic("test", 10, (32, 32, 3), 509)
    # Every example once, in order.
    np.testing.assert_array_equal(labels[mask == 1], synthetic_labels)


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path):
    a = train.train_and_evaluate(tiny_config(), str(tmp_path / "a"))
    b = train.train_and_evaluate(tiny_config(), str(tmp_path / "b"))
    assert read_metrics(tmp_path / "a")[0]["loss"] == read_metrics(tmp_path / "b")[0]["loss"]
    assert a["accuracy"] == b["accuracy"] and a["loss"] == b["loss"]
    c = train.train_and_evaluate(tiny_config(seed=1), str(tmp_path / "c"))
    assert c["loss"] != a["loss"]


@pytest.mark.slow
def test_rerun_resumes_and_matches_uninterrupted(tmp_path):
    full = train.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "split"))
    resumed = train.train_and_evaluate(tiny_config(), str(tmp_path / "split"))
    assert resumed == full


@pytest.mark.slow
def test_run_info_sums_the_wall_time_of_resumed_segments(tmp_path):
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path))
    first = json.loads((tmp_path / "run_info.json").read_text())
    train.train_and_evaluate(tiny_config(), str(tmp_path))
    info = json.loads((tmp_path / "run_info.json").read_text())
    one, two = info["segments"]
    assert (one["resumed_from_step"], one["last_step"]) == (None, 2)
    assert (two["resumed_from_step"], two["last_step"]) == (2, 4) == (info["resumed_from_step"], 4)
    assert one["train_wall_time_s"] == first["train_wall_time_s"] > 0
    assert info["train_wall_time_s"] == pytest.approx(
        one["train_wall_time_s"] + two["train_wall_time_s"]
    )
    assert info["train_wall_time_s"] > two["train_wall_time_s"] > 0
    # A fresh start (no checkpoint to resume from) forgets earlier segments.
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(tmp_path / "fresh"))
    assert len(json.loads((tmp_path / "fresh" / "run_info.json").read_text())["segments"]) == 1


@pytest.mark.slow
def test_profile_steps_writes_a_trace(tmp_path, capsys):
    train.train_and_evaluate(tiny_config(profile_steps=2), str(tmp_path))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"profile of steps 2-3 written to {tmp_path / 'profile'}" in capsys.readouterr().err


def test_due():
    assert [s for s in range(1, 11) if loop.due(s, 4, last=10)] == [4, 8, 10]
    assert [s for s in range(1, 4) if loop.due(s, 1, last=3)] == [1, 2, 3]


def test_unknown_ws_preset_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown ws_preset 'foo'; choose one of pytorch, "):
        train.train_and_evaluate(tiny_config(ws_preset="foo"), str(tmp_path))


def test_global_batch_not_divisible_by_devices(tmp_path):
    with pytest.raises(
        ConfigError, match="does not divide evenly over 8 devices; use a multiple of 8"
    ):
        train.train_and_evaluate(tiny_config(global_batch_size=12), str(tmp_path))


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        train.train_and_evaluate(
            tiny_config(dataset="cifar11", data_dir=str(tmp_path)), str(tmp_path / "w")
        )


def test_dataset_not_prepared_and_download_off(tmp_path):
    config = tiny_config(dataset="mnist", data_dir=str(tmp_path / "tfds"), download=False)
    with pytest.raises(
        data.DatasetUnavailableError,
        match=r"'mnist' is not prepared in .* and download=False: place t10k-images-idx3-ubyte.gz .*downloads/manual/",
    ):
        train.train_and_evaluate(config, str(tmp_path / "w"))


def test_dataset_offline_names_the_archive(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_check_reachable", lambda url, timeout_s=5.0: False)
    config = tiny_config(dataset="cifar10", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(
        data.DatasetUnavailableError, match=r"unreachable.*cifar-10-binary\.tar\.gz"
    ):
        train.train_and_evaluate(config, str(tmp_path / "w"))


@pytest.mark.slow
def test_end_to_end_mock_cifar10(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    # mock_data replaces downloading and preparing; only our offline pre-check has to be told.
    monkeypatch.setattr(data, "_check_reachable", lambda url, timeout_s=5.0: True)
    config = tiny_config(
        dataset="cifar10", data_dir=str(tmp_path / "tfds"), num_train_steps=2, eval_every_steps=2
    )
    with tfds.testing.mock_data(num_examples=96):
        result = train.train_and_evaluate(config, str(tmp_path / "w"))
    assert 0.0 <= result["accuracy"] <= 1.0
    test_line = [r for r in read_metrics(tmp_path / "w") if r["split"] == "test"][-1]
    assert test_line["step"] == 2


@pytest.mark.slow
@needs_fashion_mnist
def test_short_real_run_fashion_mnist(tmp_path):
    config = tiny_config(
        dataset="fashion_mnist",
        data_dir=str(SHARED_TFDS),
        model="vgg16_narrow",
        num_groups=8,
        global_batch_size=64,
        num_train_steps=40,
        eval_every_steps=40,
        crop_padding=2,
    )
    result = train.train_and_evaluate(config, str(tmp_path))
    # 40 Adam steps already separate the 10 classes far above chance (0.1) on all 10,000 test images.
    assert result["accuracy"] > 0.5
    assert read_metrics(tmp_path)[-1]["split"] == "test"
