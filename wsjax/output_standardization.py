"""Weight Standardization applied to a convolution's output instead of its kernel (``WSConv(apply_to=...)``).

A convolution is linear in its kernel, so with per-output-channel ``mean`` and ``scale = 1 / sqrt(var + eps)``
(see :func:`~wsjax.standardization.standardization_statistics`)::

    conv(x, (w - mean) * scale) = (conv(x, w) - mean * conv(x, 1)) * scale

``conv(x, 1)``, the *window sums*, adds up each receptive field of ``x`` over its ``fan_in`` entries: one
channel per feature group, computed by the same convolution (padding, strides, dilations) with a ones kernel.
The right-hand side never writes a standardized kernel, and its gradient needs no pass over one: where a
kernel is larger than the output map (small batches, late layers) that traffic is most of what WS costs.

Rounding: ``conv(x, w)`` carries an error relative to ``|mean| + std`` of each kernel channel, not to ``std``,
and the statistics come from raw sums (see ``_mean_and_var``), whose relative error grows like
``(mean / std)²`` float32 epsilons: ~1e-5 at ``|mean| = 10 std``, ~2e-4 at 30 (both tested). Trained WS kernels
are far inside that (``|mean| / std`` at most 0.76 in the README's quick run). Half precision is refused: its 8-11 bits would not survive the subtraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax.standardization import standardization_statistics

APPLY_TO = ("kernel", "output", "auto")


def check_apply_to(apply_to: str, caller: str) -> None:
    if apply_to not in APPLY_TO:
        raise ValueError(f"{caller}: apply_to must be one of {APPLY_TO}, got {apply_to!r}.")


def why_output_does_not_apply(dtypes: Sequence[Any], mask: jax.Array | None) -> str | None:
    """Why a layer cannot standardize its output (None when it can): a mask, or half precision."""
    if mask is not None:
        return "a mask changes the window sums of every output channel"
    for dtype in dtypes:
        if jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4:
            return (
                f"it needs float32 or wider, got {jnp.dtype(dtype).name} (the output correction would "
                f"cancel in half precision)"
            )
    return None


def window_sums(
    inputs: jax.Array,
    kernel_size: Sequence[int],
    feature_group_count: int,
    conv_general_dilated: Callable[..., jax.Array] | None,
    **conv_kwargs: Any,
) -> jax.Array:
    """``conv(x, 1)``: each output position's window summed over its ``fan_in`` inputs, one channel per group.

    Args:
      inputs: the layer's input, channels last, as it passes to ``nn.Conv``.
      kernel_size: the layer's window.
      feature_group_count: the layer's groups; group ``g`` sums its own ``in_features // groups`` channels.
      conv_general_dilated: the layer's convolution function (None: ``lax.conv_general_dilated``).
      **conv_kwargs: the layer's ``strides``, ``padding``, ``input_dilation``, ``kernel_dilation`` and
        ``precision``, as ``nn.Conv`` takes them (so every padding mode is handled as the layer handles it).

    Returns:
      ``(..., *output_spatial, feature_group_count)``.
    """
    ones_conv = nn.Conv(
        features=feature_group_count,
        kernel_size=tuple(kernel_size),
        feature_group_count=feature_group_count,
        use_bias=False,
        conv_general_dilated=conv_general_dilated,
        parent=None,  # a pure function of the inputs, not a submodule with parameters
        **conv_kwargs,
    )
    # Sum each group's channels first, then sum windows one channel per group (a depthwise convolution): the
    # same numbers, as padding and dilation act on every channel alike. Its gradient is then a depthwise
    # convolution plus a broadcast, which XLA:CPU does not merge with the layer's own input-gradient
    # convolution into one YNNPACK fusion (a full ones-kernel convolution was, and ran ~8× slower on small maps).
    dtype = inputs.dtype if jnp.issubdtype(inputs.dtype, jnp.floating) else jnp.float32
    in_per_group = jnp.shape(inputs)[-1] // feature_group_count
    grouped = inputs.astype(dtype).reshape(
        jnp.shape(inputs)[:-1] + (feature_group_count, in_per_group)
    )
    ones = jnp.ones((*kernel_size, 1, feature_group_count), dtype)
    return ones_conv.apply({"params": {"kernel": ones}}, jnp.sum(grouped, axis=-1))


def layer_window_sums(layer: Any, inputs: jax.Array) -> jax.Array:
    """:func:`window_sums` for a Linen or NNX convolution layer, from its own attributes (same names in both)."""
    kernel_size = layer.kernel_size
    return window_sums(
        inputs,
        (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size),
        layer.feature_group_count,
        layer.conv_general_dilated,
        strides=layer.strides,
        padding=layer.padding,
        input_dilation=layer.input_dilation,
        kernel_dilation=layer.kernel_dilation,
        precision=layer.precision,
    )


def standardizes_output(layer: Any, inputs: jax.Array, mask: jax.Array | None) -> bool:
    """Whether a WSConv (Linen or NNX) with ``layer.apply_to`` corrects its output on this call.

    ``"kernel"``: never. ``"output"``: always, or a ``ValueError`` naming why it cannot. ``"auto"``: where it
    can and :func:`prefers_output` says so.
    """
    if layer.apply_to == "kernel":
        return False
    param_dtype = layer.param_dtype
    why_not = why_output_does_not_apply(
        (inputs.dtype, param_dtype, layer.dtype or param_dtype), mask
    )
    if why_not and layer.apply_to == "output":
        raise ValueError(f"WSConv(apply_to='output'): {why_not}; use apply_to='kernel'.")
    if why_not:
        return False
    if layer.apply_to == "output":
        return True
    sums_shape = jax.eval_shape(lambda x: layer_window_sums(layer, x), inputs).shape
    kernel_size = layer.kernel_size
    window = math.prod((kernel_size,) if isinstance(kernel_size, int) else kernel_size)
    return prefers_output(sums_shape, window * jnp.shape(inputs)[-1] // layer.feature_group_count)


def prefers_output(window_sums_shape: Sequence[int], fan_in: int) -> bool:
    """``apply_to='auto'``'s rule: the output has fewer positions per channel than the kernel has entries.

    Standardizing the kernel costs a few passes over ``fan_in`` entries per channel; correcting the output
    costs a few passes over ``batch × output pixels`` per channel. Decided at trace time, from shapes.
    """
    return math.prod(window_sums_shape[:-1]) < fan_in


def standardize_output(
    conv_output: jax.Array,
    kernel: jax.Array,
    sums: jax.Array,
    bias: jax.Array | None,
    *,
    eps: float,
    unbiased: bool,
    eps_outside_sqrt: bool,
) -> jax.Array:
    """``(conv(x, w) - mean * conv(x, 1)) * scale + b`` from ``conv_output = conv(x, w) + b``.

    Args:
      conv_output: the raw-kernel convolution, bias included when ``bias`` is given.
      kernel: the raw kernel ``(..., in_features // groups, out_features)``.
      sums: :func:`window_sums` of the same input, ``(..., groups)``.
      bias: the layer's bias, or None.
      eps, unbiased, eps_outside_sqrt: as :func:`~wsjax.standardization.standardize`.
    """
    mean, scale = standardization_statistics(
        kernel, eps, unbiased=unbiased, eps_outside_sqrt=eps_outside_sqrt
    )
    per_channel = lambda v: v.reshape((1,) * (conv_output.ndim - 1) + (-1,))  # noqa: E731
    groups = sums.shape[-1]
    # One group broadcasts as it is; several are repeated out to their channels.
    channel_sums = sums if groups == 1 else jnp.repeat(sums, kernel.shape[-1] // groups, axis=-1)
    offset = per_channel(mean) * channel_sums
    if bias is None:
        return (conv_output - offset) * per_channel(scale)
    bias = per_channel(bias)
    return (conv_output - bias - offset) * per_channel(scale) + bias
