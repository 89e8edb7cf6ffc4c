"""The official ImageNet ResNet / ResNeXt (GN+WS and BCN+WS) in NumPy float64, on PyTorch-named state dicts.

Written from the official code's equations and in its own layout (NCHW images, OIHW kernels), independently of
wsjax: a random state dict of the official names (:func:`state_dict`) and the network's forward pass in
evaluation mode (:func:`forward`). For the tests only.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spec:
    """An architecture of the official code: ``l_resnet*`` (base width 64, cardinality 1) or ``l_resnext*``."""

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    planes: tuple[int, ...] = (64, 128, 256, 512)
    stem: int = 64
    base_width: int = 64
    cardinality: int = 1
    num_classes: int = 1000
    groups: int = 32  # of GN, or of BCN's channel norm
    kind: str = (
        "gn"  # "gn": GN+WS (pytorch-classification); "bcn": BCN+WS (Batch-Channel-Normalization)
    )

    def blocks(self):
        """``(prefix, in_channels, width, out_channels, stride)`` of every bottleneck, in order."""
        inplanes = self.stem
        for s, (n, planes) in enumerate(zip(self.stage_sizes, self.planes, strict=True)):
            width = int(np.floor(planes * self.base_width / 64)) * self.cardinality
            for b in range(n):
                yield (
                    f"layer{s + 1}.{b}",
                    inplanes,
                    width,
                    4 * planes,
                    (2 if s > 0 and b == 0 else 1),
                )
                inplanes = 4 * planes


def _norm_shapes(name, c, spec):
    if spec.kind == "gn":  # nn.GroupNorm: per-channel affine
        return {f"{name}.weight": (c,), f"{name}.bias": (c,)}
    p = f"{name}.pbn"  # BCN: nn.BatchNorm2d "pbn" with running statistics, then a (1, G, 1) affine
    return {
        f"{name}.weight": (1, spec.groups, 1),
        f"{name}.bias": (1, spec.groups, 1),
        **{f"{p}.{leaf}": (c,) for leaf in ("weight", "bias", "running_mean", "running_var")},
        f"{p}.num_batches_tracked": (),
    }


def shapes(spec: Spec) -> dict[str, tuple[int, ...]]:
    """The official state dict's names and shapes, in its order, from the architecture."""
    out = {"conv1.weight": (spec.stem, 3, 7, 7), **_norm_shapes("bn1", spec.stem, spec)}
    for prefix, cin, width, cout, stride in spec.blocks():
        out[f"{prefix}.conv1.weight"] = (width, cin, 1, 1)
        out.update(_norm_shapes(f"{prefix}.bn1", width, spec))
        out[f"{prefix}.conv2.weight"] = (width, width // spec.cardinality, 3, 3)
        out.update(_norm_shapes(f"{prefix}.bn2", width, spec))
        out[f"{prefix}.conv3.weight"] = (cout, width, 1, 1)
        out.update(_norm_shapes(f"{prefix}.bn3", cout, spec))
        if stride != 1 or cin != cout:
            out[f"{prefix}.downsample.0.weight"] = (cout, cin, 1, 1)
            out.update(_norm_shapes(f"{prefix}.downsample.1", cout, spec))
    out["fc.weight"] = (spec.num_classes, 4 * spec.planes[-1])
    out["fc.bias"] = (spec.num_classes,)
    return out


def parameter_count(spec: Spec) -> int:
    """Parameters (not buffers) of the official network."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(np.prod(s)) for k, s in shapes(spec).items() if not k.endswith(buffers))


def state_dict(spec: Spec, seed: int = 0) -> dict[str, np.ndarray]:
    """A random float32 state dict of the official names and shapes.

    Conv weights have a nonzero mean (WS removes it) and a std of 0.01, norm scales sit around 1, running variances in
    [0.5, 1.5), and ``num_batches_tracked`` is an int64 scalar, as PyTorch saves it.
    """
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in shapes(spec).items():
        if name.endswith("num_batches_tracked"):
            sd[name] = np.array(1234, np.int64)
            continue
        if name.endswith("running_var"):
            value = 0.5 + rng.random(shape)
        elif name == "fc.weight":
            value = rng.standard_normal(shape) / np.sqrt(shape[1])
        elif len(shape) == 4:  # a trained kernel's scale, where the eps conventions differ by ~5%
            value = 0.01 * (0.1 + rng.standard_normal(shape))
        elif name.endswith("weight") and not name.startswith("fc"):
            value = 1 + 0.3 * rng.standard_normal(shape)
        else:
            value = 0.3 * rng.standard_normal(shape)
        sd[name] = value.astype(np.float32)
    return sd


def _standardize(w, kind):
    """GN+WS: (w - mean) / (std + 1e-5); BCN+WS: (w - mean) / sqrt(var + 1e-5); unbiased, per output channel."""
    flat = w.reshape(w.shape[0], -1)
    centred = flat - flat.mean(axis=1, keepdims=True)
    var = (centred**2).sum(axis=1, keepdims=True) / (flat.shape[1] - 1)
    denom = np.sqrt(var) + 1e-5 if kind == "gn" else np.sqrt(var + 1e-5)
    return (centred / denom).reshape(w.shape)


def conv2d(x, w, stride=1, padding=0, groups=1):
    """PyTorch's ``F.conv2d`` (NCHW, OIHW, symmetric zero padding), as a sum over kernel offsets."""
    n, c, h, wd = x.shape
    o, ig, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    og = o // groups
    for g in range(groups):
        xg, wg = xp[:, g * ig : (g + 1) * ig], w[g * og : (g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                y[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return y


def max_pool_3x3_s2_p1(x):
    """``nn.MaxPool2d(3, 2, padding=1)``: padding never wins a max."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
    windows = [xp[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def _group_standardize(x, groups):
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    return (
        (g - g.mean(axis=2, keepdims=True)) / np.sqrt(g.var(axis=2, keepdims=True) + 1e-5)
    ).reshape(x.shape)


def norm(x, sd, name, spec):
    """GN: ``nn.GroupNorm(G)``; BCN: eval-mode ``BatchNorm2d`` then group standardization, per-group affine."""
    if spec.kind == "gn":
        return (
            _group_standardize(x, spec.groups) * sd[f"{name}.weight"][:, None, None]
            + sd[f"{name}.bias"][:, None, None]
        )
    p = f"{name}.pbn"
    x = (x - sd[f"{p}.running_mean"][:, None, None]) / np.sqrt(
        sd[f"{p}.running_var"][:, None, None] + 1e-5
    )
    x = x * sd[f"{p}.weight"][:, None, None] + sd[f"{p}.bias"][:, None, None]
    n, c, h, w = x.shape
    z = _group_standardize(x, spec.groups).reshape(n, spec.groups, -1)
    return (z * sd[f"{name}.weight"] + sd[f"{name}.bias"]).reshape(x.shape)


def forward(sd, spec: Spec, x_nchw, avg_pool_window=None):
    """The official network's logits (evaluation mode) in float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    relu = lambda t: np.maximum(t, 0)  # noqa: E731

    def ws_conv(x, name, **kw):
        return conv2d(x, _standardize(sd[name], spec.kind), **kw)

    x = np.asarray(x_nchw, np.float64)
    x = relu(norm(ws_conv(x, "conv1.weight", stride=2, padding=3), sd, "bn1", spec))
    x = max_pool_3x3_s2_p1(x)
    for prefix, cin, _width, cout, stride in spec.blocks():
        y = relu(norm(ws_conv(x, f"{prefix}.conv1.weight"), sd, f"{prefix}.bn1", spec))
        y = ws_conv(y, f"{prefix}.conv2.weight", stride=stride, padding=1, groups=spec.cardinality)
        y = relu(norm(y, sd, f"{prefix}.bn2", spec))
        y = norm(ws_conv(y, f"{prefix}.conv3.weight"), sd, f"{prefix}.bn3", spec)
        if stride != 1 or cin != cout:
            x = norm(
                ws_conv(x, f"{prefix}.downsample.0.weight", stride=stride),
                sd,
                f"{prefix}.downsample.1",
                spec,
            )
        x = relu(x + y)
    if avg_pool_window is None:  # AdaptiveAvgPool2d(1)
        pooled = x.mean(axis=(2, 3))
    else:  # AvgPool2d(k): windows of k, stride k; the official head needs exactly one
        k = avg_pool_window
        assert (x.shape[2] - k) // k + 1 == 1 and (x.shape[3] - k) // k + 1 == 1
        pooled = x[:, :, :k, :k].mean(axis=(2, 3))
    return pooled @ sd["fc.weight"].T + sd["fc.bias"]
