r"""Flax Linen layers whose kernel is weight-standardized on every call.

Each is a subclass of the Flax layer it names. The stored parameter is the raw kernel ``w`` (same name, shape
and initializer as in Flax) and the layer computes with

.. math::

   \hat w = \texttt{standardization.kernel}(w)

Every argument of the parent (strides, padding modes, dilation, ``feature_group_count``, ``mask``, ``dtype``,
``param_dtype`` ...) therefore keeps working. Standardization runs in ``param_dtype`` (statistics in at
least float32) before the parent casts the kernel to ``dtype``, and before ``mask`` is applied, so masked
entries stay exactly zero.

Where the standardization is applied is decided in one place, :meth:`WSConv.__call__`: on the kernel, through
``param`` (big_vision's ``StdConv`` pattern: ``nn.Conv``'s own call asks ``self.param('kernel')`` and gets
``standardize(w)``), or on the output (a plain ``nn.Conv`` on the layer's own parameters, then the correction
of :mod:`wsjax._output_standardization`). The other layers always standardize the kernel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import flax.linen as nn
import jax

from wsjax import cpu
from wsjax._autoname import name_as_flax_layer
from wsjax._output_standardization import OutputSide, check_apply_to, standardize_output
from wsjax._scaled_standardization import check_form, scaled_standardize
from wsjax._standardization import DEFAULT, Standardization, as_standardization

ConvGeneralDilated = Callable[..., jax.Array]


class _StandardizesKernel(nn.Module):
    """Mixin: ``self.param('kernel', ...)`` returns ``self.standardization.kernel`` of the stored kernel.

    ``standardization`` is the one field that says how: a :class:`wsjax.Standardization` or a
    :data:`wsjax.PRESETS` name, resolved to the Standardization when the layer is built.
    """

    standardization: Standardization | str = DEFAULT

    def __post_init__(self) -> None:
        # Before Flax freezes the dataclass (as Flax itself sets `parent` and `name` here).
        _name_as_extended_layer(self)
        object.__setattr__(self, "standardization", as_standardization(self.standardization))
        super().__post_init__()

    def param(
        self, name: str, init_fn: Callable[..., Any], *init_args: Any, **init_kwargs: Any
    ) -> Any:
        """``nn.Module.param``, but the ``kernel`` comes back standardized (the parent computes with it).

        Args:
          name: the parameter's name.
          init_fn: its initializer.
          *init_args: the initializer's arguments.
          **init_kwargs: the initializer's keyword arguments.

        Returns:
          The stored value; for ``kernel``, :meth:`effective_kernel` of it.
        """
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel":
            return value
        return self.effective_kernel({"kernel": value})

    def effective_kernel(self, params: dict[str, Any]) -> jax.Array:
        """The kernel this layer computes with, given its raw parameters.

        Args:
          params: the layer's parameters (``kernel``, and ``bias`` if any).

        Returns:
          ``self.standardization.kernel(params["kernel"])``.
        """
        return _resolved(self).kernel(params["kernel"])


class WSConv(_StandardizesKernel, OutputSide, nn.Conv):
    r"""``nn.Conv`` with Weight Standardization (Qiao et al., arXiv 1903.10520).

    .. math::

       y = \operatorname{conv}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    with per-output-channel statistics over ``kernel_size × in_features // feature_group_count`` entries, in
    the convention of ``standardization``. Every ``nn.Conv`` argument works as in ``nn.Conv``; parameter
    names, shapes and initial values are ``nn.Conv``'s, and so is an unnamed layer's auto-name (``Conv_0``).

    ``apply_to`` chooses where the standardization is applied; the maths is the same. A convolution is linear
    in its kernel, so with ``scale = 1 / sqrt(var + eps)``:

    .. math::

       \operatorname{conv}\big(x, (w - \mu) \cdot s\big)
       = \big(\operatorname{conv}(x, w) - \mu \cdot \operatorname{conv}(x, 1)\big) \cdot s

    where ``conv(x, 1)`` sums each window of ``x`` over its ``fan_in`` entries (one channel per group).

    - ``"kernel"`` (default): convolve with the standardized kernel, as the PyTorch reference does.
    - ``"output"``: convolve with the raw kernel and correct the output. No standardized kernel is written
      and the gradient needs no pass over one: cheaper when a kernel is larger than the output map (small
      batches, late layers), dearer otherwise. Rounding: the raw convolution carries an error relative to
      ``|mean| + std`` of the kernel rather than to ``std``, so a kernel whose channels have a large mean
      loses accuracy; float32 or wider only, and no ``mask``.
    - ``"auto"``: ``"output"`` where that applies and the output has fewer positions per channel
      (``batch × output pixels``) than the kernel has entries per channel (``fan_in``), else ``"kernel"``.

    Args:
      standardization: a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name (``"bit"``).
      apply_to: ``"kernel"``, ``"output"`` or ``"auto"``, as above.
      conv_general_dilated: the convolution; by default :func:`wsjax.cpu.conv_general_dilated`, which is
        ``lax.conv_general_dilated`` except for CPU output maps smaller than the kernel, where it is exact
        and faster. Pass ``jax.lax.conv_general_dilated`` for XLA's own everywhere.
    """

    apply_to: str = "kernel"
    conv_general_dilated: ConvGeneralDilated | None = cpu.conv_general_dilated

    def __post_init__(self) -> None:
        check_apply_to(self.apply_to, "WSConv")
        super().__post_init__()

    # compact: Flax rewinds the scope after each call, so a layer called twice (shared weights) may reserve
    # its parameter names again, whichever side, or module, reserved them the time before.
    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        """Applies the convolution with the standardized kernel, on the side ``apply_to`` chooses.

        Args:
          inputs: ``(*batch, *spatial, in_features)``, as for ``nn.Conv``.

        Returns:
          ``(*batch, *output_spatial, features)``.
        """
        if not self._standardizes_output(inputs):
            # The kernel side: nn.Conv's own call, whose self.param("kernel") is standardize(w) (see param).
            return super().__call__(inputs)
        # The output side: a plain nn.Conv bound to this layer's own scope, so with the same parameters
        # (names, shapes and initialization), computes conv(x, w) + b with the raw kernel; then the correction.
        # (Flax takes a Scope for a parent, as Module.apply passes one; its annotation names Modules only.)
        plain = nn.Conv(**_conv_arguments(self), parent=self.scope)  # type: ignore[arg-type]
        return standardize_output(
            plain(inputs),
            self.get_variable("params", "kernel"),
            self._window_sums(inputs),
            self.get_variable("params", "bias") if self.use_bias else None,
            _resolved(self),
        )


def _resolved(layer: _StandardizesKernel) -> Standardization:
    """``layer.standardization``, a :class:`Standardization` once built (the field also takes a name)."""
    return cast(Standardization, layer.standardization)


def _conv_arguments(layer: nn.Conv) -> dict[str, Any]:
    """Every ``nn.Conv`` argument of ``layer`` (but ``parent`` and ``name``), to build a plain twin."""
    return {
        field.name: getattr(layer, field.name)
        for field in dataclasses.fields(nn.Conv)
        if field.init and field.name not in ("parent", "name")
    }


class WSConvTranspose(_StandardizesKernel, nn.ConvTranspose):
    r"""``nn.ConvTranspose`` whose kernel ``(*kernel_size, in, out)`` is standardized per output channel.

    .. math::

       y = \operatorname{conv\_transpose}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    Args:
      standardization: a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name.
    """


class WSDense(_StandardizesKernel, nn.Dense):
    r"""``nn.Dense`` whose kernel ``(in, out)`` is standardized per output unit over its ``in`` inputs.

    .. math::

       y = x \hat w + b, \qquad
       \hat w_{\cdot o} = \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    Args:
      standardization: a :class:`wsjax.Standardization` or a :data:`wsjax.PRESETS` name.
    """


class ScaledWSConv(nn.Conv):
    r"""``nn.Conv`` with the Scaled Weight Standardization of NFNets (arXiv 2102.06171).

    .. math::

       y = \operatorname{conv}(x, \hat w) + b, \qquad
       \hat w_{\cdot o} = g_o \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\max(n \sigma_o^2, \epsilon)}}
       \quad\text{or, form "timm",}\quad
       \hat w_{\cdot o} = g_o \, n^{-1/2} \, \frac{w_{\cdot o} - \mu_o}{\sqrt{\sigma_o^2 + \epsilon}}

    with a learnable per-output-channel gain :math:`g` (parameter ``'gain'``) and the biased variance over
    the ``n = fan_in`` entries of each channel (see :func:`wsjax.scaled_standardize`).

    Args:
      eps: None: the form's default, 1e-4 for NFNets (floor of ``var * fan_in``), 1e-6 for timm (added to
        ``var``).
      form: ``"nfnet"`` (NFNets' code, default) or ``"timm"`` (timm's ``ScaledStdConv2d``).
      gain_init: initializer of ``gain``, called as ``gain_init(key, (features,), param_dtype)``; ones.
      conv_general_dilated: as for :class:`WSConv`, :func:`wsjax.cpu.conv_general_dilated` by default.
    """

    eps: float | None = None
    form: str = "nfnet"
    gain_init: Callable[..., jax.Array] = nn.initializers.ones
    conv_general_dilated: ConvGeneralDilated | None = cpu.conv_general_dilated

    def __post_init__(self) -> None:
        check_form(self.form, "ScaledWSConv")
        _name_as_extended_layer(self)
        super().__post_init__()

    def param(
        self, name: str, init_fn: Callable[..., Any], *init_args: Any, **init_kwargs: Any
    ) -> Any:
        """``nn.Module.param``; asked for the ``kernel``, creates ``gain`` too and returns :math:`\\hat w`.

        Args:
          name: the parameter's name.
          init_fn: its initializer.
          *init_args: the initializer's arguments.
          **init_kwargs: the initializer's keyword arguments.

        Returns:
          The stored value; for ``kernel``, :meth:`effective_kernel` of it and ``gain``.
        """
        value = super().param(name, init_fn, *init_args, **init_kwargs)
        if name != "kernel":
            return value
        gain = super().param("gain", self.gain_init, (self.features,), self.param_dtype)
        return self.effective_kernel({"kernel": value, "gain": gain})

    def effective_kernel(self, params: dict[str, Any]) -> jax.Array:
        """The kernel this layer convolves with, given its raw parameters (``gain`` folded in).

        Args:
          params: the layer's parameters (``kernel``, ``gain``, and ``bias`` if any).

        Returns:
          ``scaled_standardize(params["kernel"], params["gain"], self.eps, self.form)``.
        """
        return scaled_standardize(params["kernel"], params["gain"], self.eps, self.form)


# The Flax layer each extends, whose auto-names (Conv_0, ...) it takes; a user's subclass keeps Flax's own.
_EXTENDED_LAYER_NAMES = {
    WSConv: "Conv",
    WSConvTranspose: "ConvTranspose",
    WSDense: "Dense",
    ScaledWSConv: "Conv",
}


def _name_as_extended_layer(module: nn.Module) -> None:
    prefix = _EXTENDED_LAYER_NAMES.get(type(module))
    if prefix is not None:
        name_as_flax_layer(module, prefix)


def is_standardized(module: nn.Module) -> bool:
    """Whether a Linen module computes with a standardized copy of its ``kernel`` parameter."""
    return isinstance(module, (_StandardizesKernel, ScaledWSConv))
