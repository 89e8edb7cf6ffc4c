"""The micro-batch study: normalization × images per device × seed, each cell a real training run.

    python -m experiments.study.microbatch run --workdir runs/microbatch           # resumable; skips finished cells
    python -m experiments.study.microbatch run --workdir runs/microbatch --in_process   # one process (GPU)
    python -m experiments.study.microbatch report --workdir runs/microbatch --out DIR

Only the per-device batch varies. Every cell trains the same global batch G (``global_batch_size`` of
``configs/microbatch.py``) for the same steps with the same optimizer, schedule and learning rate; a cell with
b images per device spreads each global batch over G / b replicas (the paper's devices), each normalizing with
its own batch statistics. b = G with one replica is ordinary training, the reference. The replicas are
vmapped on each real device (``replicas_per_device``), G / b / devices of them. With
``data_order="example"`` (see ``trainer/steps.py``) the global batch at every step holds the same examples, in the
same order and augmented alike, in every cell of a seed (exactly so when G divides the training-set size:
Fashion-MNIST's 60,000 and G = 32 do), and every cell starts from the same parameters: a cell differs from
the reference in its batch statistics and nothing else.

Normalizations without batch statistics (GN, GN+WS, none) therefore train the same network at every b, up to
float rounding; the sweep runs them at the ends of the batch range only (``--batch_free_batches``).

``run`` trains each cell in a subprocess (``python -m experiments.train``: a clean JAX per cell, the robust
default on a CPU) and never starts JAX itself: it asks a short-lived child for the device count, so on a TPU
VM the chips are free for the cells, and on a GPU the parent holds no memory. ``--in_process`` runs every cell
in this process instead (no process start-up per cell, and one persistent compilation cache that the cells of
later seeds reuse), for accelerators where a cell takes seconds. An interrupted sweep resumes where it
stopped: finished cells are skipped and an interrupted cell resumes from its last checkpoint.

Several workers share a sweep: run the same command in several processes (two on a 2-core CPU train 1.1-1.2x
the steps per second of one, as a small cell does not keep both cores busy; one per GPU with
``CUDA_VISIBLE_DEVICES``; or on hosts that share the folder with working ``flock``). Each claims a cell with a
lock on ``CELL/.claim`` while it trains it (its trainer inherits the lock), leaves the cells others hold, and
looks at those again after its own pass, when a worker that died has freed its cell.

A failed cell (e.g. a diverged run) is reported and skipped; three failures in a row stop the sweep. ``run``
commits nothing. How one cell is trained (its child process, lock and flags): ``cells.py``.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from collections.abc import Sequence

from experiments.common.filelock import try_lock
from experiments.study.cells import (
    CONFIG,
    InProcess,
    cell_config,
    check_flags,
    config_changes,
    is_finished,
    probe_device_count,
    train_cell,
)
from experiments.study.grid import BATCH_FREE, NORMALIZATIONS, PER_DEVICE_BATCHES, SEEDS

MAX_CONSECUTIVE_FAILURES = 3  # then stop: every cell is failing, not one diverged run


@dataclasses.dataclass(frozen=True)
class Cell:
    normalization: str
    per_device_batch: int
    seed: int

    @property
    def name(self) -> str:
        slug = self.normalization.lower().replace("+", "_")
        return f"{slug}_b{self.per_device_batch}_s{self.seed}"

    def overrides(self, global_batch: int, devices: int) -> list[str]:
        """The cell's ``--config.FIELD=VALUE`` flags; everything else comes from ``configs/microbatch.py``."""
        conv, norm = NORMALIZATIONS[self.normalization]
        replicas = global_batch // self.per_device_batch
        return [
            f"--config.conv={conv}",
            f"--config.norm={norm}",
            f"--config.global_batch_size={global_batch}",
            f"--config.replicas_per_device={replicas // devices}",
            f"--config.seed={self.seed}",
        ]


def grid(
    normalizations: Sequence[str],
    batches: Sequence[int],
    seeds: Sequence[int],
    batch_free_batches: Sequence[int] | None = None,
) -> list[Cell]:
    """The cells, seeds outermost (a partial sweep already covers every setting once).

    Args:
      normalizations: keys of ``NORMALIZATIONS``.
      batches: images per device.
      seeds: one run of every setting per seed.
      batch_free_batches: the images per device at which the ``BATCH_FREE`` normalizations run (those of
        ``batches`` only); None: the smallest and the largest of ``batches``.
    """
    unknown = [n for n in normalizations if n not in NORMALIZATIONS]
    if unknown:
        raise ValueError(f"unknown normalization(s) {unknown}; choose from {list(NORMALIZATIONS)}.")
    if batch_free_batches is None:
        batch_free_batches = (min(batches), max(batches))
    free = [b for b in batches if b in batch_free_batches]
    return [
        Cell(n, b, s)
        for s in seeds
        for n in normalizations
        for b in (free if n in BATCH_FREE else batches)
    ]


