"""Metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard, from process 0 only."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax


class MetricsWriter:
    """Appends ``{"step", "split", ...}`` lines; on resume, forgets lines past the restored step."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.enabled:
            return
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # noqa: PLC0415 - optional heavy import

        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        # Lines logged after the checkpoint we resume from are recomputed, identically, by the rerun.
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, float) and math.isfinite(value):
                self._tb.add_scalar(f"{split}/{key}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _plain(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
