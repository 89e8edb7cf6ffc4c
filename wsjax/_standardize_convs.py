r"""Weight Standardization for a Linen model you did not write: its convolutions standardized where you say.

:func:`standardize_convs` wraps a model so that, on every call, each ``nn.Conv`` / ``nn.ConvTranspose`` (and,
asked, ``nn.Dense``) whose module path the predicate accepts computes as the matching wsjax layer,

.. math::

   y = \operatorname{conv}(x, \hat w) + b, \qquad \hat w = \texttt{standardization.kernel}(w),

from the same parameters. It works through ``nn.intercept_methods`` rather than by rebuilding the model: a
Linen model creates most of its layers inside its own ``__call__`` (``@nn.compact``), where no ``clone`` or
field can reach them, and interception sees each layer as it is called, with its path and every argument it
was built with. The wrapper shares the model's scope (``nn.share_scope``), so the parameter tree is the
model's own: a checkpoint of the plain model loads into the standardized one and back.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn

from wsjax._layers import WSConv, WSConvTranspose, WSDense, is_standardized
from wsjax._standardization import DEFAULT, Standardization

#: Module names taken for a classifier head, which :func:`skip_head` leaves plain: WS on a network's last
#: layer can hurt (composer leaves DeepLabv3+'s last convolutions out; users of the official code report
#: worse training with it on every layer).
HEAD_NAMES = re.compile(r"(head|classifier|logits|fc|output)(_\d+)?$", re.IGNORECASE)


def skip_head(path: Sequence[str]) -> bool:
    """The default ``where``: every layer but a classifier head (a last path element in :data:`HEAD_NAMES`)."""
    return not (path and HEAD_NAMES.match(str(path[-1])))


_WS_OF: dict[type, type] = {nn.Conv: WSConv, nn.ConvTranspose: WSConvTranspose}


class StandardizedConvs(nn.Module):
    """``model`` with its convolutions weight-standardized where ``where`` says (see :func:`standardize_convs`).

    Attributes:
      model: the Linen model.
      where: a predicate on a layer's module path (a tuple of names); True: standardize it.
      dense: standardize ``nn.Dense`` layers too.
      standardization: the convention, a :data:`wsjax.PRESETS` name or a :class:`wsjax.Standardization`.
      apply_to: the convolutions' side, as for :class:`wsjax.WSConv`.
    """

    model: nn.Module
    where: Callable[[tuple[str, ...]], bool] = skip_head
    dense: bool = False
    standardization: Standardization | str = DEFAULT
    apply_to: str = "kernel"

    def setup(self) -> None:
        nn.share_scope(self, self.model)  # the model's parameter tree, not nested under "model"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The model's call, its chosen layers standardized."""
        # Read once, here: inside the interceptor, a call of this module's own methods would be intercepted too.
        where, dense, apply_to = self.where, self.dense, self.apply_to
        options = {"standardization": self.standardization}
        inside: list[nn.Module] = []  # the wsjax layer being called, if any

        def standardize(
            next_fun: Callable[..., Any],
            call_args: tuple[Any, ...],
            call_kwargs: dict[str, Any],
            context: Any,
        ) -> Any:
            module = context.module
            ws_class = _ws_class(module, dense)
            # Whatever a wsjax layer calls (its plain convolution on its own parameters, the convolution of
            # ones of its output side) is its business: only the model's own layers are chosen.
            if inside or context.method_name != "__call__" or ws_class is None:
                return next_fun(*call_args, **call_kwargs)
            if not where(tuple(module.scope.path)):
                return next_fun(*call_args, **call_kwargs)
            extra = {"apply_to": apply_to} if ws_class is WSConv else {}
            layer = ws_class(**_arguments(module), **options, **extra, parent=module.scope)
            inside.append(layer)
            try:
                return layer(*call_args, **call_kwargs)
            finally:
                inside.pop()

        with nn.intercept_methods(standardize):
            return self.model(*args, **kwargs)


def _ws_class(module: nn.Module, dense: bool) -> type | None:
    """The wsjax class standing in for ``module``'s, or None where it stays as it is."""
    if is_standardized(module):
        return None
    if dense and type(module) is nn.Dense:
        return WSDense
    return _WS_OF.get(type(module))


def _arguments(layer: nn.Module) -> dict[str, Any]:
    """Every constructor argument of a Flax layer (but ``parent`` and ``name``), to build its WS twin."""
    return {
        field.name: getattr(layer, field.name)
        for field in dataclasses.fields(type(layer))
        if field.init and field.name not in ("parent", "name")
    }


def standardize_convs(
    model: nn.Module,
    where: Callable[[tuple[str, ...]], bool] = skip_head,
    *,
    dense: bool = False,
    standardization: Standardization | str = DEFAULT,
    apply_to: str = "kernel",
) -> StandardizedConvs:
    """``model`` with its ``nn.Conv`` / ``nn.ConvTranspose`` (and, with ``dense=True``, ``nn.Dense``) layers
    weight-standardized, those whose module path ``where`` accepts.

    The layers are Flax's own classes exactly (a subclass of ``nn.Conv`` with fields of its own is left
    alone); a layer already standardized stays as it is. ``init`` and ``apply`` take the model's arguments and
    give the model's parameter tree, so checkpoints load both ways; only ``__call__`` is standardized (call
    other methods on the model itself).

    Args:
      model: a Linen model, e.g. flax's example ResNet or big_vision's.
      where: a predicate on a layer's path, e.g. ``lambda path: path[0] != "stem"``; by default
        :func:`skip_head`: every layer but a classifier head.
      dense: standardize ``nn.Dense`` layers too (still subject to ``where``).
      standardization: a :data:`wsjax.PRESETS` name or a :class:`wsjax.Standardization`.
      apply_to: the convolutions' side (``"kernel"``, ``"output"`` or ``"auto"``), as for :class:`wsjax.WSConv`.

    Returns:
      A Linen module: ``standardize_convs(model).init(key, x)`` and ``.apply(variables, x)``.
    """
    return StandardizedConvs(model, where, dense, standardization, apply_to)
