"""Part ``torch``: the PyTorch reference's VGG16 WS+BCN training step on the same GPU, two ways.

- ``eager_fp32``: labml-nn's network as its experiment runs it (float32, eager, Adam). PyTorch's defaults
  apply: cuDNN convolutions may use TF32 (``torch.backends.cudnn.allow_tf32``), cuBLAS matmuls do not.
- ``tuned_bf16``: what a PyTorch user tuning for speed would write: bfloat16 autocast, channels_last,
  ``torch.compile``, fused Adam, ``cudnn.benchmark`` (without channels_last, or without compiling, where
  labml-nn's layers refuse them: each result says which it is, and the failures are recorded).

Same network (``bench/torch_reference.py``: labml-nn's ``Conv2d`` with WS and its ``BatchChannelNorm``), same
timing rules as ours: warm-up (and compilation) excluded, the device synchronized around each repeat, median
of repeats. The plain-conv twin gives PyTorch's own WS overhead in eager float32. This part imports no JAX:
the two frameworks do not share the GPU's memory in one process.
"""

from __future__ import annotations

import time
from typing import Any

from experiments.bench import torch_reference
from experiments.bench.suite.context import PartContext

GPU_BATCHES = (2, 64, 256)
TUNED_BATCHES = (64, 256)
MIN_SECONDS = 25


def time_step(
    make_model,
    batch: int,
    repeats: int,
    calls: int,
    device: str,
    tuned: bool,
    compile: bool = False,
    channels_last: bool = False,
) -> dict:
    """Median seconds per training step (Adam, cross-entropy, random CIFAR-sized images).

    ``tuned``: bfloat16 autocast and fused Adam; ``compile``: ``torch.compile``; ``channels_last``: NHWC.
    """
    import torch

    torch.manual_seed(0)
    model = make_model().to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=2.5e-4, fused=tuned and device == "cuda")
    forward = torch.compile(model) if compile else model
    images = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=tuned):
            loss = loss_fn(forward(images), labels)
        loss.backward()
        optimizer.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(3):  # warm-up: compilation, cuDNN autotuning, Adam state
        step()
    sync()
    warmup_s = time.perf_counter() - start
    return {
        **torch_reference.step_times(step, batch, repeats, calls, sync),
        "warmup_and_compile_s": warmup_s,
        "tuned": tuned,
        "compiled": compile,
        "channels_last": channels_last,
    }


def run(ctx: PartContext) -> None:
    try:
        import torch

        from experiments.bench import torch_reference

        models = torch_reference._models()
    except ImportError as e:
        ctx.record("skipped", f"torch or labml-nn not importable: {e}")
        return
    from importlib.metadata import version

    device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx.record(
        "setup",
        {
            "torch": torch.__version__,
            "labml_nn": version("labml-nn"),
            "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
    )
    repeats, calls = (2, 1) if ctx.tiny else (7, 5)
    for batch in (2,) if ctx.tiny else GPU_BATCHES:
        if ctx.time_left() < MIN_SECONDS:
            ctx.append("not_measured", f"eager_fp32 at batch {batch}: out of time")
            continue
        ws = time_step(models["ws"], batch, repeats, calls, device, tuned=False)
        plain = time_step(models["plain"], batch, repeats, calls, device, tuned=False)
        ws["ws_overhead"] = ws["step_time_s"]["median"] / plain["step_time_s"]["median"]
        ctx.append("eager_fp32", ws)
    if ctx.tiny and device == "cpu":
        ctx.record("tuned_bf16_skipped", "tiny mode on a CPU: torch.compile is not rehearsed")
        return
    torch.backends.cudnn.benchmark = True
    # The fastest that works, first: labml-nn's norms call .view() across channels, which a channels_last
    # tensor refuses, and torch.compile may fail on what eager runs. Each failure is recorded.
    variants = [
        {"compile": True, "channels_last": True},
        {"compile": True, "channels_last": False},
        {"compile": False, "channels_last": False},
    ]
    for batch in TUNED_BATCHES:
        if ctx.time_left() < 2 * MIN_SECONDS:  # compiling takes most of it
            ctx.append("not_measured", f"tuned_bf16 at batch {batch}: out of time")
            continue
        for i, variant in enumerate(variants):
            try:
                r = time_step(models["ws"], batch, repeats, calls, device, tuned=True, **variant)
            except Exception as e:  # noqa: BLE001 - a failure is a result: record it, try the next
                ctx.append("errors", f"{variant} at batch {batch}: {type(e).__name__}: {e}"[:1500])
                continue
            variants = variants[i:]  # later batches start from the variant that worked
            ctx.append("tuned_bf16", r)
            break


def summarize(results: dict[str, Any]) -> dict[int, dict[str, float]]:
    """``{batch: {"eager_fp32": s, "tuned_bf16": s}}`` median step seconds, for the table."""
    out: dict[int, dict[str, float]] = {}
    for key in ("eager_fp32", "tuned_bf16"):
        for r in results.get(key, []):
            out.setdefault(r["batch"], {})[key] = r["step_time_s"]["median"]
    return out
