"""A ``jax.profiler`` trace of some training steps (``config.profile_steps``), written to ``WORKDIR/profile/``.

The trace starts after the segment's first step, which compiles, and covers ``count`` steps (with whatever
evaluation or checkpoint falls among them); the device is waited for at both ends so that the window holds
exactly those steps. Open it with TensorBoard's profile plugin (``tensorboard --logdir WORKDIR/profile``) or
Perfetto (the ``.trace.json.gz`` beside the ``.xplane.pb``). Process 0 traces; the others run untraced.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax


class StepProfiler:
    """Starts a trace before step ``first`` and stops it after step ``first + count - 1``."""

    def __init__(self, directory: pathlib.Path, first: int, count: int, enabled: bool = True):
        self.directory = directory
        self.first, self.last = first, first + count - 1
        self.enabled = enabled and count > 0
        self._tracing = False

    def before(self, step: int, state: Any) -> None:
        """Call before running ``step``."""
        if self.enabled and step == self.first:
            jax.block_until_ready(state)  # earlier steps stay out of the window
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self._tracing = True

    def after(self, step: int, state: Any) -> None:
        """Call after running ``step``; ``state`` is its result."""
        if self._tracing and step == self.last:
            jax.block_until_ready(state)
            self.close()
            print(
                f"profile of steps {self.first}-{self.last} written to {self.directory}",
                file=sys.stderr,
            )

    def close(self) -> None:
        """Stops a trace still running (the run ended or failed inside the window)."""
        if self._tracing:
            self._tracing = False
            jax.profiler.stop_trace()
