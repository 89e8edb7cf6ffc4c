"""Orbax checkpoints of the train state: periodic, keep the last few, resume from the newest readable one.

Checkpoints are written by orbax as tensorstore arrays plus JSON metadata: nothing is ever unpickled. A
checkpoint becomes visible only once complete (orbax writes to a temporary directory and renames it), so a
kill mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
import time
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
            # Named up front so that item_metadata() can read a checkpoint's shapes before any restore.
            item_handlers=ocp.StandardCheckpointHandler(),
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

        A checkpoint whose files are damaged (:func:`is_damage`) is moved to ``unreadable_checkpoints/`` and
        the previous one is tried.

        Returns:
          ``(state, step, skipped)``: ``step`` None when there is no checkpoint, ``skipped`` a message per
          newer checkpoint that could not be read.

        Raises:
          CheckpointMismatchError: the newest checkpoint reads but does not match ``target``'s structure
            or shapes (another model or config in this workdir).
          Exception: any error that does not prove the checkpoint damaged (an I/O error, a permission, a
            bug), as raised: the checkpoint stays where it is for the rerun.
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
            except Exception as e:
                if not is_damage(
                    e
                ):  # e.g. an I/O error or a permission: the checkpoint may be fine
                    raise
                moved = self._quarantine(step)
                message = (
                    f"checkpoint {step} is unreadable ({type(e).__name__}: {str(e)[:160]}); skipped it "
                    f"and moved it to {moved}"
                )
                log.warning(message)
                skipped.append(message)
        return target, None, skipped

    def _quarantine(self, step: int) -> pathlib.Path:
        """Moves an unreadable checkpoint out of the way (kept for inspection, never deleted)."""
        source = self.directory / str(step)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.directory.parent / "unreadable_checkpoints" / f"{step}-{stamp}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
        self.manager.reload()
        return target

    def _check_shapes(self, step: int, abstract: Any) -> None:
        """Compares every saved entry's shape with the target's before restoring.

        A checkpoint that reads but differs (another model, another optimizer) is the user's to resolve,
        never to be mistaken for a corrupt one and moved aside.
        """
        saved = _shapes(getattr(self.manager.item_metadata(step), "tree", None) or {})
        wanted = _shapes(abstract)
        if not saved:
            return  # no metadata to compare: let the restore itself decide
        for name in sorted(set(saved) | set(wanted)):
            if saved.get(name) != wanted.get(name):
                raise CheckpointMismatchError(
                    f"checkpoint {step} in {self.directory} does not fit this config: {name} is "
                    f"{saved.get(name, 'absent')} there but {wanted.get(name, 'absent')} here (a different "
                    f"model or optimizer wrote it). Use a new --workdir, or the config that wrote it."
                )

    def close(self) -> None:
        self.manager.close()


# Words of errors that say nothing about the checkpoint's files: the storage, the permissions or the machine
# (tensorstore reports them as a ValueError with its status code first, e.g. "PERMISSION_DENIED: ...").
_NOT_DAMAGE = (
    "PERMISSION_DENIED",
    "UNAVAILABLE",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "CANCELLED",
    "UNAUTHENTICATED",
    "Input/output error",
    "Permission denied",
    "No space left",
    "Too many open files",
    "Stale file handle",
)


def is_damage(error: BaseException) -> bool:
    """Whether ``error``, raised by reading a checkpoint, proves its files missing, truncated or corrupt.

    True for a missing file (``FileNotFoundError``) and for content that does not parse: ``ValueError``,
    which covers JSON and UTF-8 decoding and tensorstore's ``NOT_FOUND``, ``OUT_OF_RANGE`` and corrupt-data
    errors. False for anything else, and for any error whose chain holds an ``OSError`` other than a
    missing file (``EIO``, ``PermissionError``, ...) or names a transient condition (:data:`_NOT_DAMAGE`).
    """
    chain, seen = [], set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in chain:
        if isinstance(link, OSError) and not isinstance(link, FileNotFoundError):
            return False
        if any(word in str(link) for word in _NOT_DAMAGE):
            return False
    return isinstance(error, (FileNotFoundError, ValueError))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'params/conv1_1/kernel': shape, 'opt_state/0/mu/...': shape, ...}`` of a state or metadata tree."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        shapes["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return shapes
