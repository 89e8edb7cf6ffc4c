r"""CPU-specific convolution: ``lax.conv_general_dilated`` with a fast path for output maps smaller than the kernel.

XLA:CPU is slow on convolutions whose output map is smaller than the kernel: VGG16's last stage on 32×32
inputs (2×2 maps, 3×3 kernels, 512 channels) runs at about 2 GFLOP/s against 150-200 GFLOP/s for the larger
maps, and took most of the training step (measured on a 2-core EPYC, jaxlib 0.10.2; see the README's
Benchmarks). The same convolution written as a sum over kernel taps of shifted matmuls,

.. math::

   y[n, p, o] = \sum_t x_{\text{pad}}[n, p + t, :] \cdot w[t, :, o]
   \qquad (t \text{ over the kernel offsets}),

is exact (the same products, summed in another order) and much faster there. :func:`conv_general_dilated`
takes that path only when :func:`takes_shifted_matmul_path` says it applies and pays off: on the CPU platform,
stride 1, no dilation, one feature group, channels-last input/output with an ``(..., in, out)`` kernel
(Flax's layout), and every output side smaller than the kernel's. Everything else, and every other platform,
goes to ``lax.conv_general_dilated`` unchanged. The platform is the one the program is lowered for
(``lax.platform_dependent``), so a step exported or compiled for a GPU or TPU from a CPU host carries lax's
convolution only.

It is the default convolution of :class:`wsjax.WSConv` and :class:`wsjax.ScaledWSConv` (Linen and NNX), and
fits any Flax convolution: ``nn.Conv(..., conv_general_dilated=wsjax.cpu.conv_general_dilated)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

__all__ = ["conv_general_dilated", "takes_shifted_matmul_path"]


def _channels_last_specs(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``lax.ConvDimensionNumbers`` specs of NH..WC inputs/outputs and H..WIO kernels."""
    spatial = tuple(range(1, ndim - 1))
    return (0, ndim - 1, *spatial), (ndim - 1, ndim - 2, *range(ndim - 2))


def takes_shifted_matmul_path(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    backend: str | None = None,
) -> bool:
    """Whether :func:`conv_general_dilated` computes this convolution as shifted matmuls (see the module doc).

    Args:
      lhs_shape: the input's shape.
      rhs_shape: the kernel's shape.
      window_strides: as for ``lax.conv_general_dilated``.
      padding: as for ``lax.conv_general_dilated``.
      lhs_dilation: as for ``lax.conv_general_dilated``.
      rhs_dilation: as for ``lax.conv_general_dilated``.
      dimension_numbers: as for ``lax.conv_general_dilated``.
      feature_group_count: as for ``lax.conv_general_dilated``.
      batch_group_count: as for ``lax.conv_general_dilated``.
      backend: the platform deciding (``"cpu"``, ``"gpu"``, ``"tpu"``); None: ``jax.default_backend()``.

    Returns:
      True only on the CPU backend, for stride 1, no dilation, one group, channels-last operands with an
      ``(..., in, out)`` kernel, and every output side smaller than the kernel's.
    """
    if (backend or jax.default_backend()) != "cpu":
        return False
    return _fits_shifted_matmuls(
        lhs_shape,
        rhs_shape,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
    )


def _fits_shifted_matmuls(
    lhs_shape: Sequence[int],
    rhs_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    feature_group_count: int,
    batch_group_count: int,
) -> bool:
    """The shape conditions of :func:`takes_shifted_matmul_path`, whatever the platform."""
    ndim = len(lhs_shape)
    if ndim < 3 or feature_group_count != 1 or batch_group_count != 1:
        return False
    if any(s != 1 for s in window_strides):
        return False
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return False
    dn = lax.conv_dimension_numbers(tuple(lhs_shape), tuple(rhs_shape), dimension_numbers)
    io_spec, kernel_spec = _channels_last_specs(ndim)
    if tuple(dn.lhs_spec) != io_spec or tuple(dn.out_spec) != io_spec:
        return False
    if tuple(dn.rhs_spec) != kernel_spec:
        return False
    kernel = rhs_shape[:-2]
    padding = _explicit_padding(lhs_shape, kernel, padding)
    out = [
        size + lo + hi - k + 1
        for size, (lo, hi), k in zip(lhs_shape[1:-1], padding, kernel, strict=True)
    ]
    return all(0 < o < k for o, k in zip(out, kernel, strict=True))


