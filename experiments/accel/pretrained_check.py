"""Part ``pretrained``: our loaded ResNetV2 against timm's own network, logits on the same images.

timm's ``resnetv2_50x1_bit`` (``pretrained=False``: random weights, every GroupNorm's scale and shift
perturbed so that their mapping counts; eval mode) runs on the CPU in float32 and in float64, so that its
logits carry no TF32. Its state dict goes through ``wsjax.pretrained.from_timm`` and our network runs on the
accelerator at matmul precision ``highest``. Then the same weights under big_transfer's names (the mapping
below, written from timm's ``_load_weights``, independent of wsjax's) through ``from_bit``, against timm's
network with its ``StdConv2d`` eps set to BiT's 1e-10 (big_transfer's ``bit_pytorch`` equations). Each
comparison records the max abs difference and its ratio to the logits' scale (issue 13: <= 1e-4).

torch runs on the CPU only, before JAX starts, so the two never share the accelerator's memory. Where torch
or timm is missing (CI), the part records why and succeeds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from experiments.accel.context import PartContext

MODEL = "resnetv2_50x1_bit"
GPU_IMAGES, TINY_IMAGES = (8, 224), (2, 64)  # (batch, side)
GOAL = 1e-4  # max abs difference / max abs logit


def _timm_logits(images: np.ndarray, seed: int = 0) -> tuple[dict[str, np.ndarray], dict]:
    """timm's model: its state dict (NumPy) and logits at eps 1e-8 (its own) and 1e-10 (BiT's)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # GN: ones and zeros at init would hide a swapped scale/shift
                p.add_(0.2 * torch.randn_like(p))
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        out["eps_1e-8_float32"] = model(x).numpy()
        out["eps_1e-8_float64"] = model.double()(x.double()).numpy()
        for m in model.modules():
            if type(m).__name__ == "StdConv2d":
                m.eps = 1e-10
        out["eps_1e-10_float64"] = model(x.double()).numpy()
    return state, out


def timm_to_bit(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """timm's resnetv2_*_bit names and layouts to a BiT .npz's (the inverse of timm's ``_load_weights``)."""
    hwio = lambda w: w.transpose(2, 3, 1, 0)
    out = {}
    for name, w in state.items():
        if name == "stem.conv.weight":
            out["resnet/root_block/standardized_conv2d/kernel"] = hwio(w)
        elif name.startswith("norm."):
            out[f"resnet/group_norm/{'gamma' if name.endswith('weight') else 'beta'}"] = w
        elif name == "head.fc.weight":
            out["resnet/head/conv2d/kernel"] = hwio(w)
        elif name == "head.fc.bias":
            out["resnet/head/conv2d/bias"] = w
        else:  # stages.S.blocks.B.<layer>.<leaf>
            _, stage, _, block, *layer, leaf = name.split(".")
            prefix = f"resnet/block{int(stage) + 1}/unit{int(block) + 1:02d}"
            if layer == ["downsample", "conv"]:
                out[f"{prefix}/a/proj/standardized_conv2d/kernel"] = hwio(w)
                continue
            letter = "abc"[int(layer[0][-1]) - 1]
            if layer[0].startswith("conv"):
                out[f"{prefix}/{letter}/standardized_conv2d/kernel"] = hwio(w)
            else:
                out[f"{prefix}/{letter}/group_norm/{'gamma' if leaf == 'weight' else 'beta'}"] = w
    return out


def _compare(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    scale = float(np.abs(theirs).max())
    return {
        "max_abs_diff": diff,
        "logits_scale": scale,
        "relative": diff / scale,
        "within_goal": diff <= GOAL * scale,
    }


def run(ctx: PartContext) -> None:
    try:
        import timm
        import torch
    except ImportError as e:
        ctx.record("skipped", f"torch or timm not importable: {e}")
        return
    batch, side = TINY_IMAGES if ctx.tiny else GPU_IMAGES
    images = np.random.default_rng(0).uniform(-1, 1, (batch, side, side, 3)).astype(np.float32)
    started = time.perf_counter()
    state, theirs = _timm_logits(images)
    ctx.record(
        "setup",
        {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "model": MODEL,
            "images": [batch, side, side, 3],
            "torch_device": "cpu",
            "torch_s": time.perf_counter() - started,
        },
    )
    ctx.record(
        "timm_float32_vs_float64",
        _compare(theirs["eps_1e-8_float32"], theirs["eps_1e-8_float64"]),
    )
    ctx.record(
        "timm_eps_1e-8_vs_1e-10",
        _compare(theirs["eps_1e-8_float64"], theirs["eps_1e-10_float64"]),
    )

    import jax

    from wsjax.pretrained import from_bit, from_timm

    def logits(model, variables) -> np.ndarray:
        with jax.default_matmul_precision("highest"):
            return np.asarray(
                jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
            )

    ctx.record("jax_device", str(jax.devices()[0].device_kind))
    model, variables = from_timm(state, MODEL)
    ours = logits(model, variables)
    ctx.record(
        "from_timm",
        {
            "vs_timm_float32": _compare(ours, theirs["eps_1e-8_float32"]),
            "vs_timm_float64": _compare(ours, theirs["eps_1e-8_float64"]),
        },
    )
    if ctx.time_left() < 20:
        ctx.record("from_bit_skipped", "out of time")
        return
    model, variables = from_bit(timm_to_bit(state))
    ctx.record(
        "from_bit",
        {
            "vs_timm_eps_1e-10_float64": _compare(
                logits(model, variables), theirs["eps_1e-10_float64"]
            )
        },
    )


def summarize(results: dict[str, Any]) -> str:
    """One line for the suite's table."""
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    parts = [f"from_timm {results['from_timm']['vs_timm_float64']['relative']:.1e}"]
    if "from_bit" in results:
        parts.append(f"from_bit {results['from_bit']['vs_timm_eps_1e-10_float64']['relative']:.1e}")
    return " · ".join(parts) + " of the logits' scale (vs timm in float64)"
