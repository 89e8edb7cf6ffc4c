"""MFU's denominator: the peak of the arithmetic XLA really uses, for the device kind JAX really reports."""

import types

import jax
import pytest

from experiments.bench import peaks


@pytest.mark.parametrize(
    "device_kind, precision, want",
    [
        ("TPU v5", "bf16", 459e12),  # v5p: not v5 lite's figure, although "TPU v5" prefixes it
        ("TPU v5 lite", "bf16", 197e12),
        ("TPU v5p", "bf16", 459e12),
        ("TPU v6 lite", "bf16", 918e12),
        ("TPU v3", "bf16", 61.5e12),  # one JAX device is one core, half a chip
        ("TPU v4", "bf16x6", 275e12 / 6),  # float32 at HIGHEST: six bfloat16 passes
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA H200", "tf32", 495e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA H200 NVL", "bf16", 836e12),  # not the SXM part's figure
        ("NVIDIA A100-SXM4-40GB", "tf32", 156e12),
        ("Tesla T4", "bf16", None),  # no bfloat16 tensor cores
        ("Tesla T4", "tf32", None),
        ("NVIDIA H20", "bf16", None),  # unknown kinds get no MFU rather than a neighbour's peak
        ("TPU v5", "fp32", None),
        ("cpu", None, None),
    ],
)
def test_peak_for_device_kind_and_precision(device_kind, precision, want):
    assert peaks.peak_flops(device_kind, precision) == want


@pytest.mark.parametrize(
    "platform, dtype, setting, capability, want",
    [
        ("gpu", "bfloat16", None, "9.0", "bf16"),
        ("gpu", "float32", None, "9.0", "tf32"),  # JAX's default on Ampere and later
        ("gpu", "float32", "tensorfloat32", "8.0", "tf32"),
        ("gpu", "float32", "highest", "9.0", "fp32"),
        ("gpu", "float32", "float32", "9.0", "fp32"),
        ("gpu", "float32", None, "7.5", "fp32"),  # Turing has no TF32
        ("gpu", "float32", "F32_F32_F32", "9.0", "fp32"),
        ("tpu", "float32", None, None, "bf16"),  # DEFAULT on TPU: one bfloat16 pass
        ("tpu", "float32", "high", None, "bf16x3"),
        ("tpu", "float32", "highest", None, "bf16x6"),
        ("tpu", "bfloat16", "highest", None, "bf16"),
        ("cpu", "float32", None, None, None),
        ("gpu", "float32", "something new", "9.0", None),
    ],
)
def test_matmul_precision(platform, dtype, setting, capability, want):
    assert peaks.matmul_precision(platform, dtype, setting, capability) == want


def test_device_precision_follows_the_jax_setting():
    h200 = types.SimpleNamespace(
        platform="gpu", device_kind="NVIDIA H200", compute_capability="9.0"
    )
    with jax.default_matmul_precision(
        "default"
    ):  # (the accelerator suite sets 'highest' for its tests)
        assert peaks.device_precision_and_peak(h200, "float32") == ("tf32", 495e12)
    with jax.default_matmul_precision("highest"):
        assert peaks.device_precision_and_peak(h200, "float32") == ("fp32", 67e12)
    assert peaks.device_precision_and_peak(jax.devices()[0], "float32") == (None, None)  # CPU
