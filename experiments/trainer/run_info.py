"""``run_info.json``: what produced a run (commit, versions, machine) and how long it trained, over resumes.

A run that is preempted or killed and rerun trains in several segments. ``train_wall_time_s`` is the sum of
every segment's time in the training loop, each counted up to its last checkpoint (work after it is redone by
the next segment, whose time counts instead) or to its end; ``segments`` lists them. Rewritten after every
checkpoint, so a ``kill -9`` loses only the time since the last one.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

from experiments.common import provenance


class RunInfo:
    """The ``run_info.json`` of a workdir, for the segment that starts now."""

    def __init__(self, workdir: pathlib.Path, resumed_from_step: int | None, enabled: bool = True):
        """Reads the earlier segments' times when resuming, then writes the file for this segment.

        Args:
          workdir: the run's workdir.
          resumed_from_step: the checkpoint this segment resumes from; None for a fresh start, which forgets
            any earlier segment.
          enabled: False on processes other than 0, which write nothing.
        """
        self.path = pathlib.Path(workdir) / "run_info.json"
        self.enabled = enabled
        earlier = {}
        if enabled and resumed_from_step is not None and self.path.exists():
            earlier = json.loads(self.path.read_text())
        self._earlier_s = float(earlier.get("train_wall_time_s", 0.0))
        self._segments = list(earlier.get("segments", []))
        self._started = time.perf_counter()
        self._segment = {
            "resumed_from_step": resumed_from_step,
            "last_step": resumed_from_step or 0,
        }
        self.info: dict[str, Any] = {}
        if enabled:
            self.info = {**provenance.describe_machine(), "resumed_from_step": resumed_from_step}
            self.update(resumed_from_step or 0)

    def update(self, step: int, **fields: Any) -> None:
        """Records that this segment reached ``step``, with ``fields`` (final metrics), and rewrites the file."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self._started
        self._segment.update(last_step=step, train_wall_time_s=elapsed)
        self.info.update(
            fields,
            train_wall_time_s=self._earlier_s + elapsed,
            segments=[*self._segments, dict(self._segment)],
        )
        # Whole or not at all: the micro-batch driver's workers read it while the run goes on.
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.info, indent=2))
        os.replace(partial, self.path)
