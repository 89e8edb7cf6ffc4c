"""Orbax checkpoints of the train state: periodic, keep the last few, resume from the newest readable one.

Checkpoints are written by orbax as tensorstore arrays plus JSON metadata: nothing is ever unpickled. A
checkpoint becomes visible only once complete (orbax writes to a temporary directory and renames it), so a
kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoints belong to a different model or optimizer."""


class Checkpoints:
    """The ``checkpoints/`` folder of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, keep: int):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False
            ),
        )

    def save(self, step: int, state: Any) -> None:
        """Writes ``state`` as checkpoint ``step`` (replacing nothing: an existing step is kept)."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def restore_latest(self, target: Any) -> tuple[Any, int | None, list[str]]:
        """Restores the newest checkpoint that reads back, shaped and sharded like ``target``.

        Returns:
          ``(state, step, skipped)``: ``step`` None when there is no checkpoint, ``skipped`` a message per
          newer checkpoint that could not be read.

        Raises:
          CheckpointMismatchError: the newest checkpoint reads but does not match ``target``'s structure
            or shapes (another model or config in this workdir).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        skipped = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._check_shapes(step, abstract)
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
                return state, step, skipped
            except CheckpointMismatchError:
                raise
            except (
                Exception
            ) as e:  # a truncated or corrupt checkpoint: fall back to the previous one
                message = (
                    f"checkpoint {step} is unreadable ({type(e).__name__}: {str(e)[:200]}); skipped"
                )
                log.warning(message)
                skipped.append(message)
        return target, None, skipped

    def _check_shapes(self, step: int, abstract: Any) -> None:
        """Compares the saved parameter and statistics shapes with the model's, before any restore."""
        saved = _model_shapes(getattr(self.manager.item_metadata(step), "tree", None) or {})
        wanted = _model_shapes(abstract)
        if not saved:
            return  # no metadata to compare: let the restore itself decide
        for name in sorted(set(saved) | set(wanted)):
            if saved.get(name) != wanted.get(name):
                raise CheckpointMismatchError(
                    f"checkpoint {step} in {self.directory} does not fit this config's model: {name} is "
                    f"{saved.get(name, 'absent')} there but {wanted.get(name, 'absent')} here. It was written "
                    f"by a different model; use a new --workdir, or the config that wrote it."
                )

    @property
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def close(self) -> None:
        self.manager.close()


def _model_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'params/conv1_1/kernel': shape, ...}`` for the params and batch_stats of a state or metadata tree."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if names and names[0] in ("params", "batch_stats") and hasattr(leaf, "shape"):
            shapes["/".join(names)] = tuple(leaf.shape)
    return shapes