def _explicit_padding(
    lhs_shape: Sequence[int], kernel: Sequence[int], padding: str | Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    if isinstance(padding, str):  # 'SAME', 'VALID', 'SAME_LOWER' at stride 1
        return lax.padtype_to_pads(
            tuple(lhs_shape[1:-1]), tuple(kernel), (1,) * len(kernel), padding
        )
    return [(lo, hi) for lo, hi in padding]


def _shifted_matmuls(
    lhs: jax.Array,
    rhs: jax.Array,
    padding: str | Sequence[tuple[int, int]],
    precision: lax.PrecisionLike,
    preferred_element_type: DTypeLike | None,
) -> jax.Array:
    spatial = lhs.ndim - 2
    padding = _explicit_padding(lhs.shape, rhs.shape[:spatial], padding)
    # lax.pad takes negative padding too (cropping), as the convolution does.
    padded = lax.pad(
        lhs, jnp.zeros((), lhs.dtype), [(0, 0, 0), *[(lo, hi, 0) for lo, hi in padding], (0, 0, 0)]
    )
    kernel = rhs.shape[:spatial]
    out = [padded.shape[1 + d] - kernel[d] + 1 for d in range(spatial)]
    result_dtype = preferred_element_type or lax.dtype(lhs)
    # Low-precision floats are summed in float32, as XLA's convolution does; float32/64 in their own width.
    narrow_float = jnp.issubdtype(result_dtype, jnp.floating) and jnp.finfo(result_dtype).bits < 32
    accumulate = jnp.float32 if narrow_float else result_dtype
    total: jax.Array | None = None
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = lax.slice(
            padded,
            (0, *tap, 0),
            (padded.shape[0], *(t + o for t, o in zip(tap, out, strict=True)), padded.shape[-1]),
        )
        term = lax.dot_general(
            window,
            rhs[tap],
            (((spatial + 1,), (0,)), ((), ())),
            precision=precision,
            preferred_element_type=accumulate,
        )
        total = term if total is None else total + term
    assert total is not None  # a kernel has at least one tap
    return total.astype(result_dtype)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: lax.PrecisionLike = None,
    preferred_element_type: DTypeLike | None = None,
    out_sharding: jax.sharding.NamedSharding | jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
    """Drop-in ``lax.conv_general_dilated``; output maps smaller than the kernel take shifted matmuls on CPU.

    Args:
      lhs: the input.
      rhs: the kernel.
      window_strides: as for ``lax.conv_general_dilated``.
      padding: as for ``lax.conv_general_dilated``.
      lhs_dilation: as for ``lax.conv_general_dilated``.
      rhs_dilation: as for ``lax.conv_general_dilated``.
      dimension_numbers: as for ``lax.conv_general_dilated``.
      feature_group_count: as for ``lax.conv_general_dilated``.
      batch_group_count: as for ``lax.conv_general_dilated``.
      precision: as for ``lax.conv_general_dilated``.
      preferred_element_type: as for ``lax.conv_general_dilated``.
      out_sharding: as for ``lax.conv_general_dilated`` (``nnx.Conv`` passes it); a sharded output takes
        ``lax``.

    Returns:
      ``lax.conv_general_dilated``'s result: the same shape and dtype, the same values up to the order of
      the sums on the shifted-matmul path.
    """

    def with_lax(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            **({} if out_sharding is None else {"out_sharding": out_sharding}),
        )

    if out_sharding is not None or not _fits_shifted_matmuls(
        lhs.shape,
        rhs.shape,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
    ):
        return with_lax(lhs, rhs)

    def with_shifted_matmuls(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        with jax.named_scope("small_map_conv"):
            return _shifted_matmuls(lhs, rhs, padding, precision, preferred_element_type)

    # Chosen per lowering platform, not by the backend of the tracing process: a program lowered on a CPU host
    # for a GPU or TPU (jax.export, ahead-of-time compilation) gets lax's convolution, and one lowered for the
    # CPU alone holds only the shifted matmuls.
    out: jax.Array = lax.platform_dependent(lhs, rhs, cpu=with_shifted_matmuls, default=with_lax)
    return out
