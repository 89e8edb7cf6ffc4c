"""A dataset's splits as compressed NumPy files, so that training can run where TensorFlow is not installed.

The first load of a TFDS dataset (through TensorFlow) writes each split to
``CACHE/NAME/VERSION/SPLIT.npz``; later loads read those files with NumPy alone and never import TensorFlow
or TFDS. A cached split holds exactly what TFDS gave, in its order::

    images       (N, H, W, C) uint8
    labels       (N,) int32
    num_classes  () int64

``CACHE`` defaults to ``$XDG_CACHE_HOME/wsjax/datasets`` (``~/.cache/wsjax/datasets``); ``config.data_cache_dir``
moves it (a folder copied to a machine without TensorFlow, e.g. the GPU box) or, as ``""``, turns it off. The
files are plain arrays: nothing is unpickled. A folder holding ``train.npz`` and ``test.npz`` in this format
can also be named directly as the dataset (``config.dataset=/path/to/folder``).
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

SPLITS = ("train", "test")


def default_cache_dir() -> pathlib.Path:
    """``$XDG_CACHE_HOME/wsjax/datasets``, or ``~/.cache/wsjax/datasets``."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "wsjax" / "datasets"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """None: the default folder; ``""``: no cache (returns None); else the folder given."""
    if cache_dir is None:
        return default_cache_dir()
    if str(cache_dir) == "":
        return None
    return pathlib.Path(cache_dir).expanduser()


def split_name_and_version(name: str) -> tuple[str, str | None]:
    """``'fashion_mnist:3.0.1'`` -> ``('fashion_mnist', '3.0.1')``; no ``:`` -> ``(name, None)``."""
    base, _, version = name.partition(":")
    return base, version or None


def _version_key(version: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def find(cache_dir: pathlib.Path, name: str, version: str | None) -> pathlib.Path | None:
    """The folder that holds every split of ``name`` (at ``version``, else the newest cached), or None."""
    root = cache_dir / name
    if version is not None:
        candidates = [root / version]
    elif root.is_dir():
        candidates = sorted(
            (p for p in root.iterdir() if p.is_dir()),
            key=lambda p: _version_key(p.name),
            reverse=True,
        )
    else:
        candidates = []
    for folder in candidates:
        if is_complete(folder):
            return folder
    return None


def is_complete(folder: pathlib.Path) -> bool:
    """Whether ``folder`` holds a ``.npz`` file for every split."""
    return all((folder / f"{split}.npz").is_file() for split in SPLITS)


def save(
    path: pathlib.Path, images: np.ndarray, labels: np.ndarray, num_classes: int
) -> pathlib.Path:
    """Writes one split atomically (a partial file never has the final name, so readers never see one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as f:  # a file object: NumPy appends no second ".npz"
            np.savez_compressed(
                f,
                images=np.ascontiguousarray(images, np.uint8),
                labels=np.asarray(labels, np.int32),
                num_classes=np.int64(num_classes),
            )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def load_split(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """``(images (N, H, W, C) uint8, labels (N,) int32, num_classes or None)`` from one ``.npz`` file.

    Raises:
      ValueError: the file is not a split in the format above; the message names it.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
            num_classes = int(f["num_classes"]) if "num_classes" in f.files else None
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(
            f"{path} is not a dataset split (an .npz with 'images' (N, H, W[, C]) uint8 and 'labels' "
            f"(N,) integers): {e}"
        ) from e
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"{path}: 'images' must be uint8 (N, H, W[, C]), got {images.dtype} {images.shape}."
        )
    if (
        labels.ndim != 1
        or len(labels) != len(images)
        or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise ValueError(
            f"{path}: 'labels' must be {len(images)} integers, got {labels.dtype} {labels.shape}."
        )
    return images, labels.astype(np.int32), num_classes


def load_folder(
    folder: pathlib.Path,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, tuple[int, int, int]]:
    """Every split of a cache folder: ``({split: (images, labels)}, num_classes, image_shape)``."""
    splits, classes = {}, []
    for split in SPLITS:
        images, labels, num_classes = load_split(folder / f"{split}.npz")
        splits[split] = (images, labels)
        classes.append(num_classes if num_classes is not None else int(labels.max(initial=-1)) + 1)
    shapes = {split: images.shape[1:] for split, (images, _) in splits.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{folder}: the splits' images differ in shape: {shapes}.")
    return splits, max(classes), tuple(shapes["train"])


def write_split(
    cache_dir: pathlib.Path,
    name: str,
    version: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
) -> None:
    """Caches one split; a folder that cannot be written only costs a note (training goes on)."""
    path = cache_dir / name / version / f"{split}.npz"
    try:
        save(path, images, labels, num_classes)
    except OSError as e:
        print(
            f"note: could not write the NumPy cache {path} ({e.strerror or e}); set "
            f"config.data_cache_dir to a writable folder to train later without TensorFlow.",
            file=sys.stderr,
        )
        return
    if split == SPLITS[-1]:
        print(
            f"cached {name} {version} as NumPy in {path.parent}: later runs read it without TensorFlow.",
            file=sys.stderr,
        )
