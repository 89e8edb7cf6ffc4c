"""Workdir checks: writable, used by one run at a time, and what to say when its disk is full."""

from __future__ import annotations

import errno
import logging
import os
import pathlib

import jax
import numpy as np

from experiments.common.errors import ConfigError
from experiments.common.filelock import try_lock


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


# How a full disk (or quota) reads where no OSError carries its errno: tensorstore, which writes the arrays of a
# checkpoint, reports it as a status message.
_FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_DISK_WORDS = ("No space left on device", "Disk quota exceeded")


def is_out_of_space(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says that the disk (or the quota) is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_DISK_ERRNOS:
            return True
        if any(words in str(error) for words in _FULL_DISK_WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def out_of_space_message(workdir: str | pathlib.Path, resume_step: int) -> str:
    """The one line a run that ran out of space ends with: where, and that a rerun loses nothing more."""
    resume = (
        f"resumes from checkpoint {resume_step}" if resume_step else "starts from the beginning"
    )
    return (
        f"no space left on the disk of workdir {pathlib.Path(workdir).absolute()}: free space there (or give "
        f"another --workdir) and rerun the same command; it {resume}, and the checkpoints already written "
        "are intact."
    )


class OutOfSpaceRecordsDropped(logging.Filter):
    """Drops log records that carry a full-disk error: the checkpointer's writer threads log the failed write
    with its traceback, through absl's logger or asyncio's (which and how many depends on which write failed
    first), and the run's one line says it. Install it on the root logger's handlers, which both reach."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not is_out_of_space(error)


def check_writable(workdir: pathlib.Path) -> None:
    """Creates ``workdir`` if needed.

    Raises:
      ConfigError: ``workdir`` cannot be created or written.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"workdir {workdir} is not writable ({e.strerror}); choose another --workdir."
        ) from e


class WorkdirLock:
    """An exclusive ``flock`` on ``WORKDIR/.lock`` held by process 0 for the whole run.

    The kernel releases it when the process dies, even by ``kill -9``, so a crashed run never blocks its rerun.
    Under several processes the others learn whether process 0 got it and refuse alike: one process stopping
    alone would leave the others waiting for it in their first collective.
    """

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / ".lock"
        self._file = None

    def __enter__(self):
        holder = None
        if jax.process_index() == 0:
            self._file, holder = try_lock(self.path)  # holder: None if taken, else who has it
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            busy = multihost_utils.broadcast_one_to_all(np.int32(holder is not None))
            if holder is None and busy:
                holder = "another process (process 0 found the lock taken)"
        if holder is not None:
            raise WorkdirBusyError(
                f"workdir {self.path.parent} is in use by {holder}; wait for it to finish or use another --workdir."
            )
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()  # closing releases the flock
