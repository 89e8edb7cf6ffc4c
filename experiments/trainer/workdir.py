"""Workdir checks: writable, and used by one run at a time."""

from __future__ import annotations

import os
import pathlib

import jax
import numpy as np

from experiments.common.errors import ConfigError
from experiments.common.filelock import try_lock


class WorkdirBusyError(RuntimeError):
    """Another run holds the workdir."""


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
