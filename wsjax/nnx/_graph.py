"""Swapping a layer of an NNX model for another class over the same state (folding, standardizing).

An NNX layer keeps its variables and settings as attributes but not its constructor's arguments, so a layer of
another class with the same state is made by giving the state to an object of that class, not by building one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flax import nnx


def as_class(layer: object, cls: type, drop: Iterable[str] = (), **add: Any) -> Any:
    """An instance of ``cls`` holding ``layer``'s attributes, less ``drop``, plus ``add``."""
    dropped = set(drop)
    new: Any = object.__new__(cls)
    new.__dict__.update({name: v for name, v in vars(layer).items() if name not in dropped})
    for name, value in add.items():
        setattr(new, name, value)
    return new


def replace_at(model: nnx.Module, path: tuple[Any, ...], layer: object) -> None:
    """Puts ``layer`` where ``path`` (as ``nnx.iter_graph`` gives it) leads in ``model``."""
    parent: Any = model
    for key in path[:-1]:
        parent = (
            parent[key]
            if isinstance(key, int) or not hasattr(parent, str(key))
            else getattr(parent, key)
        )
    if isinstance(path[-1], int) or not hasattr(parent, str(path[-1])):
        parent[path[-1]] = layer
    else:
        setattr(parent, path[-1], layer)
