"""Dense peak FLOP/s of common accelerators, for MFU. None where unknown (CPUs: no meaningful peak)."""

from __future__ import annotations

# Vendor datasheet figures, dense (no sparsity), per chip: (bf16, fp32). fp32 on NVIDIA is the non-tensor-core
# rate, since XLA keeps fp32 matmuls in full fp32 unless told otherwise.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": (989e12, 67e12),
    "NVIDIA H100 PCIe": (756e12, 51e12),
    "NVIDIA H200": (989e12, 67e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 19.5e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 19.5e12),
    "NVIDIA L4": (121e12, 30e12),
    "Tesla T4": (65e12, 8.1e12),
    "TPU v4": (275e12, None),
    "TPU v5 lite": (197e12, None),
    "TPU v5e": (197e12, None),
    "TPU v5p": (459e12, None),
    "TPU v6 lite": (918e12, None),
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The peak for ``device_kind`` (``jax.devices()[0].device_kind``) in ``'bfloat16'`` or ``'float32'``."""
    for name, (bf16, fp32) in PEAK_FLOPS.items():
        if device_kind.startswith(name) or name.startswith(device_kind):
            return bf16 if dtype == "bfloat16" else fp32
    return None
