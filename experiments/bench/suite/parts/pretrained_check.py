"""Part ``pretrained``: our loaded ResNetV2 against timm's own network, logits on the same images.

timm's ``resnetv2_50x1_bit`` (``pretrained=False``: random weights, every GroupNorm's scale and shift
perturbed so that their mapping counts; eval mode) runs on the CPU in float32 and in float64, so that its
logits carry no TF32. Twice: with timm's initial kernels, and with every kernel scaled by 1e-3 (variances
~1e-9, as WS is scale-free but for its eps), where eps 1e-8 and 1e-10 give clearly different logits, so
that the check tells the conventions apart. Its state dict goes through ``wsjax.pretrained.from_timm`` and our network runs on the
accelerator at matmul precision ``highest``. Then the same weights under big_transfer's names (the mapping
below, written from timm's ``_load_weights``, independent of wsjax's) through ``from_bit``, against timm's
network with its ``StdConv2d`` eps set to BiT's 1e-10 (big_transfer's ``bit_pytorch`` equations). Each
comparison records the max abs difference and its ratio to the logits' scale (the goal: <= 1e-4).

torch runs on the CPU only, before JAX starts, so the two never share the accelerator's memory. Where torch
or timm is missing (CI), the part records why and succeeds.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from experiments.bench.suite.context import PartContext

MODEL = "resnetv2_50x1_bit"
GPU_IMAGES, TINY_IMAGES = (4, 224), (2, 64)  # (batch, side)
GOAL = 1e-4  # max abs difference / max abs logit


KERNEL_SCALES = {"timm_init": 1.0, "kernels_x1e-3": 1e-3}


def _timm_logits(
    images: np.ndarray, kernel_scale: float, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict]:
    """timm's model: its state dict (NumPy) and logits at eps 1e-8 (its own) and 1e-10 (BiT's)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, pretrained=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # GN: ones and zeros at init would hide a swapped scale/shift
                p.add_(0.2 * torch.randn_like(p))
            elif p.ndim == 4 and not name.startswith("head"):
                p.mul_(kernel_scale)
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


def _compare(ours: np.ndarray, theirs: np.ndarray, goal: bool = True) -> dict[str, Any]:
    """Max abs difference, the logits' scale (max abs of ``theirs``), their ratio; against GOAL if ``goal``."""
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    scale = float(np.abs(theirs).max())
    out = {"max_abs_diff": diff, "logits_scale": scale, "relative": diff / scale}
    return {**out, "within_goal": diff <= GOAL * scale} if goal else out


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
    cases = {}
    for case, scale in KERNEL_SCALES.items():  # torch first: JAX has not started yet
        cases[case] = _timm_logits(images, scale)
    ctx.record(
        "setup",
        {
            "torch": torch.__version__,
            "timm": timm.__version__,
            "model": MODEL,
            "images": [batch, side, side, 3],
            "kernel_scales": KERNEL_SCALES,
            "torch_device": "cpu",
            "torch_s": time.perf_counter() - started,
        },
    )

    import jax

    from wsjax.pretrained import from_bit, from_timm

    ctx.record("jax_device", str(jax.devices()[0].device_kind))
    compiled: dict[str, Any] = {}

    def logits(kind: str, model, variables) -> np.ndarray:
        if kind not in compiled:  # one compilation per model: the cases differ only in values
            compiled[kind] = jax.jit(functools.partial(model.apply, train=False))
        with jax.default_matmul_precision("highest"):
            return np.asarray(compiled[kind](variables, images))

    for case, (state, theirs) in cases.items():
        result = {
            "timm_float32_vs_float64": _compare(
                theirs["eps_1e-8_float32"], theirs["eps_1e-8_float64"], goal=False
            ),
            "timm_eps_1e-8_vs_1e-10": _compare(
                theirs["eps_1e-8_float64"], theirs["eps_1e-10_float64"], goal=False
            ),
        }
        ours = logits("timm", *from_timm(state, MODEL))
        result["from_timm_vs_timm_float32"] = _compare(ours, theirs["eps_1e-8_float32"])
        result["from_timm_vs_timm_float64"] = _compare(ours, theirs["eps_1e-8_float64"])
        ctx.record(case, result)
        if ctx.time_left() < 20:
            ctx.append("not_measured", f"from_bit, {case}: out of time")
            continue
        ours = logits("bit", *from_bit(timm_to_bit(state)))
        result["from_bit_vs_timm_eps_1e-10_float64"] = _compare(ours, theirs["eps_1e-10_float64"])
        ctx.record(case, result)


def summarize(results: dict[str, Any]) -> str:
    """One line for the suite's table: each case's differences against timm in float64."""
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    parts = []
    for case in KERNEL_SCALES:
        r = results[case]
        line = f"{case}: from_timm {r['from_timm_vs_timm_float64']['relative']:.1e}"
        if "from_bit_vs_timm_eps_1e-10_float64" in r:
            line += f", from_bit {r['from_bit_vs_timm_eps_1e-10_float64']['relative']:.1e}"
        parts.append(line + f" (eps 1e-8 vs 1e-10: {r['timm_eps_1e-8_vs_1e-10']['relative']:.1e})")
    return " · ".join(parts) + " of the logits' scale, vs timm in float64"
