r"""Weight Standardization applied to a convolution's output instead of its kernel (``WSConv(apply_to=...)``).

A convolution is linear in its kernel, so with per-output-channel ``mean`` and ``scale`` (see
:meth:`wsjax.Standardization.statistics`):

.. math::

   \operatorname{conv}\big(x, (w - \mu) \cdot s\big)
   = \big(\operatorname{conv}(x, w) - \mu \cdot \operatorname{conv}(x, 1)\big) \cdot s

``conv(x, 1)``, the *window sums*, adds up each receptive field of ``x`` over its ``fan_in`` entries: one
channel per feature group, computed by the same convolution (padding, strides, dilations) with a ones kernel.
The right-hand side never writes a standardized kernel, and its gradient needs no pass over one: where a
kernel is larger than the output map (small batches, late layers) that traffic is most of what WS costs.

Rounding: ``conv(x, w)`` carries an error relative to ``|mean| + std`` of each kernel channel, not to ``std``,
and the statistics come from raw sums (see ``wsjax._moments.mean_and_var``), whose relative error grows like
``(mean / std)²`` float32 epsilons: ~1e-5 at ``|mean| = 10 std``, ~2e-4 at 30 (both tested). Trained WS
kernels are far inside that (``|mean| / std`` at most 0.76 in the README's quick run). Half precision is
refused: its 8-11 bits would not survive the subtraction.

The Linen and NNX ``WSConv`` both decide where to standardize with :func:`standardizes_output`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from wsjax._standardization import Standardization

#: The values of ``WSConv(apply_to=...)``: where the standardization is applied.
APPLY_TO = ("kernel", "output", "auto")


def check_apply_to(apply_to: str, caller: str) -> None:
    """Refuses an ``apply_to`` not in :data:`APPLY_TO`."""
    if apply_to not in APPLY_TO:
        raise ValueError(f"{caller}: apply_to must be one of {APPLY_TO}, got {apply_to!r}.")


def why_output_does_not_apply(dtypes: Sequence[Any], masked: bool) -> str | None:
    """Why a layer cannot standardize its output (None when it can): a mask, or half precision."""
    if masked:
        return "a mask changes the window sums of every output channel"
    for dtype in dtypes:
        if jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize < 4:
            return (
                f"it needs float32 or wider, got {jnp.dtype(dtype).name} (the output correction would "
                f"cancel in half precision)"
            )
    return None


def standardizes_output(
    apply_to: str,
    *,
    dtypes: Sequence[Any],
    masked: bool,
    output_positions: Callable[[], int],
    fan_in: int,
) -> bool:
    """Whether a ``WSConv`` standardizes its output on this call (else its kernel), decided from shapes.

    ``"kernel"``: never. ``"output"``: always, or a ``ValueError`` naming why it cannot. ``"auto"``: where it
    can and the output has fewer positions per channel than the kernel has entries per channel: standardizing
    the kernel costs a few passes over ``fan_in`` entries per channel, correcting the output a few passes
    over ``batch × output pixels``.

    Args:
      apply_to: the layer's ``apply_to``, one of :data:`APPLY_TO`.
      dtypes: the input's, the parameters' and the computation's dtypes.
      masked: whether the layer has a ``mask``.
      output_positions: returns ``batch × output pixels`` (called for ``"auto"`` only).
      fan_in: the kernel's entries per output channel, ``window × in_features // groups``.

    Returns:
      True to correct the output, False to standardize the kernel.

    Raises:
      ValueError: ``apply_to="output"`` where it cannot apply.
    """
    if apply_to == "kernel":
        return False
    why_not = why_output_does_not_apply(dtypes, masked)
    if why_not and apply_to == "output":
        raise ValueError(f"WSConv(apply_to='output'): {why_not}; use apply_to='kernel'.")
    if why_not:
        return False
    return apply_to == "output" or output_positions() < fan_in


def window_sums(
    inputs: jax.Array,
    kernel_size: int | Sequence[int],
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
    kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    ones_conv = nn.Conv(
        features=feature_group_count,
        kernel_size=kernel_size,
        feature_group_count=feature_group_count,
        use_bias=False,
        conv_general_dilated=conv_general_dilated,
        parent=None,  # a pure function of the inputs, not a submodule with parameters
        **conv_kwargs,
    )
    with jax.named_scope("ws_window_sums"):
        # Sum each group's channels first, then sum windows one channel per group (a depthwise convolution):
        # the same numbers, as padding and dilation act on every channel alike. Its gradient is then a
        # depthwise convolution plus a broadcast, which XLA:CPU does not merge with the layer's own
        # input-gradient convolution into one YNNPACK fusion (a full ones-kernel convolution was, and ran
        # ~8× slower on small maps).
        dtype = inputs.dtype if jnp.issubdtype(inputs.dtype, jnp.floating) else jnp.float32
        in_per_group = jnp.shape(inputs)[-1] // feature_group_count
        grouped = inputs.astype(dtype).reshape(
            jnp.shape(inputs)[:-1] + (feature_group_count, in_per_group)
        )
        ones = jnp.ones((*kernel_size, 1, feature_group_count), dtype)
        sums = ones_conv.apply({"params": {"kernel": ones}}, jnp.sum(grouped, axis=-1))
        return cast(jax.Array, sums)  # apply returns the output alone when nothing is mutable


def conv_fan_in(kernel_size: int | Sequence[int], in_features: int, groups: int) -> int:
    """Entries per output channel of a convolution kernel: ``window × in_features // groups``."""
    window = math.prod((kernel_size,) if isinstance(kernel_size, int) else kernel_size)
    return window * in_features // groups


