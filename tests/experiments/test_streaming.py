"""The streaming input pipeline (experiments/trainer/input/): host transforms, evaluation coverage across processes,
the automatic choice, ImageNet's missing-files message, and real and mocked training through it."""

import io
import types

import jax
import numpy as np
import pytest

pytest.importorskip("grain", reason="the streaming pipeline needs grain (Python >= 3.11)")
from PIL import Image

from experiments import train
from experiments.common.errors import ConfigError
from experiments.configs import imagenet
from experiments.trainer.input import choice, data, sources, stream, transforms
from experiments.trainer.metrics import read_metrics
from tests.helpers import SHARED_TFDS, needs_fashion_mnist, tiny_config


def test_pad_crop_flip_keeps_the_size_and_shifts_within_the_padding():
    image = np.arange(5 * 6 * 1, dtype=np.uint8).reshape(5, 6, 1) + 1
    rng = np.random.default_rng(0)
    seen_flip = set()
    for _ in range(40):
        out = transforms.pad_crop_flip(image, rng, padding=2, mirror=True)
        assert out.shape == image.shape and out.dtype == np.uint8
        # Every non-zero pixel is an original one, shifted by at most 2 (zeros came from the padding).
        assert set(np.unique(out)) <= set(np.unique(image)) | {0}
        seen_flip.add(bool(np.any(np.diff(out[2, :, 0].astype(int)) < 0)))
    assert seen_flip == {True, False}  # both orientations occur
    same = transforms.pad_crop_flip(image, np.random.default_rng(0), padding=0, mirror=False)
    np.testing.assert_array_equal(same, image)
    # Exactly torchvision's RandomCrop(padding=p): the padded image cropped at the drawn offsets.
    for seed in range(30):
        out = transforms.pad_crop_flip(image, np.random.default_rng(seed), padding=3, mirror=False)
        top, left = np.random.default_rng(seed).integers(0, 7, size=2)
        padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))
        np.testing.assert_array_equal(out, padded[top : top + 5, left : left + 6])


def test_inception_crop_window_and_output():
    rng = np.random.default_rng(1)
    for _ in range(200):
        top, left, h, w = transforms.crop_window(375, 500, rng)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        area = h * w / (375 * 500)
        assert 0.07 <= area <= 1.0 and 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
    image = np.random.default_rng(2).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    assert transforms.inception_crop(image, rng, 64).shape == (64, 64, 3)
    # A thin image fails the ten tries: the fallback is the centred window of the extreme ratio.
    assert transforms.crop_window(10, 1000, np.random.default_rng(0))[2:] == (10, 13)


def test_center_crop_takes_the_middle_after_resizing_the_short_side():
    image = np.zeros((375, 500, 3), np.uint8)
    image[:, 250:] = 255  # right half white
    out = transforms.center_crop(image, 224)
    assert out.shape == (224, 224, 3)
    # Short side 375 -> 256, long side 500 -> 341: the centre crop holds the edge at its middle.
    assert out[:, :100].max() == 0 and out[:, 124:].min() == 255


def test_decode_png_and_jpeg():
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    np.testing.assert_array_equal(transforms.decode(png.getvalue(), 3), image)
    grey = io.BytesIO()
    Image.fromarray(image[..., 0]).save(grey, format="JPEG")
    assert transforms.decode(grey.getvalue(), 3).shape == (7, 9, 3)  # grey JPEG made RGB
    assert transforms.decode(grey.getvalue(), 1).shape == (7, 9, 1)


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_evaluation_covers_every_example_once_across_processes(processes):
    n, per_process = 37, 4
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1).repeat(2, 1).repeat(2, 2)
    source = sources.Decoded(sources.ArraySource(images, np.arange(n) % 5), 1)
    augmentation = stream.Augmentation("pad_crop", 0, False, None)
    seen, counts = [], []
    for p in range(processes):
        batches = list(
            stream.eval_host_batches(source, p, processes, per_process, augmentation, (2, 2, 1))
        )
        counts.append(len(batches))
        for b in batches:
            real = b["mask"] == 1
            assert b["image"].shape == (per_process, 2, 2, 1)
            np.testing.assert_array_equal(b["index"][~real], -1)
            np.testing.assert_array_equal(b["image"][real][:, 0, 0, 0], b["index"][real])
            np.testing.assert_array_equal(b["label"][real], b["index"][real] % 5)
            seen.extend(b["index"][real].tolist())
    assert sorted(seen) == list(range(n))  # every example exactly once
    assert len(set(counts)) == 1  # every process enters every evaluation step
    assert counts[0] == stream.num_eval_batches(n, processes, per_process)


def test_auto_choice_by_decoded_size():
    def info(shape, examples):
        return types.SimpleNamespace(
            features={"image": types.SimpleNamespace(shape=shape)},
            splits={"train": types.SimpleNamespace(num_examples=examples)},
        )

    assert choice.decoded_bytes(info((28, 28, 1), 60000)) == 60000 * 784
    assert choice.decoded_bytes(info((None, None, 3), 1281167)) is None
    unrecorded = types.SimpleNamespace(features=info((4, 4, 1), 1).features, splits={})
    assert choice.decoded_bytes(unrecorded) == 0
    big = choice.MEMORY_LIMIT_BYTES // (32 * 32 * 3) + 1
    assert choice.decoded_bytes(info((32, 32, 3), big)) > choice.MEMORY_LIMIT_BYTES
    assert choice.resolve(tiny_config(input_pipeline="auto")) == "memory"  # synthetic
    assert choice.resolve(tiny_config(input_pipeline="stream")) == "stream"
    with pytest.raises(ValueError, match="unknown input_pipeline 'disk'; choose one of memory"):
        choice.resolve(tiny_config(input_pipeline="disk"))


