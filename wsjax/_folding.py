"""Fold Weight Standardization into the kernels, for inference with plain ``nn.Conv`` / ``nn.Dense``.

A WS layer computes with ``standardize(w)``; at inference ``w`` is fixed, so the standardized kernel can be
stored instead and the model run with plain layers, saving the per-call statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax

from wsjax._layers import is_standardized

Variables = Any


def fold_weight_standardization(
    model: nn.Module, variables: Variables, *args: Any, **kwargs: Any
) -> Variables:
    r"""Returns ``variables`` with every WS layer's kernel replaced by the kernel it computes with.

    .. math::

       w \leftarrow \hat w = \texttt{standardization.kernel}(w)
       \quad\text{(a ScaledWSConv: } g \text{ folded in)}

    The model is traced once (shapes only, with ``jax.eval_shape``) on ``*args, **kwargs`` to find its WS
    layers; a ``ScaledWSConv``'s ``gain`` is folded into its kernel and dropped. The result feeds the same
    architecture built with ``nn.Conv`` / ``nn.Dense`` in place of the WS layers: an unnamed WS layer is
    auto-named as the Flax layer it extends (``Conv_0``, ``Dense_0``), so the names agree. Pass the
    inference arguments (``train=False``): a batch norm synced over a mapped axis cannot run in training
    mode outside that axis.

    Args:
      model: a Linen model containing WS layers.
      variables: its trained variables (``{'params': ..., 'batch_stats': ...}``).
      *args: a sample input (its shape is all that matters), e.g. ``jnp.zeros((1, 32, 32, 3))``.
      **kwargs: further arguments of ``model.__call__``, e.g. ``train=False``.

    Returns:
      New variables, same tree except the folded kernels and the removed gains.

    Raises:
      ValueError: the call reduces over an unbound mapped axis (a synced batch norm with ``train=True``).
      TypeError: ``model`` is an NNX module (fold it with :func:`wsjax.nnx.fold_weight_standardization`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"fold_weight_standardization: {type(model).__name__} is not a Linen module; an NNX model folds "
            "with wsjax.nnx.fold_weight_standardization(model), which returns the folded model."
        )
    ws_layers: dict[tuple[str, ...], nn.Module] = {}

    def record_ws_layers(
        next_fun: Callable[..., Any],
        call_args: tuple[Any, ...],
        call_kwargs: dict[str, Any],
        context: nn.module.InterceptorContext,
    ) -> Any:
        module = context.module
        if context.method_name == "__call__" and is_standardized(module):
            assert module.scope is not None  # an intercepted call is on a bound module
            ws_layers[module.scope.path] = module.clone(parent=None)
        return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(record_ws_layers):
        try:
            jax.eval_shape(lambda v: model.apply(v, *args, mutable=True, **kwargs), variables)
        except NameError as error:
            # A batch norm synced over a mapped axis (axis_name) in training mode reduces over that axis,
            # which no transformation binds here; the inference path has no collective.
            if "axis name" not in str(error):
                raise
            raise ValueError(
                "fold_weight_standardization: the model's call reduces over a mapped axis that is not "
                f"bound here ({error}); fold with its inference arguments, e.g. train=False (the "
                "layers' shapes are all that folding traces)."
            ) from error

    folded = flax.core.unfreeze(variables)
    for path, module in ws_layers.items():
        layer_params = folded["params"]
        for name in path:
            layer_params = layer_params[name]
        layer_params["kernel"] = module.effective_kernel(layer_params)
        layer_params.pop("gain", None)
    return folded
