"""Independent NumPy (float64) references written from the papers' equations, for the tests only."""

from __future__ import annotations

import functools

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


# BiT's ResNetV2, forward in NumPy from BiT's equations.


def bit_standardize(w, eps, ddof):
    return standardize(w, eps=eps, ddof=ddof)


def bit_conv(x, w, stride, pad, eps, ddof):
    """Standardized cross-correlation: ``y[n, p, o] = Σ_{q, c} x_pad[n, stride·p + q, c] ŵ[q, c, o]``."""
    w = bit_standardize(w, eps, ddof)
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho, wo = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
    for i in range(kh):  # one kernel tap at a time
        for j in range(kw):
            y += x[:, i : i + stride * ho : stride, j : j + stride * wo : stride] @ w[i, j]
    return y


def group_norm(x, p, groups, eps=1e-5):
    if groups is None:  # a network without norms
        return x
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    return y * np.asarray(p["scale"], np.float64) + np.asarray(p["bias"], np.float64)


def max_pool_3x3_s2(x, pad_value):
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=pad_value)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2])
    return out


def resnetv2(params, x, groups, eps=1e-10, ddof=0, pool_pad=0.0):
    """BiT's ResNetV2 forward (big_transfer ``bit_jax/models.py``'s equations), float64."""
    relu = functools.partial(np.maximum, 0.0)
    conv = functools.partial(bit_conv, eps=eps, ddof=ddof)
    x = conv(np.asarray(x, np.float64), params["root_conv"]["kernel"], 2, 3)
    x = max_pool_3x3_s2(x, pool_pad)
    units = sorted(k for k in params if k.startswith("block"))
    for name in units:
        p = params[name]
        stride = 2 if name.endswith("unit01") and not name.startswith("block1_") else 1
        a = relu(group_norm(x, p.get("gn1"), groups))
        shortcut = conv(a, p["conv_proj"]["kernel"], stride, 0) if "conv_proj" in p else x
        y = conv(a, p["conv1"]["kernel"], 1, 0)
        y = conv(relu(group_norm(y, p.get("gn2"), groups)), p["conv2"]["kernel"], stride, 1)
        y = conv(relu(group_norm(y, p.get("gn3"), groups)), p["conv3"]["kernel"], 1, 0)
        x = y + shortcut
    x = relu(group_norm(x, params.get("norm_pre_head"), groups)).mean(axis=(1, 2))
    head = params["head"]
    return x @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64)


# ---- tests -------------------------------------------------------------------------------------
