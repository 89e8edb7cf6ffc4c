"""Dtype rules shared by every wsjax layer (valid under ``jax_numpy_dtype_promotion='strict'``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def stats_dtype(dtype: Any) -> Any:
    """Statistics dtype: float32, or float64 for float64 inputs (bf16/fp16 statistics lose digits)."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def output_dtype(x: jax.Array, dtype: Any, param_dtype: Any) -> Any:
    """Flax's convention: ``dtype`` if given, else the promotion of the input and parameter dtypes."""
    if dtype is not None:
        return dtype
    with jax.numpy_dtype_promotion("standard"):  # an explicit, deliberate promotion
        return jnp.promote_types(x.dtype, param_dtype)
