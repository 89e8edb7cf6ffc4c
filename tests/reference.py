"""Independent NumPy (float64) references written from the papers' equations, for the tests only."""

from __future__ import annotations

import numpy as np


def standardize(w, eps=1e-5, ddof=1, eps_outside_sqrt=False):
    """Per output channel (last axis): (w - mean) / sqrt(var + eps), or / (std + eps)."""
    w = np.asarray(w, np.float64)
    flat = w.reshape(-1, w.shape[-1])  # (fan_in, out)
    mean = flat.mean(axis=0)
    var = ((flat - mean) ** 2).sum(axis=0) / (flat.shape[0] - ddof)
    denom = np.sqrt(var) + eps if eps_outside_sqrt else np.sqrt(var + eps)
    return ((flat - mean) / denom).reshape(w.shape)


def scaled_standardize(w, gain, eps=1e-4):
    """NFNets: gain * (w - mean) / sqrt(max(var * fan_in, eps)), biased variance."""
    w = np.asarray(w, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    fan_in = flat.shape[0]
    mean = flat.mean(axis=0)
    var = flat.var(axis=0)
    return (
        np.asarray(gain, np.float64) * (flat - mean) / np.sqrt(np.maximum(var * fan_in, eps))
    ).reshape(w.shape)


def scaled_standardize_timm(w, gain, eps=1e-6):
    """timm's ScaledStdConv2d: gain * fan_in**-0.5 * (w - mean) / sqrt(var + eps), biased variance."""
    w = np.asarray(w, np.float64)
    flat = w.reshape(-1, w.shape[-1])
    fan_in = flat.shape[0]
    mean = flat.mean(axis=0)
    var = flat.var(axis=0)
    return (
        np.asarray(gain, np.float64) * fan_in**-0.5 * (flat - mean) / np.sqrt(var + eps)
    ).reshape(w.shape)


def estimated_batch_norm(
    x, state, scale, bias, momentum=0.9, eps=1e-5, train=True, variance_around="batch_mean"
):
    """Channels-last EBN: update running (mean, var) from the batch, then normalize with them.

    The variance fed to the running one is the batch's biased variance (labml, ``"batch_mean"``) or the
    batch's mean square around the old running mean (the official EstBN, ``"running_mean"``).
    """
    x = np.asarray(x, np.float64)
    mean, var = (np.asarray(s, np.float64) for s in state)
    if train:
        axes = tuple(range(x.ndim - 1))
        centre = x.mean(axis=axes) if variance_around == "batch_mean" else mean
        batch_var = ((x - centre) ** 2).mean(axis=axes)
        mean = momentum * mean + (1 - momentum) * x.mean(axis=axes)
        var = momentum * var + (1 - momentum) * batch_var
    y = (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias)
    return y, (mean, var)


def batch_norm(x, state, scale, bias, momentum=0.9, eps=1e-5, train=True):
    """Ordinary batch norm (Flax convention: running var from the biased batch variance)."""
    x = np.asarray(x, np.float64)
    mean, var = (np.asarray(s, np.float64) for s in state)
    if not train:
        return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(bias), (mean, var)
    axes = tuple(range(x.ndim - 1))
    bm, bv = x.mean(axis=axes), x.var(axis=axes)
    y = (x - bm) / np.sqrt(bv + eps) * np.asarray(scale) + np.asarray(bias)
    return y, (momentum * mean + (1 - momentum) * bm, momentum * var + (1 - momentum) * bv)


def channel_norm(x, groups, scale, bias, eps=1e-5):
    """Group norm over (spatial, channels-of-group) per sample, then per-group scale and shift."""
    x = np.asarray(x, np.float64)
    n, c = x.shape[0], x.shape[-1]
    g = x.reshape(n, -1, groups, c // groups)  # (N, spatial, G, C/G)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    y = (g - mean) / np.sqrt(var + eps)
    y = y * np.asarray(scale)[None, None, :, None] + np.asarray(bias)[None, None, :, None]
    return y.reshape(x.shape)


def conv_channels_last(x, w, padding):
    """Cross-correlation, stride 1: ``y[n, p, o] = Σ_{q, c} x_pad[n, p + q, c] w[q, c, o]`` (float64).

    ``x (N, *spatial, C)``, ``w (*kernel, C, O)``, ``padding`` one (low, high) pair per spatial axis (negative
    crops). Written from the definition, one output position at a time.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    spatial = x.ndim - 2
    pads = [(0, 0)] + [(max(lo, 0), max(hi, 0)) for lo, hi in padding] + [(0, 0)]
    crop = tuple(
        slice(max(-lo, 0), x.shape[1 + d] + max(lo, 0) + max(hi, 0) - max(-hi, 0))
        for d, (lo, hi) in enumerate(padding)
    )
    xp = np.pad(x, pads)[(slice(None), *crop)]
    kernel = w.shape[:spatial]
    out_shape = [xp.shape[1 + d] - kernel[d] + 1 for d in range(spatial)]
    y = np.zeros((x.shape[0], *out_shape, w.shape[-1]))
    for p in np.ndindex(*out_shape):
        window = xp[(slice(None), *(slice(i, i + k) for i, k in zip(p, kernel, strict=True)))]
        y[(slice(None), *p)] = np.tensordot(
            window, w, axes=(list(range(1, spatial + 2)), list(range(spatial + 1)))
        )
    return y
