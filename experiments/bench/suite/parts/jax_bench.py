"""Part ``bench``: VGG16 WS+BCN on one accelerator: precision probe, bf16 batch curve with MFU, WS overhead.

In this order, each recorded as soon as it is measured:

1. *Precision probe*: a float32 matmul and convolution at ``jax_default_matmul_precision`` default / high /
   highest and in bfloat16: TFLOP/s, and relative error against float64 (matmul) or against 'highest' (conv).
   It shows which arithmetic 'default' really is (TF32 on recent NVIDIA GPUs), so MFU divides by the right
   peak (``bench/peaks.py``), and gives the matrix units' ceiling measured on random data.
2. *bf16 batch curve*: the training step (WSConv ``apply_to='auto'``, BCN, Adam) at per-device batch 64 ... 2048
   in bfloat16: images/s, XLA cost-analysis FLOP/s and MFU (goal: >= 50% at the best batch).
3. *WS overhead* in bfloat16 at batch 2 and 64: WSConv / nn.Conv, same step, timed in turns (goals: <= 1.10
   at batch 2, <= 1.02 at >= 64).
4. *float32* (TF32 at default precision) steps at batch 2, 64 and 256, against PyTorch's float32 eager.

Steps 2-4 are interleaved by :data:`GPU_PLAN`, so that the part's budget cuts the least wanted.
"""

from __future__ import annotations

import time
from typing import Any

from experiments.bench.suite.context import PartContext

# (measurement, per-device batch), most wanted first: compiling VGG16 for each new batch size takes seconds
# on a GPU, and the part's budget may end the list early. Batch 64 of the bf16 curve is ws_overhead's 'ws'.
GPU_PLAN = [
    ("bf16_curve", 256),
    ("ws_overhead_bf16", 64),
    ("ws_overhead_bf16", 2),
    ("bf16_curve", 1024),
    ("float32_steps", 64),
    ("bf16_curve", 2048),
    ("bf16_curve", 512),
    ("bf16_curve", 128),
    ("float32_steps", 256),
    ("float32_steps", 2),
]
TINY_PLAN = [("bf16_curve", 4), ("ws_overhead_bf16", 2), ("float32_steps", 4)]
MIN_SECONDS = 20  # a measurement is not started with less time than this left


def _timed_median(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())  # compile, warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        samples.append(time.perf_counter() - start)
    return sorted(samples)[len(samples) // 2]


def _relative_error(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def precision_probe(tiny: bool) -> dict[str, Any]:
    """Matmul (n^3) and 3x3 convolution rates and errors per precision setting, on random data."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    n = 256 if tiny else 8192
    ka, kb, kx, kw = jax.random.split(jax.random.key(0), 4)
    a, b = jax.random.normal(ka, (n, n)), jax.random.normal(kb, (n, n))
    rows = 64 if tiny else 256  # float64 reference on the host for these rows only
    exact = np.asarray(a[:rows], np.float64) @ np.asarray(b, np.float64)
    x_shape = (8, 8, 8, 32) if tiny else (256, 32, 32, 256)
    x = jax.random.normal(kx, x_shape)
    w = jax.random.normal(kw, (3, 3, x_shape[-1], x_shape[-1])) / (3 * x_shape[-1] ** 0.5)
    conv_flops = 2 * np.prod(x_shape) * 9 * x_shape[-1]

    def conv(x, w):
        return lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def bf16(t):
        return t.astype(jnp.bfloat16)

    def bf16_matmul(a, b):
        return jnp.matmul(bf16(a), bf16(b), preferred_element_type=jnp.float32)

    def bf16_conv(x, w):
        return conv(bf16(x), bf16(w)).astype(jnp.float32)

    # setting -> (matmul, convolution, jax_default_matmul_precision); 'highest' first: the conv reference.
    kernels = {
        "highest": (jnp.matmul, conv, "highest"),
        "high": (jnp.matmul, conv, "high"),
        "default": (jnp.matmul, conv, "default"),
        "bfloat16_inputs": (bf16_matmul, bf16_conv, "default"),
    }
    results: dict[str, Any] = {"matmul_n": n, "conv_input": list(x_shape)}
    conv_reference = None
    for setting, (matmul, convolution, precision) in kernels.items():
        mm, cv = jax.jit(matmul), jax.jit(convolution)
        with jax.default_matmul_precision(precision):
            t_mm = _timed_median(lambda mm=mm: mm(a, b), 3 if tiny else 10)
            t_cv = _timed_median(lambda cv=cv: cv(x, w), 3 if tiny else 10)
            out_mm, out_cv = mm(a, b), cv(x, w)
        if conv_reference is None:
            conv_reference = out_cv
        results[setting] = {
            "matmul_tflops": 2 * n**3 / t_mm / 1e12,
            "matmul_relative_error_vs_float64": _relative_error(out_mm[:rows], exact),
            "conv_tflops": conv_flops / t_cv / 1e12,
            "conv_relative_error_vs_highest": _relative_error(out_cv, conv_reference),
        }
    return results


def run(ctx: PartContext) -> None:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from experiments.bench import cases
    from experiments.common import provenance
    from experiments.trainer import steps

    ctx.record("machine", provenance.describe_machine())
    ctx.record("compute_capability", getattr(jax.devices()[0], "compute_capability", None))
    ctx.record("precision_probe", precision_probe(ctx.tiny))
    setup = cases.Setup(
        model="vgg_tiny" if ctx.tiny else "vgg16",
        image_shape=(32, 32, 3),
        repeats=2 if ctx.tiny else 7,
        calls=1 if ctx.tiny else 5,
        mesh=Mesh(
            np.array(jax.devices()[:1]), (steps.AXIS,)
        ),  # one device: the paper's per-GPU view
    )
    for key, batch in TINY_PLAN if ctx.tiny else GPU_PLAN:
        if ctx.time_left() < MIN_SECONDS:
            ctx.append("not_measured", f"{key} at batch {batch}: out of time")
            continue
        if key == "bf16_curve":
            r = cases.time_train_step(setup, batch, conv="ws", norm="bcn", dtype="bfloat16")
        elif key == "ws_overhead_bf16":
            r = cases.ws_overhead(setup, batch, dtype="bfloat16")
        else:
            r = cases.time_train_step(setup, batch, conv="ws", norm="bcn", dtype="float32")
        ctx.append(key, r)
