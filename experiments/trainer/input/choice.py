"""``config.input_pipeline``: ``memory`` (data on the devices), ``stream`` (host pipeline), or ``auto``.

``auto`` streams a dataset whose decoded training split would not fit comfortably in memory:
more than :data:`MEMORY_LIMIT_BYTES` of uint8 pixels (from TFDS's ``dataset_info``: examples x image shape),
or images of varying size (ImageNet; the memory path stacks equal-sized images). The memory path holds the
whole split on the host while loading it and each replica's shard on its device, so the limit is set well
below a host's memory and a device's. Synthetic data, ``.npz`` folders and the NumPy cache are memory-sized
by construction and stay in memory, without TensorFlow.
"""

from __future__ import annotations

import math
import pathlib

from experiments.common.errors import unknown
from experiments.trainer.input import data, data_cache

PIPELINES = ("memory", "stream", "auto")
# config.augmentation: pad_crop (both pipelines) | inception (stream only); see transforms.py.
AUGMENTATIONS = ("pad_crop", "inception")
# The one threshold: 4 GiB of decoded training pixels (CIFAR-10: 0.15 GB, Fashion-MNIST: 0.05 GB).
MEMORY_LIMIT_BYTES = 4 * 2**30


def decoded_bytes(info, split: str = "train") -> int | None:
    """uint8 bytes of ``split``'s decoded images: None when the image shape varies, 0 when the split's size
    is not recorded (nothing says it is large: the memory path, as before this choice existed)."""
    shape = info.features["image"].shape
    if None in shape:
        return None
    if split not in info.splits:
        return 0
    return info.splits[split].num_examples * math.prod(shape)


def resolve(config) -> str:
    """``memory`` or ``stream`` for ``config`` (see the module docstring).

    Raises:
      ConfigError: an unknown ``input_pipeline``.
    """
    mode = config.input_pipeline
    if mode not in PIPELINES:
        raise unknown("input_pipeline", mode, PIPELINES)
    if mode != "auto":
        return mode
    name = config.dataset
    if name == data.SYNTHETIC or data_cache.is_complete(pathlib.Path(name)):
        return "memory"
    cache = data_cache.resolve_cache_dir(config.data_cache_dir)
    if cache is not None and data_cache.find(cache, *data_cache.split_name_and_version(name)):
        return "memory"
    from experiments.trainer.input import sources

    try:
        builder = sources.open_builder(name, config.data_dir, config.download)
    except ImportError:  # no TFDS here: the memory path says what to do (the NumPy cache)
        return "memory"
    size = decoded_bytes(builder.info)
    return "stream" if size is None or size > MEMORY_LIMIT_BYTES else "memory"
