"""BiT's ResNetV2 in NumPy float64, written from its equations (independently of wsjax), and test inputs.

``resnetv2_reference`` is the forward pass of a Flax ``ResNetV2`` parameter tree; ``random_params`` gives every
parameter a random value; ``logits_of`` the model's compiled logits. For the tests only.
"""

import functools

import jax
import numpy as np

from tests import reference


def random_params(model, x, kernel_std=None, seed=0):
    """Every parameter random (GN scale around 1, a non-zero head): init alone would hide mistakes."""
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
    leaves, tree = jax.tree.flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        if "'scale'" in name:
            value = 1 + 0.2 * rng.standard_normal(leaf.shape)
        elif "'bias'" in name:
            value = 0.2 * rng.standard_normal(leaf.shape)
        else:
            std = np.prod(leaf.shape[:-1]) ** -0.5
            if kernel_std == "spread":  # per output channel, variances from 1e-11 to 1e-7
                std = 10 ** rng.uniform(-5.5, -3.5, leaf.shape[-1])
            value = std * rng.standard_normal(leaf.shape) + 0.3 * std  # a mean for WS to remove
        out.append(np.asarray(value, np.float32))
    return jax.tree.unflatten(tree, out)


# ---- the reference: BiT's equations in float64 NumPy ----------------------------------------------


def standardized(w, eps, ddof):
    return reference.standardize(w, eps=eps, ddof=ddof)


def strided_conv(x, w, stride, pad, eps, ddof):
    """Standardized cross-correlation: ``y[n, p, o] = Σ_{q, c} x_pad[n, stride·p + q, c] ŵ[q, c, o]``."""
    w = standardized(w, eps, ddof)
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


def resnetv2_reference(params, x, groups, eps=1e-10, ddof=0, pool_pad=0.0):
    """BiT's ResNetV2 forward (big_transfer ``bit_jax/models.py``'s equations), float64."""
    relu = functools.partial(np.maximum, 0.0)
    conv = functools.partial(strided_conv, eps=eps, ddof=ddof)
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


def logits_of(model, params, x):
    """The model's logits, compiled (eager dispatch of every op is far slower on a loaded CPU)."""
    return np.asarray(jax.jit(functools.partial(model.apply, train=False))({"params": params}, x))
