"""Image-classification data held in device memory, one shard per replica (see ``steps.py``).

Datasets of the CIFAR / Fashion-MNIST size fit in memory many times over, so each device keeps its replicas'
shards of the training split as uint8 and draws the batches there, inside the jitted step: no host work per
step, and the data order is a pure function of (seed, step, replica), which makes resumption exact.

Replica ``d`` of ``D`` (device-major: device ``i`` holds replicas ``i*r`` to ``i*r + r - 1``) owns examples
``[d * (N // D), (d + 1) * (N // D))`` of the split (the last ``N mod D`` training examples are unused; test
examples are never dropped: the test split is padded and masked). A process loads only the slice that its own
devices own.

Real datasets come from TFDS the first time and from a NumPy copy of each split afterwards
(``data_cache.py``): once cached, a dataset loads without TensorFlow, e.g. on a GPU machine that has none.
"""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import sys
import urllib.parse
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common.mesh import AXIS
from experiments.trainer.input import data_cache

SYNTHETIC = "synthetic"


class DatasetUnavailableError(RuntimeError):
    """The dataset is neither prepared locally nor downloadable; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class ShardedSplit:
    """One split, on device: ``images (D, per_replica, H, W, C) uint8``, ``labels``/``mask (D, per_replica)``.

    ``D`` is the number of replicas (devices × replicas per device); axis 0 is sharded over the devices.
    """

    images: jax.Array
    labels: jax.Array
    mask: jax.Array  # 1 for a real example, 0 for padding
    num_examples: int  # real examples across all replicas

    @property
    def per_replica(self) -> int:
        return self.images.shape[1]


@dataclasses.dataclass(frozen=True)
class Dataset:
    train: ShardedSplit
    test: ShardedSplit
    num_classes: int
    image_shape: tuple[int, int, int]
    source: str = ""  # "synthetic", "tfds", "cache:FOLDER" or "npz:FOLDER" (NumPy files read)


def _shard_ranges(num_examples: int, num_shards: int, pad: bool) -> list[tuple[int, int]]:
    if pad:  # every example is used: shards of ceil(N / D), the last ones shorter (then padded)
        size = -(-num_examples // num_shards)
        return [
            (min(d * size, num_examples), min((d + 1) * size, num_examples))
            for d in range(num_shards)
        ]
    size = num_examples // num_shards
    return [(d * size, (d + 1) * size) for d in range(num_shards)]


def _local_device_slice(mesh: Mesh) -> tuple[int, int]:
    """The contiguous range of global device positions that belong to this process."""
    positions = [
        i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()
    ]
    if positions != list(range(positions[0], positions[-1] + 1)):
        raise ValueError("this process's devices are not contiguous in the mesh")
    return positions[0], positions[-1] + 1


def _check_reachable(url: str, timeout_s: float = 5.0) -> bool:
    parsed = urllib.parse.urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _hide_gpus_from_tensorflow() -> None:
    """Tells TensorFlow (which TFDS reads through) to use no GPU, before it starts.

    A GPU build of TensorFlow (Colab's) otherwise reserves most of each GPU's memory when it starts, and JAX
    then finds too little. TFDS only reads files here, which needs no GPU. Where TensorFlow has already
    started (the notebook used it before), it can no longer be told: a note says so.
    """
    try:
        import tensorflow as tf
    except ImportError:
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError) as e:
        print(
            f"note: TensorFlow had already started and may hold GPU memory that JAX needs ({e}); "
            f"restart the process and load data before using TensorFlow.",
            file=sys.stderr,
        )


def _tfds_builder(name: str, data_dir: str | None, download: bool):
    _hide_gpus_from_tensorflow()
    import tensorflow_datasets as tfds  # heavy: imported only when a real dataset is asked for

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"unknown dataset {name!r}: not a TFDS dataset name (e.g. cifar10, cifar100, mnist, "
            f"fashion_mnist, svhn_cropped) nor {SYNTHETIC!r}."
        ) from e
    if builder.is_prepared():
        return builder
    root = builder.data_dir_root
    manual_dir = (
        root / "downloads" / "manual"
    )  # TFDS's default manual dir: archives there are used as is
    archives = {
        url: info.filename or url.rsplit("/", 1)[-1]
        for url, info in (builder.url_infos or {}).items()
    }
    missing = {url: name for url, name in archives.items() if not (manual_dir / name).exists()}
    if download and archives and not missing:
        builder.download_and_prepare()  # offline, from the archives placed by hand
        return builder
    needed = (
        "; ".join(f"{name} (from {url})" for url, name in sorted(missing.items()))
        or "its source files"
    )
    fix = (
        f"place {needed} in {manual_dir}/ and rerun, or copy a TFDS-prepared {name}/ folder (from "
        f"`tfds build {name}` elsewhere) into {root}, or point config.data_dir at one"
    )
    if not download:
        raise DatasetUnavailableError(
            f"dataset {name!r} is not prepared in {root} and download=False: {fix}."
        )
    probe = next(iter(sorted(missing)), "https://storage.googleapis.com")
    if not _check_reachable(probe):
        raise DatasetUnavailableError(
            f"dataset {name!r} is not prepared in {root} and {urllib.parse.urlparse(probe).hostname} is "
            f"unreachable (offline?): {fix}."
        )
    builder.download_and_prepare()
    return builder


def _load_numpy(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A split as ``(images (N, H, W, C) uint8, labels (N,) int32)``, in the dataset's own order."""
    import tensorflow_datasets as tfds

    # Fixed-size batches, not batch_size=-1: TFDS's mock data generator aborts on one unbounded batch.
    batches = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False).batch(8192))
    images, labels = [], []
    for batch in batches:
        images.append(batch["image"])
        labels.append(batch["label"])
    images = np.concatenate(images)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.uint8), np.concatenate(labels).astype(np.int32)


