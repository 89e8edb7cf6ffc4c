"""Host-side decoding and augmentation for the streaming pipeline, in NumPy and PIL (no TensorFlow, no JAX).

Each function takes one image ``(H, W, C) uint8`` and, where it is random, a ``numpy.random.Generator``: grain
hands every record its own generator, seeded from the run's seed and the record's position in the sampled
stream, so an example's augmentation does not depend on threads, workers or restarts.

- ``pad_crop_flip``: the CIFAR / Fashion-MNIST recipe of the memory path (``experiments/trainer/input/augment.py``): zero-pad
  each side by ``p``, crop back to the original size at offsets uniform in ``[0, 2p]``, mirror with probability
  1/2. Same distribution; not the same draws (the memory path draws on the device from JAX keys).
- ``inception_crop``: Inception-style random-resized crop (Szegedy et al. 2015, torchvision's
  ``RandomResizedCrop``): a window of area fraction ``s ~ U(0.08, 1)`` and aspect ratio
  ``r = exp(U(log 3/4, log 4/3))``, ``w = sqrt(s A r)``, ``h = sqrt(s A / r)``, placed uniformly; ten tries,
  then the largest centred window within the ratio range; resized to ``size x size`` (bilinear).
- ``center_crop``: evaluation: resize the shorter side to ``round(size / 0.875)`` (256 for 224) and take the
  central ``size x size``.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# Shorter side before the central crop at evaluation: 224 / 0.875 = 256, the ResNet papers' setting.
CENTER_CROP_FRACTION = 0.875
SCALE = (0.08, 1.0)  # area fraction of the random-resized crop
RATIO = (3 / 4, 4 / 3)  # its aspect-ratio range


def decode(image: bytes | np.ndarray, channels: int) -> np.ndarray:
    """An encoded (PNG, JPEG) or decoded image as ``(H, W, channels) uint8``."""
    if isinstance(image, np.ndarray) and image.dtype != object:
        array = image
    else:
        with Image.open(io.BytesIO(bytes(image))) as pil:
            mode = "L" if channels == 1 else "RGB"  # CMYK and grey JPEGs exist in ImageNet
            array = np.asarray(pil.convert(mode) if pil.mode != mode else pil)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] != channels:
        raise ValueError(f"image has {array.shape[-1]} channels, expected {channels}")
    return array


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors left-right with probability 1/2."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def pad_crop_flip(
    image: np.ndarray, rng: np.random.Generator, padding: int, mirror: bool
) -> np.ndarray:
    """Zero-pads each side by ``padding``, crops back at a random offset, then maybe mirrors.

    The crop at offset ``(top, left)`` of the padded image is the image shifted by ``(top - p, left - p)``
    with zeros where it leaves the image: copied directly, without building the padded array.
    """
    if padding > 0:
        h, w = image.shape[:2]
        dy, dx = (int(v) - padding for v in rng.integers(0, 2 * padding + 1, size=2))
        out = np.zeros_like(image)
        out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = image[
            max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]
        image = out
    return np.ascontiguousarray(flip(image, rng) if mirror else image)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out


def crop_window(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of an Inception-style random crop (see the module docstring)."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the whole image, cut to the ratio range, centred.
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif ratio > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def inception_crop(
    image: np.ndarray, rng: np.random.Generator, size: int, mirror: bool = True
) -> np.ndarray:
    """A random-resized crop to ``size x size``, then maybe a mirror (training)."""
    top, left, h, w = crop_window(image.shape[0], image.shape[1], rng)
    out = _resize(image[top : top + h, left : left + w], size, size)
    return np.ascontiguousarray(flip(out, rng) if mirror else out)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Shorter side resized to ``round(size / 0.875)``, then the central ``size x size`` (evaluation)."""
    height, width = image.shape[:2]
    short = round(size / CENTER_CROP_FRACTION)
    scale = short / min(height, width)
    h, w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = _resize(image, h, w)
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])
