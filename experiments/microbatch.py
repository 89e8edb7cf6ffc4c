"""The micro-batch study: normalization × per-device batch × seed, each cell a real training run.

    python -m experiments.microbatch run --workdir runs/microbatch          # resumable; skips finished cells
    python -m experiments.microbatch report --workdir runs/microbatch      # table + plots

``run`` trains every cell with ``python -m experiments.train`` in a subprocess (a cell's own device count and
a clean JAX per run). On a CPU machine it emulates ``--devices`` devices (default 8) with fake CPU devices;
on TPUs/GPUs pass ``--devices=0`` to use the real ones. An interrupted sweep resumes where it stopped: finished
cells are skipped and an interrupted cell resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

from experiments.cpu_devices import fake_cpu_env

# name -> (conv, norm). "none" (plain convs, no normalization) is the floor.
NORMALIZATIONS = {
    "BN": ("plain", "bn"),
    "GN": ("plain", "gn"),
    "BN+WS": ("ws", "bn"),
    "GN+WS": ("ws", "gn"),
    "BCN+WS": ("ws", "bcn"),
    "none": ("plain", "none"),
}
PER_DEVICE_BATCHES = (1, 2, 4, 8, 32)
CONFIG = pathlib.Path(__file__).resolve().parent / "configs" / "microbatch.py"
REPO = CONFIG.parents[2]


@dataclasses.dataclass(frozen=True)
class Cell:
    normalization: str
    per_device_batch: int
    seed: int

    @property
    def name(self) -> str:
        slug = self.normalization.lower().replace("+", "_")
        return f"{slug}_b{self.per_device_batch}_s{self.seed}"

    def overrides(self, devices: int, train_examples: int) -> list[str]:
        conv, norm = NORMALIZATIONS[self.normalization]
        global_batch = devices * self.per_device_batch
        return [
            f"--config.conv={conv}",
            f"--config.norm={norm}",
            f"--config.global_batch_size={global_batch}",
            f"--config.num_train_steps={train_examples // global_batch}",
            f"--config.seed={self.seed}",
        ]


def grid(normalizations, batches, seeds) -> list[Cell]:
    # Seeds outermost: a partial sweep already covers every (norm, batch) once.
    return [Cell(n, b, s) for s in seeds for n in normalizations for b in batches]


def is_finished(workdir: pathlib.Path) -> bool:
    info = workdir / "run_info.json"
    return info.exists() and "final_test_accuracy" in json.loads(info.read_text())


def run_cell(
    cell: Cell, sweep_dir: pathlib.Path, devices: int, train_examples: int, extra: list[str]
) -> None:
    workdir = sweep_dir / cell.name
    env = fake_cpu_env(devices) if devices else dict(os.environ)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        *cell.overrides(devices or _real_device_count(), train_examples),
        *extra,
    ]
    log = (sweep_dir / "logs").joinpath(f"{cell.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed (exit {result.returncode}); see {log}")


def _real_device_count() -> int:
    import jax

    return jax.device_count()


def run(sweep_dir, devices, seeds, normalizations, batches, train_examples, extra) -> None:
    from tqdm.auto import tqdm

    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    cells = grid(normalizations, batches, seeds)
    todo = [c for c in cells if not is_finished(sweep_dir / c.name)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished", file=sys.stderr)
    for cell in (bar := tqdm(todo, desc="cells", unit="cell")):
        bar.set_postfix_str(cell.name)
        run_cell(cell, sweep_dir, devices, train_examples, extra)


def main(argv: list[str]) -> None:
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) != 2 or argv[1] not in ("run", "report"):
        raise SystemExit(
            "usage: python -m experiments.microbatch {run,report} --workdir DIR [flags]"
        )
    if argv[1] == "run":
        run(
            FLAGS.workdir,
            FLAGS.devices,
            [int(s) for s in FLAGS.seeds],
            FLAGS.normalizations,
            [int(b) for b in FLAGS.per_device_batches],
            FLAGS.train_examples,
            FLAGS.extra,
        )
    else:
        from experiments import microbatch_report

        microbatch_report.write_report(FLAGS.workdir, FLAGS.out)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string(
        "workdir", None, "Sweep directory: one sub-directory per cell.", required=True
    )
    flags.DEFINE_integer(
        "devices", 8, "Fake CPU devices per cell; 0 uses the real devices (TPU/GPU)."
    )
    flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
    flags.DEFINE_list("normalizations", list(NORMALIZATIONS), f"Subset of {list(NORMALIZATIONS)}.")
    flags.DEFINE_list(
        "per_device_batches", [str(b) for b in PER_DEVICE_BATCHES], "Per-device batch sizes."
    )
    flags.DEFINE_integer("train_examples", 60_000, "Examples seen by every cell.")
    flags.DEFINE_multi_string("extra", [], "Further --config.FIELD=VALUE for every cell.")
    flags.DEFINE_string("out", "experiments/results/microbatch", "Report folder.")
    app.run(main)
