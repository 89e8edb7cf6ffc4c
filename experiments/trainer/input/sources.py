"""Random-access sources of one split: TFDS ArrayRecord files, or arrays in memory (synthetic, NumPy cache).

grain samples records by index, so a source is anything with ``len`` and ``[i] -> {"image", "label"}``. TFDS
gives that for datasets prepared as ``array_record`` (``builder.as_data_source``); images are left encoded
there (``SkipDecoding``) and decoded by :class:`Decoded` in grain's reading threads, with PIL. Synthetic data,
a folder of ``.npz`` splits and the NumPy cache are served from memory by :class:`ArraySource` (the same
pipeline, on a machine without TensorFlow).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from experiments.trainer.input import data, data_cache, transforms

# Datasets that TFDS cannot download: the files to place in the manual folder (TFDS's own instructions).
MANUAL_FILES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}


class ArraySource:
    """Examples ``[i]`` of in-memory ``images (N, H, W, C) uint8`` and ``labels (N,)``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i]}

    def __repr__(self) -> str:  # grain records it in the iterator state
        return f"ArraySource({self.images.shape})"


class Decoded:
    """``source`` with its images decoded to ``(H, W, channels) uint8`` (in grain's reading threads)."""

    def __init__(self, source: Any, channels: int):
        self.source, self.channels = source, channels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        element = self.source[i]
        return {
            "image": transforms.decode(element["image"], self.channels),
            "label": np.int32(element["label"]),
            "index": np.int64(i),  # the example's position in the split (for the coverage test)
        }

    def __repr__(self) -> str:
        return f"Decoded({self.source!r})"


class Range:
    """Examples ``[start, stop)`` of ``source``, renumbered from 0."""

    def __init__(self, source: Any, start: int, stop: int):
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.source[self.start + i]

    def __repr__(self) -> str:
        return f"Range({self.source!r}, {self.start}, {self.stop})"


@dataclasses.dataclass(frozen=True)
class Sources:
    train: Any
    eval: Any
    num_classes: int
    channels: int
    shape: tuple[int, int, int] | None  # every image's shape, None where they differ (ImageNet)
    label: str  # where the data comes from, as data.Dataset.source


def open_builder(name: str, data_dir: str | None, download: bool):
    """A prepared TFDS builder of ``name``; for a manual-download dataset (ImageNet), one whose files are placed.

    Raises:
      data.DatasetUnavailableError: a manual dataset's files are missing (the message names them and where
        they go), or the cases of ``data._tfds_builder``.
    """
    base, _ = data_cache.split_name_and_version(name)
    if base in MANUAL_FILES:
        data._hide_gpus_from_tensorflow()
        import tensorflow_datasets as tfds

        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return builder
        root = pathlib.Path(builder.data_dir_root)
        manual = root / "downloads" / "manual"
        missing = [f for f in MANUAL_FILES[base] if not (manual / f).exists()]
        if missing:
            raise data.DatasetUnavailableError(
                f"dataset {name!r} is not prepared in {root} and cannot be downloaded: place "
                f"{' and '.join(missing)} (from image-net.org, after registering) in {manual}/ and rerun "
                f"(TFDS then prepares it once, as array_record), or copy a prepared {base}/ folder into "
                f"{root}, or point config.data_dir at one."
            )
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
        )
        return builder
    return data._tfds_builder(name, data_dir, download)


def _tfds_source(builder, split: str):
    import tensorflow_datasets as tfds

    try:
        return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError as e:  # prepared as tfrecord: no random access
        folder = pathlib.Path(builder.data_dir)
        raise data.DatasetUnavailableError(
            f"dataset {builder.name!r} at {folder} is prepared as {builder.info.file_format.value}, and "
            f"the streaming pipeline reads array_record: convert it once with `python -m "
            f"experiments.trainer.input.convert --source {folder} --out NEW_DATA_DIR` and set "
            f"config.data_dir=NEW_DATA_DIR, or use config.input_pipeline='memory'."
        ) from e


def open_sources(config) -> Sources:
    """The train and evaluation sources of ``config.dataset`` (see :func:`experiments.trainer.input.stream.open`)."""
    name, eval_split = config.dataset, config.eval_split
    in_memory = None
    if name == data.SYNTHETIC:
        shape = (32, 32, 3)
        in_memory = (
            {
                s: data._synthetic(s, 10, shape, n)
                for s, n in zip(("train", "test"), (2048, 512), strict=True)
            },
            10,
            shape,
            data.SYNTHETIC,
        )
    elif data_cache.is_complete(pathlib.Path(name)):
        whole, classes, shape = data_cache.load_folder(pathlib.Path(name))
        in_memory = (whole, classes, shape, f"npz:{name}")
    else:
        cache = data_cache.resolve_cache_dir(config.data_cache_dir)
        found = data_cache.find(cache, *data_cache.split_name_and_version(name)) if cache else None
        if found is not None:
            whole, classes, shape = data_cache.load_folder(found)
            in_memory = (whole, classes, shape, f"cache:{found}")
    if in_memory is not None:
        whole, classes, shape, label = in_memory
        if eval_split not in whole:
            raise ValueError(f"{label} has no {eval_split!r} split (it has {', '.join(whole)}).")
        arrays = {s: ArraySource(*whole[s]) for s in ("train", eval_split)}
        return Sources(arrays["train"], arrays[eval_split], classes, shape[-1], tuple(shape), label)
    builder = open_builder(name, config.data_dir, config.download)
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(f"dataset {name!r} has no 'image' and 'label' features.")
    shape = tuple(features["image"].shape)
    shape = (*shape, 1) if len(shape) == 2 else shape
    return Sources(
        _tfds_source(builder, "train"),
        _tfds_source(builder, eval_split),
        features["label"].num_classes,
        shape[-1],
        shape if None not in shape else None,
        "tfds:array_record",
    )
