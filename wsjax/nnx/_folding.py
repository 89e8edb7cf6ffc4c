"""Fold Weight Standardization into the kernels of an NNX model, for inference with plain Flax layers."""

from __future__ import annotations

from flax import nnx

from wsjax.nnx._graph import as_class, replace_at
from wsjax.nnx._layers import _TransformsKernel

# What a WS layer holds beyond its Flax parent's attributes (the parent's constructor arguments stay).
_WS_ATTRIBUTES = ("standardization", "apply_to", "gain", "eps", "form")


def fold_weight_standardization(model: nnx.Module) -> nnx.Module:
    r"""A copy of ``model`` whose WS layers are plain ``nnx.Conv`` / ``nnx.ConvTranspose`` / ``nnx.Linear``.

    .. math::

       w \leftarrow \hat w = \texttt{standardization.kernel}(w)
       \quad\text{(a ScaledWSConv: } g \text{ folded in)}

    At inference ``w`` is fixed, so each WS layer's standardized kernel is computed once and stored; the
    layer becomes an instance of its Flax parent class with every other attribute as it was (strides,
    padding, mask, dtypes, its convolution function), so the copy computes what the WS model computes in
    evaluation, with no statistics per call. An NNX layer does not keep its constructor's arguments, so the
    plain layer is the same object's state under its Flax class rather than a new layer built from them.
    The model given is not changed; the running statistics of its norms are copied as they are.

    Args:
      model: an NNX model containing WS layers (``wsjax.nnx.WSConv`` and friends).

    Returns:
      The folded copy; put it in evaluation mode as the original (``model.eval()`` or ``nnx.view``).
    """
    folded = nnx.clone(model)
    layers = [
        (path, node) for path, node in nnx.iter_graph(folded) if isinstance(node, _TransformsKernel)
    ]
    for path, layer in layers:
        kernel = layer.effective_kernel()
        flax_class = next(c for c in type(layer).__mro__ if c.__module__.startswith("flax."))
        plain: nnx.Module = as_class(layer, flax_class, drop=_WS_ATTRIBUTES)
        stored = layer.kernel  # the same Variable, now the plain layer's
        stored[...] = kernel.astype(stored[...].dtype)
        if not path:
            return plain  # the model is itself one WS layer
        replace_at(folded, path, plain)
    return folded
