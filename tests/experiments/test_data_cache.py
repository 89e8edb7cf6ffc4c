"""TensorFlow-free data: the NumPy cache equals what TFDS gives, and training reads it without TensorFlow."""

import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.trainer.input import data, data_cache
from tests.helpers import REPO, SHARED_TFDS, cli_env, needs_fashion_mnist

# A prelude that makes `import tensorflow` / `import tensorflow_datasets` fail, as on a machine without them.
NO_TENSORFLOW = (
    "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None); "
    "import runpy; sys.argv[0] = 'experiments.train'; "
    "runpy.run_module('experiments.train', run_name='__main__', alter_sys=True)"
)


def _mesh(devices: int = 8) -> Mesh:
    return Mesh(np.array(jax.devices()[:devices]), ("batch",))


def _arrays(dataset: data.Dataset) -> dict[str, np.ndarray]:
    return {
        f"{split}.{field}": np.asarray(getattr(getattr(dataset, split), field))
        for split in ("train", "test")
        for field in ("images", "labels", "mask")
    }


def _assert_same(a: data.Dataset, b: data.Dataset) -> None:
    assert (a.num_classes, a.image_shape) == (b.num_classes, b.image_shape)
    assert (a.train.num_examples, a.test.num_examples) == (
        b.train.num_examples,
        b.test.num_examples,
    )
    got, want = _arrays(a), _arrays(b)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_save_then_load_split_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    path = data_cache.save(tmp_path / "a" / "train.npz", images, labels, 10)
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.npz"]  # no partial file left
    got_images, got_labels, num_classes = data_cache.load_split(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_labels.dtype == np.int32 and num_classes == 10


def test_bad_split_file_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "train.npz", images=np.zeros((3, 4, 4), np.float32), labels=np.zeros(3))
    with pytest.raises(ValueError, match="'images' must be uint8"):
        data_cache.load_split(tmp_path / "train.npz")
    (tmp_path / "test.npz").write_text("not an npz")
    with pytest.raises(ValueError, match="is not a dataset split"):
        data_cache.load_split(tmp_path / "test.npz")


def test_newest_complete_version_is_found(tmp_path):
    one = np.zeros((2, 3, 3, 1), np.uint8), np.zeros(2)
    for version, splits in [
        ("1.0.0", ("train", "test")),
        ("10.0.0", ("train", "test")),
        ("11.0.0", ("train",)),
    ]:
        for split in splits:
            data_cache.save(tmp_path / "ds" / version / f"{split}.npz", *one, 2)
    assert data_cache.find(tmp_path, "ds", None) == tmp_path / "ds" / "10.0.0"  # 11 lacks test
    assert data_cache.find(tmp_path, "ds", "1.0.0") == tmp_path / "ds" / "1.0.0"
    assert data_cache.find(tmp_path, "ds", "2.0.0") is None
    assert data_cache.find(tmp_path, "other", None) is None


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_cache.resolve_cache_dir(None) == tmp_path / "wsjax" / "datasets"
    assert data_cache.resolve_cache_dir("") is None
    assert data_cache.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"


def test_npz_folder_as_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 13)):
        np.savez(
            tmp_path / f"{split}.npz",
            images=rng.integers(0, 256, (n, 6, 6), dtype=np.uint8),  # no channel axis: one is added
            labels=rng.integers(0, 3, n),
        )
    dataset = data.load(str(tmp_path), _mesh(), cache_dir="")
    assert dataset.image_shape == (6, 6, 1) and dataset.num_classes == 3
    assert dataset.test.num_examples == 13 and dataset.train.num_examples == 40
    labels, mask = np.asarray(dataset.test.labels), np.asarray(dataset.test.mask)
    np.testing.assert_array_equal(labels[mask == 1], np.load(tmp_path / "test.npz")["labels"])


@pytest.mark.slow
def test_mocked_tfds_then_cache_identical(tmp_path, monkeypatch):
    """First load through (mocked) TFDS writes the cache; the second reads it, TFDS unused: same arrays."""
    tfds = pytest.importorskip("tensorflow_datasets")

    monkeypatch.setattr(data, "_check_reachable", lambda url, timeout_s=5.0: True)
    cache = tmp_path / "cache"
    kwargs = dict(data_dir=str(tmp_path / "tfds"), test_pad_multiple=4, cache_dir=str(cache))
    with tfds.testing.mock_data(num_examples=50):
        from_tfds = data.load("cifar10", _mesh(), **kwargs)
    assert from_tfds.source == "tfds"
    folder = data_cache.find(cache, "cifar10", None)
    assert folder is not None and folder.name == "3.0.2"

    def no_tfds(*args, **kwargs):
        raise AssertionError("TFDS was used although the cache was there")

    monkeypatch.setattr(data, "_tfds_builder", no_tfds)
    from_cache = data.load("cifar10", _mesh(), **kwargs)
    assert from_cache.source == f"cache:{folder}"
    _assert_same(from_cache, from_tfds)
    # Several hosts read slices; one host with 4 devices and 2 replicas each: the same shards as 8 devices.
    _assert_same(data.load("cifar10:3.0.2", _mesh(4), replicas_per_device=2, **kwargs), from_tfds)


