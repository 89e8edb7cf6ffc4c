"""Weight Standardization for an NNX model you did not write, the mirror of :func:`wsjax.standardize_convs`."""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from wsjax._output_standardization import check_apply_to
from wsjax._standardization import DEFAULT, Standardization, as_standardization
from wsjax._standardize_convs import skip_head
from wsjax.nnx._graph import as_class, replace_at
from wsjax.nnx._layers import WSConv, WSConvTranspose, WSDense

_WS_OF: dict[type, type] = {nnx.Conv: WSConv, nnx.ConvTranspose: WSConvTranspose}


def standardize_convs(
    model: nnx.Module,
    where: Callable[[tuple[str, ...]], bool] = skip_head,
    *,
    dense: bool = False,
    standardization: Standardization | str = DEFAULT,
    apply_to: str = "kernel",
) -> nnx.Module:
    r"""A copy of ``model`` whose ``nnx.Conv`` / ``nnx.ConvTranspose`` (and, with ``dense=True``,
    ``nnx.Linear``) layers are the matching wsjax layers, over the same variables, where ``where`` accepts
    their path:

    .. math::

       y = \operatorname{conv}(x, \hat w) + b, \qquad \hat w = \texttt{standardization.kernel}(w).

    Module surgery, as NNX models are object graphs: each chosen layer's state (its ``kernel``, ``bias`` and
    settings) is given to a wsjax layer in its place, so the parameter state is the model's own, variable for
    variable, and ``nnx.state`` / checkpoints load both ways. Layers of exactly Flax's classes are chosen (a
    subclass with settings of its own is left alone); the model given is not changed.

    Args:
      model: an NNX model.
      where: a predicate on a layer's path (``nnx.iter_graph``'s: attribute names and list indices, e.g.
        ``("blocks", 0, "conv")``); by default :func:`wsjax.skip_head`: every layer but a classifier head.
      dense: replace ``nnx.Linear`` layers too (still subject to ``where``).
      standardization: a :data:`wsjax.PRESETS` name or a :class:`wsjax.Standardization`.
      apply_to: the convolutions' side, as for :class:`wsjax.nnx.WSConv`.

    Returns:
      The standardized copy.
    """
    standardization = as_standardization(standardization)
    check_apply_to(apply_to, "standardize_convs")
    classes: dict[type, type] = {**_WS_OF, **({nnx.Linear: WSDense} if dense else {})}
    copy = nnx.clone(model)
    chosen = [
        (path, node)
        for path, node in nnx.iter_graph(copy)
        if type(node) in classes and where(tuple(str(p) for p in path))
    ]
    for path, layer in chosen:
        ws_class = classes[type(layer)]
        extra = {"apply_to": apply_to} if ws_class is WSConv else {}
        ws: nnx.Module = as_class(layer, ws_class, standardization=standardization, **extra)
        if not path:
            return ws
        replace_at(copy, path, ws)
    return copy
