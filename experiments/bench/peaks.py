"""Dense peak FLOP/s per JAX device at the precision its matrix units run, for MFU.

MFU is only meaningful against the peak of the arithmetic actually used, and that is not the array dtype:
JAX runs float32 matmuls and convolutions at ``jax.lax.Precision.DEFAULT`` unless told otherwise, which on
NVIDIA GPUs from the A100 on means TF32 tensor cores (about 7x the plain float32 rate on an H100) and on TPUs
one bfloat16 pass. :func:`matmul_precision` names the arithmetic for a device, a dtype and the
``jax_default_matmul_precision`` setting; :func:`peak_flops` gives that arithmetic's peak.

Precisions: ``bf16`` (bfloat16 operands, float32 accumulation), ``tf32``, ``fp32`` (full float32 FMA), and on
TPU ``bf16x3`` / ``bf16x6`` (float32 emulated in 3 or 6 bfloat16 passes: a third or a sixth of the rate).
"""

from __future__ import annotations

from typing import Any

# Vendor datasheet figures, dense (no 2:4 sparsity), per JAX device, keyed by the exact ``device_kind``
# string JAX reports. A TPU v2/v3 JAX device is one core (half a chip); v4 and later, one chip. Prefix matching
# is deliberately avoided: "TPU v5" (v5p, 459) is a prefix of "TPU v5 lite" (v5e, 197), and "NVIDIA H200" of
# "NVIDIA H200 NVL" (a lower-clocked part).
_H100_SXM = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}
_A100 = {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
PEAKS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    # H200 SXM: the H100 SXM's arithmetic. An 8192^3 bf16 matmul measured 769-798 TFLOP/s on the device
    # machine this project borrows (its notes, 2026-11); MFU here is against the datasheet's 989.
    "NVIDIA H200": _H100_SXM,
    "NVIDIA H200 NVL": {"bf16": 836e12, "tf32": 418e12, "fp32": 60e12},
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA L4": {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "Tesla T4": {"fp32": 8.1e12},  # Turing: no TF32 and no bfloat16 tensor cores (float16 only)
    "TPU v2": {"bf16": 22.5e12},
    "TPU v3": {"bf16": 61.5e12},
    "TPU v4": {"bf16": 275e12},
    "TPU v5 lite": {"bf16": 197e12},  # v5e
    "TPU v5e": {"bf16": 197e12},
    "TPU v5": {"bf16": 459e12},  # v5p
    "TPU v5p": {"bf16": 459e12},
    "TPU v6 lite": {"bf16": 918e12},  # v6e (Trillium)
    "TPU v6e": {"bf16": 918e12},
}
# TPU float32 through bfloat16 passes: the pass count divides the bf16 rate.
_PASSES = {"bf16x3": 3, "bf16x6": 6}

# jax_default_matmul_precision values (None: unset) -> the Precision level they select for float32 inputs.
_LEVELS = {
    None: "default",
    "default": "default",
    "fastest": "default",
    "bfloat16": "default",
    "high": "high",
    "tensorfloat32": "high",
    "highest": "highest",
    "float32": "highest",
}
# Explicit dot algorithms that may be given instead of a level (jax.lax.DotAlgorithmPreset names).
_ALGORITHMS = {
    "bf16_bf16_f32": "bf16",
    "tf32_tf32_f32": "tf32",
    "f32_f32_f32": "fp32",
    "bf16_bf16_f32_x3": "bf16x3",
    "bf16_bf16_f32_x6": "bf16x6",
}


def matmul_precision(
    platform: str, dtype: str, setting: str | None = None, compute_capability: str | None = None
) -> str | None:
    """The arithmetic XLA's matrix units use for a model computed in ``dtype``.

    Args:
      platform: ``jax.devices()[0].platform``: ``'gpu'`` (NVIDIA), ``'tpu'``, ``'cpu'``.
      dtype: the computation dtype, ``'bfloat16'`` or ``'float32'``.
      setting: ``jax.config.jax_default_matmul_precision`` (None: unset).
      compute_capability: an NVIDIA device's, e.g. ``'9.0'`` (TF32 needs 8.0 or later).

    Returns:
      ``'bf16'``, ``'tf32'``, ``'fp32'``, ``'bf16x3'``, ``'bf16x6'``, or None where no peak is meaningful
      (CPUs, an unknown setting).
    """
    if platform not in ("gpu", "cuda", "tpu"):
        return None
    if dtype == "bfloat16":
        return "bf16"
    if dtype != "float32":
        return None
    key = setting.lower() if isinstance(setting, str) else setting
    if key in _ALGORITHMS:
        return _ALGORITHMS[key]
    level = _LEVELS.get(key)
    if level is None:
        return None
    if platform == "tpu":
        return {"default": "bf16", "high": "bf16x3", "highest": "bf16x6"}[level]
    has_tf32 = compute_capability is not None and float(compute_capability) >= 8.0
    return "tf32" if level != "highest" and has_tf32 else "fp32"


def peak_flops(device_kind: str, precision: str | None) -> float | None:
    """The dense peak of one ``device_kind`` device at ``precision`` (see :func:`matmul_precision`).

    None where the device is not in :data:`PEAKS` or has no such arithmetic.
    """
    peaks = PEAKS.get(device_kind.strip())
    if peaks is None or precision is None:
        return None
    if precision in _PASSES:
        return peaks["bf16"] / _PASSES[precision] if "bf16" in peaks else None
    return peaks.get(precision)


def device_precision_and_peak(device: Any, dtype: str) -> tuple[str | None, float | None]:
    """``(precision, peak FLOP/s)`` for a JAX device computing in ``dtype`` under the current JAX config."""
    import jax

    precision = matmul_precision(
        device.platform,
        dtype,
        jax.config.jax_default_matmul_precision,
        getattr(device, "compute_capability", None),
    )
    return precision, peak_flops(device.device_kind, precision)