def standardize_output(
    conv_output: jax.Array,
    kernel: jax.Array,
    sums: jax.Array,
    bias: jax.Array | None,
    standardization: Standardization,
) -> jax.Array:
    """``(conv(x, w) - mean * conv(x, 1)) * scale + b`` from ``conv_output = conv(x, w) + b``.

    Args:
      conv_output: the raw-kernel convolution, bias included when ``bias`` is given.
      kernel: the raw kernel ``(..., in_features // groups, out_features)``.
      sums: :func:`window_sums` of the same input, ``(..., groups)``.
      bias: the layer's bias, or None.
      standardization: the layer's convention.

    Returns:
      The output of the convolution with the standardized kernel, plus the bias.
    """
    mean, scale = standardization.statistics(kernel)
    with jax.named_scope("ws_output_correction"):

        def per_channel(v: jax.Array) -> jax.Array:
            return v.reshape((1,) * (conv_output.ndim - 1) + (-1,))

        groups = sums.shape[-1]
        # One group broadcasts as it is; several are repeated out to their channels.
        channel_sums = (
            sums if groups == 1 else jnp.repeat(sums, kernel.shape[-1] // groups, axis=-1)
        )
        offset = per_channel(mean) * channel_sums
        if bias is None:
            return (conv_output - offset) * per_channel(scale)
        bias = per_channel(bias)
        return (conv_output - bias - offset) * per_channel(scale) + bias


class OutputSide:
    """What ``WSConv`` needs for its output side, shared by the Linen and NNX layers.

    A plain mixin: both module systems give a convolution the same attribute names (``apply_to``,
    ``kernel_size``, ``strides``, ``padding``, ``input_dilation``, ``kernel_dilation``,
    ``feature_group_count``, ``precision``, ``mask``, ``dtype``, ``param_dtype``, ``conv_general_dilated``),
    so one pair of methods serves both. The decision itself stays in each ``WSConv.__call__``.
    """

    if TYPE_CHECKING:  # the convolution's own, as each module system declares them
        apply_to: str
        kernel_size: Any
        feature_group_count: int
        strides: Any
        padding: Any
        input_dilation: Any
        kernel_dilation: Any
        precision: Any
        mask: jax.Array | None
        dtype: Any
        param_dtype: Any
        conv_general_dilated: Any

    def _standardizes_output(self, inputs: jax.Array) -> bool:
        """Whether this call standardizes the output (``apply_to`` and the call's shapes and dtypes)."""
        return standardizes_output(
            self.apply_to,
            dtypes=(inputs.dtype, self.param_dtype, self.dtype or self.param_dtype),
            masked=self.mask is not None,
            output_positions=lambda: math.prod(
                jax.eval_shape(self._window_sums, inputs).shape[:-1]
            ),
            fan_in=conv_fan_in(self.kernel_size, inputs.shape[-1], self.feature_group_count),
        )

    def _window_sums(self, inputs: jax.Array) -> jax.Array:
        """:func:`window_sums` with this layer's own window, groups, padding and convolution."""
        return window_sums(
            inputs,
            self.kernel_size,
            self.feature_group_count,
            self.conv_general_dilated,
            strides=self.strides,
            padding=self.padding,
            input_dilation=self.input_dilation,
            kernel_dilation=self.kernel_dilation,
            precision=self.precision,
        )
