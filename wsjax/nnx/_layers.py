r"""Flax NNX mirrors of the weight-standardized layers of :mod:`wsjax` (same maths, same parameter names).

The stored parameter is the raw kernel ``w``, as in Linen; a layer computes its parent's call on a *view* of
itself whose kernel is :math:`\hat w` (``nnx.split`` / ``nnx.merge``: the same variables, the kernel replaced,
the stored one untouched). The parent then applies ``mask`` (so masked entries stay exactly zero), promotes
dtypes and convolves, so every argument of the parent keeps working, with no hook and no global state.

Where the standardization is applied is decided in one place, :meth:`WSConv.__call__`: on the kernel (the
view) or on the output (``nnx.Conv``'s own call with the raw kernel, then the correction of
:mod:`wsjax._output_standardization`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import jax
from flax import nnx

from wsjax import cpu
from wsjax._output_standardization import OutputSide, check_apply_to, standardize_output
from wsjax._scaled_standardization import check_form, scaled_standardize
from wsjax._standardization import DEFAULT, Standardization, as_standardization


class _TransformsKernel:
    """Mixin for an NNX layer: its call computes with :meth:`effective_kernel` in place of the kernel."""

    if TYPE_CHECKING:  # the layer's own
        kernel: nnx.Param[jax.Array]

    def __init__(self, *args: Any, mask: jax.Array | None = None, **kwargs: Any):
        super().__init__(*args, **({} if mask is None else {"mask": mask}), **kwargs)
        if mask is not None and mask.shape != self.kernel.shape:
            raise ValueError(
                f"{type(self).__name__}: mask shape {mask.shape} differs from the kernel's "
                f"{self.kernel.shape}."
            )

    def effective_kernel(self) -> jax.Array:
        """The kernel this layer computes with (before ``mask``)."""
        raise NotImplementedError

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        """The parent's call with :meth:`effective_kernel` in place of the stored kernel.

        Args:
          inputs: as for the parent layer.
          *args: further arguments of the parent's call.
          **kwargs: further keyword arguments of the parent's call (e.g. ``out_sharding``).

        Returns:
          The parent's output.
        """
        return self._call_with_kernel(self.effective_kernel(), inputs, *args, **kwargs)

    def _call_with_kernel(
        self, kernel: jax.Array, inputs: jax.Array, *args: Any, **kwargs: Any
    ) -> jax.Array:
        """The parent's call on a view of this layer whose kernel is ``kernel``."""
        graphdef, state = nnx.split(self)
        stored = cast("nnx.Param[jax.Array]", state["kernel"])
        state["kernel"] = stored.replace(kernel)  # a new Variable: the stored one stays raw
        view = nnx.merge(graphdef, state)
        # The parent is the layer this mixes into, which mypy cannot see from the mixin.
        return super(_TransformsKernel, view).__call__(inputs, *args, **kwargs)  # type: ignore[misc, no-any-return]


class _Standardizes(_TransformsKernel):
    """Mixin: the kernel is ``self.standardization.kernel(w)``; one argument says how."""

    def __init__(self, *args: Any, standardization: Standardization | str = DEFAULT, **kwargs: Any):
        resolved = as_standardization(
            standardization
        )  # before the parent's init: a bad value fails first
        super().__init__(*args, **kwargs)
        self.standardization = resolved

    def effective_kernel(self) -> jax.Array:
        """``self.standardization.kernel`` of the stored kernel (before ``mask``)."""
        return self.standardization.kernel(self.kernel[...])