def check_started_cells(
    sweep_dir: pathlib.Path,
    cells: Sequence[Cell],
    global_batch: int,
    devices: int,
    extra: Sequence[str],
    config_file: pathlib.Path,
) -> None:
    """Cells already in ``sweep_dir`` were started with the config this sweep gives them, or it stops here.

    Otherwise a finished cell would be skipped, and an unfinished one resumed, under settings it was not
    trained with (say the CPU study's cells found by the accelerator's config, which names its cells alike),
    and the report would mix the two without a word.
    """
    changed = {}
    for cell in cells:
        flags = [*cell.overrides(global_batch, devices), *extra]
        if lines := config_changes(sweep_dir / cell.name, flags, config_file):
            changed[cell.name] = lines
    if changed:
        first, lines = next(iter(changed.items()))
        raise ValueError(
            f"{len(changed)} cell(s) in {sweep_dir} were started with another config than this sweep's "
            f"({config_file.name} with its flags): {', '.join(changed)}. {first}: {'; '.join(lines)}. "
            "Use a new --workdir, or remove those cells' folders to train them again."
        )


def check_design(batches: Sequence[int], global_batch: int, devices: int) -> None:
    """Every per-device batch must split the global batch into a whole number of replicas on every device."""
    if any(b < 1 for b in batches):
        raise ValueError(f"images per device must be positive, got {list(batches)}.")
    step = math.lcm(*batches) * devices  # the global batches that fit every b
    for b in batches:
        if global_batch % (b * devices):
            raise ValueError(
                f"{b} image(s) per device does not fit a global batch of {global_batch} on {devices} "
                f"device(s): the global batch must be a multiple of b × devices for every b (e.g. "
                f"--global_batch={-(-global_batch // step) * step})."
            )


def default_global_batch(config: str | pathlib.Path = CONFIG) -> int:
    # ml_collections only, no JAX
    return int(cell_config([], pathlib.Path(config)).global_batch_size)


def run(
    sweep_dir: str | pathlib.Path,
    seeds: Sequence[int],
    normalizations: Sequence[str],
    batches: Sequence[int],
    batch_free_batches: Sequence[int] | None = None,
    global_batch: int | None = None,
    extra: Sequence[str] = (),
    in_process: bool = False,
    devices: int = 0,
    time_limit_s: float | None = None,
    config: str | pathlib.Path = CONFIG,
) -> None:
    """Trains every unfinished cell of the grid in ``sweep_dir/<cell name>/`` (see ``grid`` for the args).

    Args:
      global_batch: images per step in every cell (None: the config's ``global_batch_size``).
      extra: further ``--config.FIELD=VALUE`` flags for every cell.
      in_process: train in this process (starts JAX here) instead of one subprocess per cell.
      devices: the device count if known (0: ask a child process, or JAX itself when ``in_process``).
      time_limit_s: start no cell expected to end more than this many seconds after the sweep started, a cell
        being expected to take as long as the longest this run has trained (None: no limit; the first cell,
        with nothing to go by, always starts). A sitting that must end by a given time stops between cells
        instead of in one.
      config: the study's config file, which every cell trains with its own overrides
        (``configs/microbatch.py``, the CPU study; ``configs/microbatch_deep.py``, the accelerator's).
    """
    from tqdm.auto import tqdm

    started = time.monotonic()
    config = pathlib.Path(config)
    global_batch = global_batch or default_global_batch(config)
    sweep_dir = pathlib.Path(sweep_dir)
    cells = grid(normalizations, batches, seeds, batch_free_batches)
    runner = InProcess(sweep_dir / "compile_cache") if in_process else None
    devices = devices or (runner.devices if runner else probe_device_count())
    check_design(batches, global_batch, devices)
    if cells:
        check_flags([*cells[0].overrides(global_batch, devices), *extra], config)
    check_started_cells(sweep_dir, cells, global_batch, devices, extra, config)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells if not is_finished(sweep_dir / c.name)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished", file=sys.stderr)
    failed: list[str] = []
    held: list[Cell] = []  # cells that another worker was training when this one came to them
    streak = 0  # consecutive failures: a broken setup fails every cell, a diverged run only its own
    longest = 0.0  # seconds of the longest cell trained so far: the next one's expected time
    # Counts the cells this worker has done with (trained, failed, or found finished), not its looks at them.
    with tqdm(desc="cells", unit="cell", total=len(todo)) as bar:  # closed on a raise too
        for cell in _then_held(todo, held):
            if time_limit_s is not None and time.monotonic() - started + longest > time_limit_s:
                print(
                    f"\nstopped for time (a cell takes up to {longest:.0f} s; the limit is "
                    f"{time_limit_s:.0f} s); rerun to go on",
                    file=sys.stderr,
                )
                break
            bar.set_postfix_str(cell.name)
            workdir = sweep_dir / cell.name
            workdir.mkdir(exist_ok=True)
            claim, _ = try_lock(workdir / ".claim")  # held while this worker trains the cell
            if claim is None:
                held.append(cell)
                continue
            with claim:
                # another worker may have finished it after this one listed the cells
                if is_finished(workdir):
                    bar.update()
                    continue
                cell_started = time.monotonic()
                flags = [*cell.overrides(global_batch, devices), *extra]
                why = train_cell(workdir, flags, runner, claim, config)
                longest = max(longest, time.monotonic() - cell_started)
            bar.update()
            streak = streak + 1 if why else 0
            if why:
                print(f"\ncell {cell.name} failed ({why})", file=sys.stderr)
                failed.append(cell.name)
            if streak == MAX_CONSECUTIVE_FAILURES:
                raise RuntimeError(f"the last {streak} cells all failed ({why}); stopped")
    elsewhere = [c.name for c in held if not is_finished(sweep_dir / c.name)]
    if elsewhere:
        print(
            f"{len(elsewhere)} cell(s) left to other workers: {', '.join(elsewhere)}",
            file=sys.stderr,
        )
    if failed:
        raise RuntimeError(
            f"{len(failed)} cell(s) failed: {', '.join(failed)}; rerun to retry them"
        )


