"""Flax Linen layers whose kernel is weight-standardized on every call.

Each is a subclass of the Flax layer it names and overrides only ``param``: the stored parameter is the raw
kernel ``w`` (same name, shape and initializer as in Flax), and the layer computes with ``standardize(w)``.
Every argument of the parent (strides, padding modes, dilation, ``feature_group_count``, ``mask``, ``dtype``,
``param_dtype`` ...) therefore keeps working. Standardization runs in ``param_dtype`` (statistics in at
least float32) before the parent casts the kernel to ``dtype``, and before ``mask`` is applied, so masked
entries stay exactly zero.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from wsjax.output_standardization import (
    check_apply_to,
    layer_window_sums,
    standardize_output,
    standardizes_output,
)
from wsjax.standardization import scaled_standardize, standardize

# Set while a WSConv that standardizes its output runs nn.Conv's call, whose `param` then returns the raw
# kernel. A context variable rather than a module attribute: bound Linen modules are frozen.
_RAW_KERNEL: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "wsjax_raw_kernel", default=False
)


class _StandardizesKernel(nn.Module):
    """Mixin: ``self.param('kernel', ...)`` returns the standardized kernel."""

    eps: float = 1e-5  # added to the variance (or to the std with eps_outside_sqrt)
    unbiased: bool = True  # divide by fan_in - 1, as torch.var does
    eps_outside_sqrt: bool = False  # (w - mean) / (std + eps), as the paper's official code does

    def param(self, name: str, init_fn: Callable[..., Any], *init_args, **init_kwargs) -> Any:
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel" or _RAW_KERNEL.get():
            return value
        return self.effective_kernel({"kernel": value})

    def effective_kernel(self, params: dict[str, Any]) -> jax.Array:
        """The kernel this layer convolves with, given its raw parameters."""
        return standardize(
            params["kernel"],
            self.eps,
            unbiased=self.unbiased,
            eps_outside_sqrt=self.eps_outside_sqrt,
        )


class WSConv(_StandardizesKernel, nn.Conv):
    """``nn.Conv`` with Weight Standardization (Qiao et al., arXiv 1903.10520).

    ``y = conv(x, (w - mean) / sqrt(var + eps)) + b`` with per-output-channel statistics over
    ``kernel_size × in_features // feature_group_count``. ``WSConv(64, (3, 3), **wsjax.PRESETS['bit'])``
    reproduces another implementation's convention.

    ``apply_to`` chooses where the standardization is applied; the maths is the same. A convolution is linear
    in its kernel, so with ``scale = 1 / sqrt(var + eps)``::

        conv(x, (w - mean) * scale) = (conv(x, w) - mean * conv(x, 1)) * scale

    where ``conv(x, 1)`` sums each window of ``x`` over its ``fan_in`` entries (one channel per group).

    - ``"kernel"`` (default): convolve with the standardized kernel, as the PyTorch reference does.
    - ``"output"``: convolve with the raw kernel and correct the output. No standardized kernel is written and
      the gradient needs no pass over one: cheaper when a kernel is larger than the output map (small batches,
      late layers), dearer otherwise. Rounding: the raw convolution carries an error relative to
      ``|mean| + std`` of the kernel rather than to ``std``, so a kernel whose channels have a large mean
      (``|mean| ≫ std``) loses accuracy; float32 or wider only, and no ``mask``.
    - ``"auto"``: ``"output"`` where that applies and the output has fewer positions per channel
      (``batch × output pixels``) than the kernel has entries per channel (``fan_in``), else ``"kernel"``.
    """

    apply_to: str = "kernel"  # "kernel", "output" or "auto": see the class docstring

    def __post_init__(self) -> None:
        check_apply_to(self.apply_to, "WSConv")
        super().__post_init__()

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if not standardizes_output(self, inputs, self.mask):
            return super().__call__(inputs)
        sums = layer_window_sums(self, inputs)
        token = _RAW_KERNEL.set(True)
        try:
            y = super().__call__(inputs)  # conv(x, w) + b with the raw kernel
        finally:
            _RAW_KERNEL.reset(token)
        return standardize_output(
            y,
            self.get_variable("params", "kernel"),
            sums,
            self.get_variable("params", "bias") if self.use_bias else None,
            eps=self.eps,
            unbiased=self.unbiased,
            eps_outside_sqrt=self.eps_outside_sqrt,
        )


class WSConvTranspose(_StandardizesKernel, nn.ConvTranspose):
    """``nn.ConvTranspose`` whose kernel ``(*kernel_size, in, out)`` is standardized per output channel."""


class WSDense(_StandardizesKernel, nn.Dense):
    """``nn.Dense`` whose kernel ``(in, out)`` is standardized per output unit over its ``in`` inputs."""


class ScaledWSConv(nn.Conv):
    """``nn.Conv`` with the Scaled Weight Standardization of NFNets (arXiv 2102.06171).

    ``y = conv(x, gain * (w - mean) / sqrt(max(var * fan_in, eps))) + b``, with a learnable
    per-output-channel ``gain`` (parameter ``'gain'``, initialised to 1) and the biased variance.
    """

    eps: float = 1e-4  # floor of var * fan_in, as in NFNets
    gain_init: Callable[..., jax.Array] = nn.initializers.ones

    def param(self, name: str, init_fn: Callable[..., Any], *init_args, **init_kwargs) -> Any:
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel":
            return value
        gain = super().param("gain", self.gain_init, (self.features,), self.param_dtype)
        return self.effective_kernel({"kernel": value, "gain": gain})

    def effective_kernel(self, params: dict[str, Any]) -> jax.Array:
        """The kernel this layer convolves with, given its raw parameters (``gain`` folded in)."""
        return scaled_standardize(params["kernel"], params["gain"], self.eps)


def is_standardized(module: nn.Module) -> bool:
    """Whether a Linen module computes with a standardized copy of its ``kernel`` parameter."""
    return isinstance(module, (_StandardizesKernel, ScaledWSConv))