def _synthetic(split: str, num_classes: int, shape: tuple[int, int, int], num_examples: int):
    """Learnable random data: each class is a fixed random image plus noise."""
    rng = np.random.default_rng(0 if split == "train" else 1)
    prototypes = np.random.default_rng(42).integers(0, 256, size=(num_classes, *shape))
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    noise = rng.normal(0, 40, size=(num_examples, *shape))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels


def _place(
    mesh: Mesh,
    images: np.ndarray,
    labels: np.ndarray,
    local_ranges: list[tuple[int, int]],
    pad_to: int,
    num_examples: int,
    num_shards: int,
) -> ShardedSplit:
    """Stacks this process's replica shards (each padded to ``pad_to``) into global device arrays.

    ``images``/``labels`` hold examples ``local_ranges[0][0]`` to ``local_ranges[-1][1]`` of the split.
    """
    offset = local_ranges[0][0]
    local_images, local_labels, local_mask = [], [], []
    for start, stop in local_ranges:
        n = stop - start
        padded_images = np.zeros((pad_to, *images.shape[1:]), np.uint8)
        padded_images[:n] = images[start - offset : stop - offset]
        padded_labels = np.zeros((pad_to,), np.int32)
        padded_labels[:n] = labels[start - offset : stop - offset]
        local_images.append(padded_images)
        local_labels.append(padded_labels)
        local_mask.append((np.arange(pad_to) < n).astype(np.float32))
    sharding = NamedSharding(mesh, P(AXIS))

    def global_array(local: list[np.ndarray]) -> jax.Array:
        stacked = np.stack(local)
        return jax.make_array_from_process_local_data(
            sharding, stacked, (num_shards, *stacked.shape[1:])
        )

    return ShardedSplit(
        global_array(local_images),
        global_array(local_labels),
        global_array(local_mask),
        num_examples,
    )


@dataclasses.dataclass(frozen=True)
class _Source:
    """Where a dataset's splits come from: arrays already in memory (``whole``), or TFDS slices (``builder``)."""

    num_classes: int
    image_shape: tuple[int, int, int]
    label: str  # becomes Dataset.source
    whole: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    builder: Any = None


def _prepared_on_disk(builder) -> bool:
    """Whether TFDS read real files. Mocked data (tests) has none, and must never enter the shared cache."""
    from etils import epath  # a TFDS dependency, present wherever a builder is

    folder = epath.Path(builder.data_dir)
    return (folder / "dataset_info.json").exists() and any(folder.glob(f"{builder.name}-*"))


def _open(
    name: str,
    data_dir: str | None,
    download: bool,
    cache_dir: str | None,
    synthetic_shape: tuple[int, int, int],
    synthetic_examples: tuple[int, int],
) -> _Source:
    if name == SYNTHETIC:
        whole = {
            split: _synthetic(split, 10, synthetic_shape, n)
            for split, n in zip(data_cache.SPLITS, synthetic_examples, strict=True)
        }
        return _Source(10, synthetic_shape, SYNTHETIC, whole)
    if data_cache.is_complete(pathlib.Path(name)):  # a folder of .npz splits, named directly
        whole, num_classes, image_shape = data_cache.load_folder(pathlib.Path(name))
        return _Source(num_classes, image_shape, f"npz:{name}", whole)
    cache = data_cache.resolve_cache_dir(cache_dir)
    base, version = data_cache.split_name_and_version(name)
    folder = data_cache.find(cache, base, version) if cache is not None else None
    if folder is not None:  # NumPy alone: TensorFlow is never imported
        whole, num_classes, image_shape = data_cache.load_folder(folder)
        return _Source(num_classes, image_shape, f"cache:{folder}", whole)
    try:
        builder = _tfds_builder(name, data_dir, download)
    except ImportError as e:
        where = f"at {cache}" if cache is not None else "(turned off: data_cache_dir='')"
        raise DatasetUnavailableError(
            f"dataset {name!r} is not in the NumPy cache {where} and TensorFlow Datasets cannot be "
            f"imported ({e}): install tensorflow-datasets, or copy a cache made where it is installed "
            f"(CACHE/{base}/VERSION/{{train,test}}.npz) here and set config.data_cache_dir=CACHE."
        ) from e
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"dataset {name!r} has no 'image' and 'label' features; it is not image classification."
        )
    num_classes = features["label"].num_classes
    image_shape = tuple(features["image"].shape)
    if len(image_shape) == 2:
        image_shape = (*image_shape, 1)
    if jax.process_count() > 1:  # several hosts: each reads only the examples its own devices hold
        return _Source(num_classes, image_shape, "tfds", builder=builder)
    whole = {split: _load_numpy(builder, split) for split in data_cache.SPLITS}
    # The default folder is shared by every run of this user: only real files go there.
    if cache is not None and (cache_dir is not None or _prepared_on_disk(builder)):
        for split, (images, labels) in whole.items():
            data_cache.write_split(
                cache, base, str(builder.version), split, images, labels, num_classes
            )
    return _Source(num_classes, image_shape, "tfds", whole)


