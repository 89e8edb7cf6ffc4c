"""Auto-names of the Linen WS layers: those of the Flax layers they extend (``Conv_0``, not ``WSConv_0``).

Flax names an unnamed submodule ``f"{type(module).__name__}_{n}"``, counting per class name in its parent.
So that ``conv=wsjax.WSConv`` swapped into a third-party model leaves its parameter tree (and checkpoints)
as they were, a WS layer takes the next name of its Flax parent's counter, shared with the plain layers of
that class: a model mixing ``nn.Conv`` and ``WSConv`` numbers them ``Conv_0, Conv_1, ...`` in call order,
exactly as the plain model would. Explicit names, and names given by attribute in ``setup``, are untouched.

Flax has no public hook for the prefix; this reads what its ``Module.__post_init__`` reads (the dynamic
parent, its setup state and its per-prefix counter), just before Flax itself runs. ``tests/wsjax/test_layers.py``
pins the result against plain Flax models.
"""

from __future__ import annotations

import flax.linen as nn
from flax.linen import module as flax_module


def name_as_flax_layer(module: nn.Module, prefix: str) -> None:
    """Gives an unnamed ``module`` the auto-name Flax would give a ``prefix`` layer at this point.

    Call it from ``__post_init__`` before ``super().__post_init__()``. Leaves ``module.name`` alone where
    Flax would not auto-name it: a name given, a top-level module, a submodule built inside ``setup``
    (named by its attribute) or one Flax will refuse.

    Args:
      module: the Linen module being constructed.
      prefix: the class name whose counter it shares, e.g. ``"Conv"``.
    """
    if module.name is not None:
        return
    try:
        parent = module.parent
        if parent is flax_module._unspecified_parent:
            parent = flax_module._context.module_stack[-1]
        if not isinstance(parent, nn.Module):
            return
        if parent._state.in_setup or not parent._initialization_allowed:
            return
        cursor = parent._state.autoname_cursor
    except AttributeError:  # a Flax whose internals moved: its own names (WSConv_0), tests say so
        return
    index = cursor.get(prefix, 0)
    object.__setattr__(module, "name", f"{prefix}_{index}")
    cursor[prefix] = index + 1