class WSConv(_Standardizes, OutputSide, nnx.Conv):
    r"""``nnx.Conv`` with Weight Standardization, as :class:`wsjax.WSConv`.

    .. math::

       y = \operatorname{conv}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    ``WSConv(in_features, out_features, kernel_size, ..., standardization=Standardization(),
    apply_to="kernel", rngs=...)``; every other argument is that of ``nnx.Conv``.

    Args:
      *args: ``nnx.Conv``'s positional arguments.
      standardization: a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name.
      apply_to: ``"kernel"``, ``"output"`` or ``"auto"``: where the standardization is applied, as for
        the Linen :class:`wsjax.WSConv`.
      conv_general_dilated: by default :func:`wsjax.cpu.conv_general_dilated`.
      **kwargs: ``nnx.Conv``'s keyword arguments (``rngs`` included).
    """

    def __init__(
        self,
        *args: Any,
        apply_to: str = "kernel",
        conv_general_dilated: Callable[..., jax.Array] = cpu.conv_general_dilated,
        **kwargs: Any,
    ):
        check_apply_to(apply_to, "WSConv")
        super().__init__(*args, conv_general_dilated=conv_general_dilated, **kwargs)
        self.apply_to = apply_to

    def __call__(self, inputs: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        """Applies the convolution with the standardized kernel, on the side ``apply_to`` chooses.

        Args:
          inputs: ``(*batch, *spatial, in_features)``, as for ``nnx.Conv``.
          *args: further arguments of ``nnx.Conv``'s call.
          **kwargs: further keyword arguments of ``nnx.Conv``'s call (e.g. ``out_sharding``).

        Returns:
          ``(*batch, *output_spatial, out_features)``.
        """
        if not self._standardizes_output(inputs):
            return super().__call__(inputs, *args, **kwargs)  # the kernel side: a view with w_hat
        # The output side: nnx.Conv's own call computes conv(x, w) + b with the raw kernel; then the correction.
        return standardize_output(
            nnx.Conv.__call__(self, inputs, *args, **kwargs),
            self.kernel[...],
            self._window_sums(inputs),
            self.bias[...] if self.bias is not None else None,
            self.standardization,
        )


class WSConvTranspose(_Standardizes, nnx.ConvTranspose):
    r"""``nnx.ConvTranspose`` whose kernel ``(*kernel_size, in, out)`` is standardized per output channel.

    .. math::

       y = \operatorname{conv\_transpose}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    Takes ``standardization`` (a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name) and every
    argument of ``nnx.ConvTranspose``.
    """


class WSDense(_Standardizes, nnx.Linear):
    r"""``nnx.Linear`` whose kernel ``(in, out)`` is standardized per output unit.

    .. math::

       y = x \hat w + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    Takes ``standardization`` (a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name) and every
    argument of ``nnx.Linear``.
    """


class ScaledWSConv(_TransformsKernel, nnx.Conv):
    r"""``nnx.Conv`` with NFNets' Scaled Weight Standardization, as :class:`wsjax.ScaledWSConv`.

    .. math::

       y = \operatorname{conv}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = g_o \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\max(n \sigma_o^2, \epsilon)}}
       \quad\text{or, form "timm",}\quad
       \hat w_{\cdot o} = g_o \, n^{-1/2} \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    Args:
      in_features: input channels.
      out_features: output channels.
      *args: further positional arguments of ``nnx.Conv`` (``kernel_size``, ``strides``).
      eps: None: the form's default, 1e-4 for NFNets (floor of ``var * fan_in``), 1e-6 for timm.
      form: ``"nfnet"`` (NFNets' code, default) or ``"timm"`` (timm's ``ScaledStdConv2d``).
      gain_init: initializer of the ``nnx.Param`` ``gain`` of shape ``(out_features,)``, called as
        ``gain_init(key, (out_features,), param_dtype)`` with a key drawn from ``rngs.params()``; ones.
      conv_general_dilated: by default :func:`wsjax.cpu.conv_general_dilated`.
      rngs: as for ``nnx.Conv``.
      **kwargs: further keyword arguments of ``nnx.Conv``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *args: Any,
        eps: float | None = None,
        form: str = "nfnet",
        gain_init: Callable[..., jax.Array] = nnx.initializers.ones,
        conv_general_dilated: Callable[..., jax.Array] = cpu.conv_general_dilated,
        rngs: nnx.Rngs,
        **kwargs: Any,
    ):
        check_form(form, "ScaledWSConv")
        super().__init__(
            in_features,
            out_features,
            *args,
            conv_general_dilated=conv_general_dilated,
            rngs=rngs,
            **kwargs,
        )
        self.eps = eps
        self.form = form
        self.gain = nnx.Param(gain_init(rngs.params(), (out_features,), self.param_dtype))

    def effective_kernel(self) -> jax.Array:
        """``scaled_standardize`` of the stored kernel with ``gain``, in ``form`` (before ``mask``)."""
        return scaled_standardize(self.kernel[...], self.gain[...], self.eps, self.form)
