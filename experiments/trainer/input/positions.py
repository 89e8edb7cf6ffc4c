"""The streaming iterator's position at each checkpointed step: ``WORKDIR/input_positions/STEP/process_I.json``.

Written (atomically: a temporary file, then a rename) *before* orbax writes the checkpoint of the same step,
so every checkpoint that exists has its positions; a position without its checkpoint (a kill between the
two) is rewritten identically when the rerun reaches that step again. Positions of steps older than the oldest
checkpoint kept are deleted. Each process writes its own file (its own shard's position); a few hundred bytes
of grain's JSON state. Kept beside ``checkpoints/`` rather than inside a step's folder so that orbax's
layout, and ``checkpoints.py``, are untouched.
"""

from __future__ import annotations

import os
import pathlib
import shutil


class Positions:
    def __init__(self, workdir: str | os.PathLike, process_index: int):
        self.directory = pathlib.Path(workdir).absolute() / "input_positions"
        self.process_index = process_index

    def path(self, step: int) -> pathlib.Path:
        return self.directory / str(step) / f"process_{self.process_index}.json"

    def save(self, step: int, position: str) -> None:
        path = self.path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        temporary.write_text(position)
        temporary.replace(path)

    def load(self, step: int) -> str | None:
        path = self.path(step)
        return path.read_text() if path.exists() else None

    def prune(self, kept_steps: list[int]) -> None:
        """Deletes the positions of steps before the oldest checkpoint kept (process 0 only)."""
        if self.process_index != 0 or not kept_steps or not self.directory.exists():
            return
        for folder in self.directory.iterdir():
            if folder.name.isdigit() and int(folder.name) < min(kept_steps):
                shutil.rmtree(folder, ignore_errors=True)