def write_cache(
    name: str, data_dir: str | None, cache_dir: str, download: bool = True
) -> pathlib.Path:
    """Makes sure ``cache_dir`` holds ``name``'s NumPy cache (reading it through TFDS once); returns its folder.

    For a machine without TensorFlow: make the cache here, copy the folder there, and point
    ``config.data_cache_dir`` at it.
    """
    _open(name, data_dir, download, cache_dir, (32, 32, 3), (0, 0))
    folder = data_cache.find(pathlib.Path(cache_dir), *data_cache.split_name_and_version(name))
    if folder is None:
        raise DatasetUnavailableError(f"dataset {name!r} could not be cached in {cache_dir}.")
    return folder


def load(
    name: str,
    mesh: Mesh,
    data_dir: str | None = None,
    download: bool = True,
    synthetic_shape: tuple[int, int, int] = (32, 32, 3),
    synthetic_examples: tuple[int, int] = (2048, 512),
    test_pad_multiple: int = 1,
    replicas_per_device: int = 1,
    cache_dir: str | None = None,
) -> Dataset:
    """Loads ``name`` (a TFDS image-classification dataset, or ``'synthetic'``) into device memory.

    A TFDS dataset is read from its NumPy cache when one is there (no TensorFlow), else through TFDS, which
    then writes the cache (see ``data_cache.py``). Both give the same arrays in the same order.

    Args:
      name: TFDS name (``'fashion_mnist'``, or pinned: ``'fashion_mnist:3.0.1'``), ``'synthetic'``, or a folder
        holding ``train.npz`` and ``test.npz`` in the cache's format.
      mesh: the 1-D device mesh; its devices' order defines the shards.
      data_dir: TFDS data dir (None: TFDS's default, ~/tensorflow_datasets).
      download: whether to download and prepare a dataset that is not prepared yet.
      synthetic_shape: image shape of the synthetic dataset.
      synthetic_examples: (train, test) sizes of the synthetic dataset.
      test_pad_multiple: each replica's test shard is padded to a multiple of this (its eval batch).
      replicas_per_device: shards per device (one per replica).
      cache_dir: the NumPy cache's folder (None: ``~/.cache/wsjax/datasets``; ``''``: no cache).

    Raises:
      ValueError: an unknown dataset name, or a cache file that is not a dataset split.
      DatasetUnavailableError: not cached, and not prepared and not downloadable (or TFDS missing); the
        message says what to place where.
    """
    num_shards = mesh.devices.size * replicas_per_device
    lo, hi = (i * replicas_per_device for i in _local_device_slice(mesh))
    source = _open(name, data_dir, download, cache_dir, synthetic_shape, synthetic_examples)
    splits = {}
    for split in data_cache.SPLITS:
        if source.whole is not None:
            size = len(source.whole[split][1])
        else:
            size = source.builder.info.splits[split].num_examples
        ranges = _shard_ranges(size, num_shards, pad=split == "test")
        if ranges[0][1] - ranges[0][0] == 0:
            raise ValueError(
                f"the {split} split of {name!r} has fewer examples than there are replicas"
            )
        start, stop = ranges[lo][0], ranges[hi - 1][1]
        if source.whole is not None:
            images, labels = (a[start:stop] for a in source.whole[split])
        else:  # several hosts: each reads only the examples its own devices hold
            images, labels = _load_numpy(source.builder, f"{split}[{start}:{stop}]")
        used = ranges[-1][1]  # training drops the last N mod D examples; test keeps all
        pad_to = ranges[0][1] - ranges[0][0]
        if split == "test":  # whole evaluation batches, the padding masked out
            pad_to = -(-pad_to // test_pad_multiple) * test_pad_multiple
        splits[split] = _place(mesh, images, labels, ranges[lo:hi], pad_to, used, num_shards)
    return Dataset(
        splits["train"], splits["test"], source.num_classes, source.image_shape, source.label
    )
