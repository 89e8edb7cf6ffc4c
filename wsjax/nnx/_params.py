"""The affine parameters of the NNX normalizations, made as ``nnx.BatchNorm`` makes its own."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
from flax import nnx

Initializer = Callable[..., jax.Array]


def affine_params(
    shape: tuple[int, ...],
    use_scale: bool,
    use_bias: bool,
    param_dtype: Any,
    rngs: nnx.Rngs | None = None,
    scale_init: Initializer = nnx.initializers.ones,
    bias_init: Initializer = nnx.initializers.zeros,
    scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    bias_metadata: Mapping[str, Any] = MappingProxyType({}),
) -> tuple[nnx.Param[jax.Array] | None, nnx.Param[jax.Array] | None]:
    """``scale`` and ``bias`` as ``nnx.BatchNorm`` makes them (its initializers, keys and metadata)."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    scale = (
        nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
        if use_scale
        else None
    )
    bias = (
        nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
        if use_bias
        else None
    )
    return scale, bias


def value(variable: nnx.Variable[jax.Array] | None) -> jax.Array | None:
    return None if variable is None else variable[...]
