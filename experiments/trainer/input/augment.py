"""On-device augmentation and input normalization, traced into the jitted train step."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Zero-pads each side by ``padding`` and crops back to the original size at a random offset
    (torchvision ``RandomCrop(size, padding)``). ``images (N, H, W, C)``."""
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def normalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 → float32 ``(x / 255 - mean) / std``; one value broadcasts to every channel."""
    channels = images.shape[-1]
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), (channels,)).reshape(1, 1, 1, channels)
    std = jnp.broadcast_to(jnp.asarray(std, jnp.float32), (channels,)).reshape(1, 1, 1, channels)
    return (images.astype(jnp.float32) / 255.0 - mean) / std


def augment(key: jax.Array, images: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
    """Random crop then random horizontal flip, as in the reference CIFAR-10 recipe."""
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(crop_key, images, crop_padding)
    return random_flip(flip_key, images) if flip else images