@pytest.mark.slow
def test_mocked_data_never_enters_the_default_cache(tmp_path, monkeypatch):
    """Mocked TFDS data is not on disk: with the default cache folder nothing is written."""
    tfds = pytest.importorskip("tensorflow_datasets")

    monkeypatch.setattr(data, "_check_reachable", lambda url, timeout_s=5.0: True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with tfds.testing.mock_data(num_examples=20):
        data.load("cifar10", _mesh(), data_dir=str(tmp_path / "tfds"))
    assert not (
        tmp_path / "xdg" / "wsjax"
    ).exists()  # (matplotlib, which TFDS imports, caches there)
    with tfds.testing.mock_data(num_examples=20):
        assert not data._prepared_on_disk(tfds.builder("cifar10", data_dir=str(tmp_path / "tfds")))


@pytest.mark.slow
@needs_fashion_mnist
def test_real_fashion_mnist_cache_is_bit_identical(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cache = tmp_path / "cache"
    from_tfds = data.load("fashion_mnist", _mesh(), str(SHARED_TFDS), cache_dir=str(cache))
    assert sorted(p.name for p in (cache / "fashion_mnist" / "3.0.1").iterdir()) == [
        "test.npz",
        "train.npz",
    ]
    from_cache = data.load("fashion_mnist", _mesh(), "/nonexistent", cache_dir=str(cache))
    assert from_cache.source.startswith("cache:")
    _assert_same(from_cache, from_tfds)
    assert (from_cache.train.num_examples, from_cache.test.num_examples) == (60_000, 10_000)
    # Real files: the default (per-user) cache folder would take them too.
    assert data._prepared_on_disk(tfds.builder("fashion_mnist", data_dir=str(SHARED_TFDS)))


def test_tensorflow_gets_no_gpu(monkeypatch):
    """Before TFDS runs, TensorFlow is told to see no GPU (a GPU build would reserve the JAX GPU's memory)."""
    calls = []
    fake = types.SimpleNamespace(
        config=types.SimpleNamespace(set_visible_devices=lambda d, kind: calls.append((d, kind)))
    )
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    data._hide_gpus_from_tensorflow()
    assert calls == [([], "GPU")]


def test_tensorflow_already_started_is_a_note(monkeypatch, capsys):
    def refuse(devices, kind):
        raise RuntimeError("Visible devices cannot be modified after being initialized")

    fake = types.SimpleNamespace(config=types.SimpleNamespace(set_visible_devices=refuse))
    monkeypatch.setitem(sys.modules, "tensorflow", fake)
    data._hide_gpus_from_tensorflow()
    assert "TensorFlow had already started" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # not installed: nothing to do
    data._hide_gpus_from_tensorflow()


def test_tfds_path_hides_gpus_before_building(monkeypatch, tmp_path):
    order = []

    class Stop(Exception):
        pass

    def builder(name, data_dir):
        order.append("builder")
        raise Stop

    registered = types.SimpleNamespace(DatasetNotFoundError=LookupError)
    fake_tfds = types.SimpleNamespace(
        builder=builder, core=types.SimpleNamespace(registered=registered)
    )
    monkeypatch.setattr(data, "_hide_gpus_from_tensorflow", lambda: order.append("hide"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake_tfds)
    with pytest.raises(Stop):
        data._tfds_builder("mnist", str(tmp_path), download=False)
    assert order == ["hide", "builder"]


@pytest.mark.slow
def test_training_runs_where_tensorflow_cannot_be_imported(tmp_path):
    """A CLI run in a process where `import tensorflow(_datasets)` fails trains from the cache."""
    rng = np.random.default_rng(0)
    cache = tmp_path / "cache"
    for split, n in (("train", 64), ("test", 20)):
        images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
        data_cache.save(
            cache / "fashion_mnist" / "3.0.1" / f"{split}.npz", images, rng.integers(0, 10, n), 10
        )
    args = [
        "--config=experiments/configs/default.py",
        "--config.dataset=fashion_mnist",
        "--config.data_dir=/nonexistent",
        f"--config.data_cache_dir={cache}",
        "--config.model=vgg_tiny",
        "--config.num_groups=4",
        "--config.global_batch_size=16",
        "--config.num_train_steps=2",
        "--config.eval_batch_size=20",
        "--config.progress_bar=False",
        f"--workdir={tmp_path / 'w'}",
    ]
    env = cli_env(1)
    done = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final test accuracy" in done.stdout
    info = json.loads((tmp_path / "w" / "run_info.json").read_text())
    assert info["final_step"] == 2
    # The prelude really blocks TensorFlow: without a cache the same command stops with a one-line error.
    blocked = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TENSORFLOW,
            *args[:-1],
            f"--workdir={tmp_path / 'x'}",
            f"--config.data_cache_dir={tmp_path / 'empty'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert blocked.returncode == 1
    assert "error: dataset 'fashion_mnist' is not in the NumPy cache" in blocked.stderr
    assert "TensorFlow Datasets cannot be imported" in blocked.stderr


def test_data_module_does_not_import_tensorflow():
    code = (
        "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None); "
        "import experiments.trainer.input.data, experiments.trainer.input.data_cache, experiments.train"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert pathlib.Path(data_cache.__file__).parent == REPO / "experiments" / "trainer" / "input"
