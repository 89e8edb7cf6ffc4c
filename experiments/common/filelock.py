"""A non-blocking exclusive ``flock``, without JAX: the micro-batch driver's parent must not import it."""

from __future__ import annotations

import fcntl
import os
import pathlib
from typing import IO


def try_lock(path: pathlib.Path) -> tuple[IO[str] | None, str | None]:
    """Takes an exclusive lock on ``path`` (created if missing) without waiting.

    The kernel releases it when the holder closes the file or dies, even by ``kill -9``, so a crashed holder
    never blocks the next one. The holder writes ``pid N`` into the file, for the message of whoever finds it
    taken.

    Returns:
      ``(file, None)`` when taken: keep ``file`` open for as long as the lock must be held, close it to release;
      ``(None, holder)`` when another process holds it, ``holder`` as the file names it.
    """
    file = path.open("a+")
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        file.seek(0)
        holder = file.read().strip() or "another process"
        file.close()
        return None, holder
    file.seek(0)
    file.truncate()
    file.write(f"pid {os.getpid()}")
    file.flush()
    return file, None