def _then_held(todo: list[Cell], held: list[Cell]):
    """Each cell of ``todo``; then a second look at each that another worker held during that pass (one
    whose worker died is free again). ``held`` collects, during the second look, the cells still held."""
    yield from todo
    second_look = list(held)
    held.clear()
    yield from second_look


def _batch_free(flag: list[str], batches: list[str]) -> list[int] | None:
    if flag == ["ends"]:
        return None
    return [int(b) for b in (batches if flag == ["all"] else flag)]


def main(argv: list[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in ("run", "report"):
        raise SystemExit(
            "usage: python -m experiments.study.microbatch {run,report} --workdir DIR [flags]"
        )
    if argv[1] == "report":
        from experiments.study import report

        report.write_report(FLAGS.workdir, FLAGS.out)
        return
    try:
        run(
            FLAGS.workdir,
            [int(s) for s in FLAGS.seeds],
            FLAGS.normalizations,
            [int(b) for b in FLAGS.per_device_batches],
            _batch_free(FLAGS.batch_free_batches, FLAGS.per_device_batches),
            FLAGS.global_batch,
            FLAGS.extra,
            FLAGS.in_process,
            FLAGS.devices,
            FLAGS.time_limit_s or None,
            FLAGS.config,
        )
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string(
        "workdir", None, "Sweep directory: one sub-directory per cell.", required=True
    )
    flags.DEFINE_string(
        "config",
        str(CONFIG),
        "The study's config: configs/microbatch.py (the CPU study) or configs/microbatch_deep.py.",
    )
    flags.DEFINE_list("seeds", [str(s) for s in SEEDS], "Seeds.")
    flags.DEFINE_list("normalizations", list(NORMALIZATIONS), f"Subset of {list(NORMALIZATIONS)}.")
    flags.DEFINE_list(
        "per_device_batches", [str(b) for b in PER_DEVICE_BATCHES], "Images per device."
    )
    flags.DEFINE_list(
        "batch_free_batches",
        ["ends"],
        f"Images per device at which {sorted(BATCH_FREE)} run (the same training at every b): 'ends' (the "
        "smallest and largest of --per_device_batches), 'all', or a list.",
    )
    flags.DEFINE_integer(
        "global_batch",
        None,
        "Images per step in every cell (default: the config's global_batch_size).",
    )
    flags.DEFINE_multi_string("extra", [], "Further --config.FIELD=VALUE for every cell.")
    flags.DEFINE_bool(
        "in_process", False, "Train every cell in this process (accelerators: many short runs)."
    )
    flags.DEFINE_integer("devices", 0, "Device count if known (0: ask a child process).")
    flags.DEFINE_float(
        "time_limit_s",
        0,
        "Start no cell expected to end later than this many seconds from now (0: no limit).",
    )
    flags.DEFINE_string("out", "results/microbatch2", "Report folder.")
    app.run(main)
