"""What a part of the accelerator suite gets: its sizes, its folders, its deadline, and a record that survives it.

Each part runs in its own process with a hard time limit. It writes what it has measured as it goes
(:meth:`PartContext.record`), so that a part stopped at its limit, or failing half-way, still hands the
measurements it finished to the suite's results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any


@dataclasses.dataclass
class PartContext:
    """One part's run.

    Attributes:
      name: the part's name (its results file is ``work/parts/NAME.json``).
      tiny: tiny sizes on any backend (seconds on a CPU): checks the suite, measures nothing.
      work: the suite's scratch folder (the part may write files under ``work/NAME/``).
      data_cache_dir: the NumPy dataset cache (``data_cache.py``) that the part's training reads.
      deadline: ``time.time()`` by which the part is stopped.
    """

    name: str
    tiny: bool
    work: pathlib.Path
    data_cache_dir: str | None
    deadline: float
    results: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def results_path(self) -> pathlib.Path:
        return self.work / "parts" / f"{self.name}.json"

    @property
    def files(self) -> pathlib.Path:
        """This part's own folder for files (traces, HLO)."""
        folder = self.work / self.name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def time_left(self) -> float:
        return self.deadline - time.time()

    def record(self, key: str, value: Any) -> None:
        """Sets ``results[key]`` and rewrites the results file at once (atomically); logs the time."""
        self.results[key] = value
        print(f"[{self.name}] {key} ({self.time_left():.0f} s left)", flush=True)
        self.results_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.results_path.with_suffix(".partial")
        partial.write_text(json.dumps(self.results, indent=2, default=_plain))
        os.replace(partial, self.results_path)

    def append(self, key: str, value: Any) -> None:
        """Appends ``value`` to the list ``results[key]`` and rewrites the results file."""
        self.record(key, [*self.results.get(key, []), value])


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and the like."""
    try:
        return value.item()
    except AttributeError:
        return str(value)


def read_results(path: pathlib.Path) -> dict[str, Any]:
    """A part's results file, or ``{}`` where it wrote none."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