def test_imagenet_without_its_files_names_them_and_the_folder(tmp_path):
    config = imagenet.recipe("resnet18", "gn", "8")
    config.data_dir = str(tmp_path)
    with pytest.raises(
        data.DatasetUnavailableError,
        match=r"ILSVRC2012_img_train\.tar and ILSVRC2012_img_val\.tar .* in .*/downloads/manual/",
    ):
        train.train_and_evaluate(config, str(tmp_path / "w"))


def test_imagenet_recipe():
    config = imagenet.recipe("resnet50", "bcn", "8")
    assert (config.global_batch_size, config.replicas_per_device) == (256, 32)  # 1 image/replica
    assert (config.learning_rate, config.momentum, config.weight_decay) == (0.1, 0.9, 1e-4)
    assert (config.num_epochs, tuple(config.decay_epochs), config.schedule) == (
        90,
        (30, 60),
        "steps",
    )
    assert config.eval_split == "validation" and config.input_pipeline == "stream"
    with pytest.raises(ValueError, match="must divide the global batch"):
        imagenet.recipe("resnet50", "gn", "3")


@pytest.mark.slow
def test_imagenet_config_trains_and_evaluates_on_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    config = imagenet.recipe("resnet18", "bcn", "8")
    # Tiny overrides: a small model on 32x32 crops, 16 replicas of one image, 2 steps.
    config.update(
        model="vgg_tiny",
        num_groups=4,
        image_size=32,
        global_batch_size=16,
        replicas_per_device=2,
        num_train_steps=2,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        eval_batch_size=16,
        log_every_steps=1,
        data_dir=str(tmp_path / "tfds"),
    )
    manual = tmp_path / "tfds" / "downloads" / "manual"
    manual.mkdir(parents=True)
    for name in sources.MANUAL_FILES["imagenet2012"]:  # placed: the run prepares (mocked here)
        (manual / name).write_bytes(b"")
    with tfds.testing.mock_data(num_examples=40, data_dir=str(tmp_path / "tfds")):
        result = train.train_and_evaluate(config, str(tmp_path / "w"))
    assert 0.0 <= result["accuracy"] <= result["top5_accuracy"] <= 1.0
    test_line = [r for r in read_metrics(tmp_path / "w") if r["split"] == "test"][-1]
    assert test_line["step"] == 2 and "top5_accuracy" in test_line
    assert (tmp_path / "w" / "input_positions" / "2" / "process_0.json").exists()


@pytest.mark.slow
def test_memory_checkpoint_is_not_resumed_as_a_stream(tmp_path):
    train.train_and_evaluate(tiny_config(num_train_steps=2, input_pipeline="memory"), str(tmp_path))
    with pytest.raises(
        ConfigError, match="checkpoint 2 has no streaming input position .* new --workdir"
    ):
        train.train_and_evaluate(tiny_config(input_pipeline="stream"), str(tmp_path))


@pytest.mark.slow
def test_grain_worker_processes_train_reproducibly_and_resume_only_with_their_count(tmp_path):
    """``input_workers > 0`` (grain's worker processes, here outside the command line): the same parameters
    from a rerun; its batches depend on the worker count (grain batches within each worker), so a resume
    with another count is refused with the fix."""
    from tests.helpers import read_checkpoint

    args = dict(input_pipeline="stream", num_train_steps=4, checkpoint_every_steps=2)
    for name, workers in (("a", 2), ("b", 2), ("inline", 0)):
        train.train_and_evaluate(tiny_config(**args, input_workers=workers), str(tmp_path / name))
    a, b, inline = (read_checkpoint(tmp_path / name, 4) for name in ("a", "b", "inline"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.array_equal(x, y)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(inline), strict=True)
    )  # other batches: if this starts to fail, grain keeps the order across worker counts (good news)
    longer = tiny_config(**{**args, "num_train_steps": 6}, input_workers=0)
    with pytest.raises(
        ConfigError, match="saved with input_workers=2, not 0: .* --config.input_workers=2"
    ):
        train.train_and_evaluate(longer, str(tmp_path / "a"))


@pytest.fixture(scope="module")
def fashion_mnist_array_record(tmp_path_factory):
    from experiments.trainer.input import convert

    out = tmp_path_factory.mktemp("tfds_array_record")
    convert.convert(SHARED_TFDS / "fashion_mnist" / "3.0.1", out)
    return out


@pytest.mark.slow
@needs_fashion_mnist
def test_stream_matches_memory_on_fashion_mnist(tmp_path, fashion_mnist_array_record):
    common = dict(
        dataset="fashion_mnist",
        model="vgg_tiny",
        num_groups=4,
        global_batch_size=64,
        num_train_steps=60,
        learning_rate=3e-3,
        eval_every_steps=60,
        checkpoint_every_steps=60,
        eval_batch_size=1000,
        crop_padding=2,
        data_cache_dir="",
    )
    memory = train.train_and_evaluate(
        tiny_config(**common, input_pipeline="memory", data_dir=str(SHARED_TFDS)),
        str(tmp_path / "memory"),
    )
    streamed = train.train_and_evaluate(
        tiny_config(**common, input_pipeline="stream", data_dir=str(fashion_mnist_array_record)),
        str(tmp_path / "stream"),
    )
    # Same model, budget and data; other draws of order and augmentation. 60 steps reached 0.76 (memory)
    # and 0.74 (streamed) on all 10,000 test images when this was written: the bound is 4x that gap.
    assert memory["accuracy"] > 0.6 and streamed["accuracy"] > 0.6
    assert abs(memory["accuracy"] - streamed["accuracy"]) < 0.08, (memory, streamed)
