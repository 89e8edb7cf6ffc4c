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
import zlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)
_ITEM = "default"  # the folder of a checkpoint's one item (the manager's default item name)


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoints belong to a different model or optimizer."""


class CheckpointViewError(ValueError):
    """The processes of one run see different checkpoints (the workdir is not one shared filesystem)."""


class CheckpointPeerError(RuntimeError):
    """Another process could not read the checkpoint this one read (its own error says why)."""


class Checkpoints:
    """The ``checkpoints/`` folder of a workdir."""

    def __init__(self, workdir: str | pathlib.Path, keep: int):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self._reader = ocp.StandardCheckpointHandler()
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

        Under several processes every step is agreed: each process lists the checkpoints it sees and they
        must list the same (else :class:`CheckpointViewError`, the workdir is not one shared filesystem),
        then each tries the newest and they exchange the outcome. If any process found it damaged, process 0
        alone moves it aside and says so, and all wait at a barrier before listing again; if any failed
        otherwise, every process raises. So all resume from one step, and a checkpoint is moved only once.

        Returns:
          ``(state, step, skipped)``: ``step`` None when there is no checkpoint, ``skipped`` a message per
          newer checkpoint that could not be read (on process 0; empty on the others).

        Raises:
          CheckpointMismatchError: the newest checkpoint reads but does not match ``target``'s structure
            or shapes (another model or config in this workdir).
          CheckpointViewError: processes see different checkpoints.
          Exception: any error that does not prove the checkpoint damaged (an I/O error, a permission, a
            bug), as raised: the checkpoint stays where it is for the rerun. Processes that read it without
            error raise :class:`CheckpointPeerError`.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        skipped = []
        while steps := self._agreed_steps():
            step = steps[-1]
            state, error = None, None
            try:
                self._check_shapes(step, abstract)
                state = self._read(step, abstract)
            except Exception as e:
                error = e
            outcomes = _gather(_outcome(error))
            if error is not None and _outcome(error) == _FAILED:
                raise error  # not damage (e.g. an I/O error, a permission): the checkpoint may be fine
            if _FAILED in outcomes:
                raise CheckpointPeerError(
                    f"checkpoint {step} could not be read on process(es) {_indices(outcomes, _FAILED)} "
                    f"(see their error); it was left in place."
                )
            if _DAMAGED not in outcomes:
                return state, step, skipped
            moved = self._quarantine(step)
            detail = f"{type(error).__name__}: {str(error)[:160]}" if error is not None else ""
            if jax.process_index() == 0:
                damaged = _indices(outcomes, _DAMAGED)
                where = "" if len(damaged) == len(outcomes) else f" on process(es) {damaged}"
                message = (
                    f"checkpoint {step} is unreadable{where} ({detail or 'see their log'}); skipped it "
                    f"and moved it to {moved}"
                )
                log.warning(message)
                skipped.append(message)
            elif error is not None and outcomes[0] != _DAMAGED:  # process 0 has not the details
                log.warning(
                    f"checkpoint {step} is unreadable on process {jax.process_index()} ({detail})"
                )
        return target, None, skipped

    def _read(self, step: int, abstract: Any) -> Any:
        """Checkpoint ``step``'s state, through its item's handler.

        Not ``CheckpointManager.restore``: that ends in a barrier across processes which a process whose
        read failed never reaches, leaving the processes out of step in their next collectives (a hang, or
        one's data taken for another's). The handler reads with no collective; the exchange of outcomes in
        :meth:`restore_latest` is the only one.
        """
        return self._reader.restore(
            self.directory / str(step) / _ITEM, args=ocp.args.StandardRestore(abstract)
        )

    def _agreed_steps(self) -> list[int]:
        """The steps of the checkpoints in the folder, the same on every process.

        Raises:
          CheckpointViewError: another process lists other checkpoints.
        """
        steps = sorted(self.manager.all_steps())
        newest = steps[-1] if steps else -1
        # One int32 pair per process: the newest step, and a CRC of the whole list.
        mine = np.array([newest, zlib.crc32(repr(steps).encode()) & 0x7FFFFFFF], np.int32)
        seen = _gather(mine)
        if any(not np.array_equal(row, mine) for row in seen):
            newest_seen = {i: int(row[0]) for i, row in enumerate(seen)}
            raise CheckpointViewError(
                f"the processes see different checkpoints in {self.directory} (newest step per process, -1 "
                f"for none: {newest_seen}); every process must see the same workdir (one shared "
                f"filesystem, e.g. a bucket or NFS); nothing was restored."
            )
        return steps

    def _quarantine(self, step: int) -> pathlib.Path:
        """Moves an unreadable checkpoint out of the way (kept for inspection, never deleted).

        Process 0 moves it; every process waits until it has (or has failed to), then re-reads the folder.
        """
        source = self.directory / str(step)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.directory.parent / "unreadable_checkpoints" / f"{step}-{stamp}"
        error = None
        if jax.process_index() == 0:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(source), str(target))
            except OSError as e:
                error = e
        # The barrier: every process waits here until process 0 has moved it (or failed to).
        moved = _gather(error is None)[0]
        if error is not None:
            raise error
        if not moved:
            raise CheckpointPeerError(
                f"process 0 could not move the unreadable checkpoint {step} aside (see its error)."
            )
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
        self._reader.close()
        self.manager.close()


def newest_step(workdir: str | pathlib.Path) -> int:
    """The newest complete checkpoint's step in ``workdir`` (0 for none), from the folder names alone.

    Orbax publishes a checkpoint by renaming its temporary folder to the bare step number.
    """
    directory = pathlib.Path(workdir) / "checkpoints"
    steps = (
        [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
    )
    return max(steps, default=0)


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


# What reading a checkpoint came to on one process, exchanged so that all act alike.
_READ, _DAMAGED, _FAILED = 0, 1, 2


def _outcome(error: BaseException | None) -> int:
    if error is None:
        return _READ
    if isinstance(error, CheckpointMismatchError) or not is_damage(error):
        return _FAILED
    return _DAMAGED


def _gather(value: Any) -> list[Any]:
    """``value`` of every process, in process order (no communication with one process)."""
    if jax.process_count() == 1:
        return [value]
    return list(multihost_utils.process_allgather(np.asarray(value, np.int32)))


def _indices(values: list[int], wanted: int) -> list[int]:
    return [i for i, v in enumerate(values) if v == wanted]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{'params/conv1_1/kernel': shape, 'opt_state/0/mu/...': shape, ...}`` of a state or metadata tree."""
    shapes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        shapes["/".join(names)] = tuple(getattr(leaf, "shape", ()))
    return shapes
