"""Flax NNX mirrors of the weight-standardized layers in :mod:`wsjax.layers` (same maths, same names).

NNX layers read ``self.kernel`` and pass it through ``promote_dtype`` before the convolution; a WS layer
installs a promote step that first standardizes the raw kernel (then applies ``mask``), so every argument of
the parent keeps working and the stored parameter stays the raw kernel, as in Linen.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from flax.nnx.nn import dtypes

from wsjax.output_standardization import (
    check_apply_to,
    layer_window_sums,
    standardize_output,
    standardizes_output,
)
from wsjax.standardization import scaled_standardize, standardize

KernelTransform = Callable[[jax.Array], jax.Array]

# The transform of the layer being called, with that layer's own promote step. Set for the duration of one
# __call__ only, so the stored module holds no reference to traced values.
_ACTIVE: contextvars.ContextVar[tuple[KernelTransform, Callable[..., Any]]] = (
    contextvars.ContextVar("wsjax_nnx_active_kernel_transform")
)


def _transform_kernel_then_promote(arrays: tuple, dtype: Any = None, **kwargs: Any) -> tuple:
    transform, promote = _ACTIVE.get()
    inputs, kernel, bias = arrays
    return promote((inputs, transform(kernel), bias), dtype=dtype, **kwargs)


class _TransformsKernel:
    """Mixin for an NNX layer: the kernel is replaced by ``self.kernel_transform()(kernel)`` on every call."""

    def __init__(
        self,
        *args: Any,
        mask: jax.Array | None = None,
        promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
        **kwargs: Any,
    ):
        super().__init__(*args, promote_dtype=_transform_kernel_then_promote, **kwargs)
        if mask is not None and mask.shape != self.kernel.shape:
            raise ValueError(
                f"{type(self).__name__}: mask shape {mask.shape} differs from the kernel's "
                f"{self.kernel.shape}."
            )
        # Applied after standardization (as in Linen) so that masked entries stay exactly zero.
        self.ws_mask = mask
        self.ws_promote = promote_dtype

    def kernel_transform(self) -> KernelTransform:
        raise NotImplementedError

    def effective_kernel(self) -> jax.Array:
        """The kernel this layer computes with (before ``mask``)."""
        return self.kernel_transform()(self.kernel[...])

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return self._call_with(self.kernel_transform(), inputs, *args, **kwargs)

    def _call_with(self, transform: KernelTransform, inputs: jax.Array, *args: Any, **kwargs: Any):
        """The parent's call, computing with ``transform(kernel)`` (then ``mask``)."""
        if self.ws_mask is not None:
            mask = self.ws_mask
            transform = lambda kernel, transform=transform: transform(kernel) * mask  # noqa: E731
        token = _ACTIVE.set((transform, self.ws_promote))
        try:
            return super().__call__(inputs, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)


class _Standardizes(_TransformsKernel):
    def __init__(
        self,
        *args: Any,
        eps: float = 1e-5,
        unbiased: bool = True,
        eps_outside_sqrt: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.eps = eps
        self.unbiased = unbiased
        self.eps_outside_sqrt = eps_outside_sqrt

    def kernel_transform(self) -> KernelTransform:
        return functools.partial(
            standardize,
            eps=self.eps,
            unbiased=self.unbiased,
            eps_outside_sqrt=self.eps_outside_sqrt,
        )


class WSConv(_Standardizes, nnx.Conv):
    """``nnx.Conv`` with Weight Standardization: ``conv(x, (w - mean) / sqrt(var + eps)) + b``.

    ``WSConv(in_features, out_features, kernel_size, ..., eps=1e-5, unbiased=True, eps_outside_sqrt=False,
    apply_to='kernel', rngs=...)``; every other argument is that of ``nnx.Conv``. ``apply_to`` ('kernel',
    'output' or 'auto') is that of the Linen :class:`wsjax.WSConv`: where the standardization is applied.
    """

    def __init__(self, *args: Any, apply_to: str = "kernel", **kwargs: Any):
        check_apply_to(apply_to, "WSConv")
        super().__init__(*args, **kwargs)
        self.apply_to = apply_to

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        if not standardizes_output(self, inputs, self.ws_mask):
            return super().__call__(inputs, *args, **kwargs)
        y = self._call_with(lambda kernel: kernel, inputs, *args, **kwargs)  # conv(x, w) + b
        return standardize_output(
            y,
            self.kernel[...],
            layer_window_sums(self, inputs),
            self.bias[...] if self.bias is not None else None,
            eps=self.eps,
            unbiased=self.unbiased,
            eps_outside_sqrt=self.eps_outside_sqrt,
        )


class WSConvTranspose(_Standardizes, nnx.ConvTranspose):
    """``nnx.ConvTranspose`` whose kernel ``(*kernel_size, in, out)`` is standardized per output channel."""


class WSDense(_Standardizes, nnx.Linear):
    """``nnx.Linear`` whose kernel ``(in, out)`` is standardized per output unit."""


class ScaledWSConv(_TransformsKernel, nnx.Conv):
    """``nnx.Conv`` with NFNets' Scaled WS: ``gain * (w - mean) / sqrt(max(var * fan_in, eps))``.

    ``gain`` is an ``nnx.Param`` of shape ``(out_features,)`` initialised to 1.
    """

    def __init__(
        self, in_features: int, out_features: int, *args: Any, eps: float = 1e-4, **kwargs
    ):
        super().__init__(in_features, out_features, *args, **kwargs)
        self.eps = eps
        self.gain = nnx.Param(jax.numpy.ones((out_features,), self.param_dtype))

    def kernel_transform(self) -> KernelTransform:
        return functools.partial(scaled_standardize, gain=self.gain[...], eps=self.eps)
