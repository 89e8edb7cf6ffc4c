"""Which config a run's workdir was started with, and where a resumed run's differs (no JAX imported here)."""

from __future__ import annotations

import json
import pathlib

# Fields that say how a run goes, not what it trains: a run resumed in a later sitting (another machine, a
# bigger cache) may differ from its first in these and still be the same run.
HOW_IT_RUNS = frozenset(
    {
        "data_dir",
        "download",
        "data_cache_dir",
        "input_workers",
        "input_threads",
        "prefetch",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "progress_bar",
        "profile_steps",
    }
)


def config_changes(workdir: str | pathlib.Path, config_json: str) -> list[str]:
    """Where ``config_json`` (a config as ``to_json_best_effort`` writes it) differs from the one the run in
    ``workdir`` was started with (its ``config.json``), as ``FIELD: then -> now`` lines; [] if none was.

    Only the fields both configs have are compared, less :data:`HOW_IT_RUNS`: a field added to the trainer
    since did not exist for the run.
    """
    try:
        then = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    except FileNotFoundError:
        return []
    now = json.loads(config_json)
    return [
        f"{field}: {then[field]!r} -> {now[field]!r}"
        for field in sorted(then.keys() & now.keys() - HOW_IT_RUNS)
        if then[field] != now[field]
    ]
