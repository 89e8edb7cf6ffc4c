"""The micro-batch study: normalization × per-device batch × seed, each cell a real training run.

    python -m experiments.microbatch run --workdir runs/microbatch          # resumable; skips finished cells
    python -m experiments.microbatch report --workdir runs/microbatch      # table + plots

``run`` trains every cell with ``python -m experiments.train`` in a subprocess (a clean JAX per run). Each
cell has ``--replicas`` (default 8) of the paper's "devices", each with its own micro-batch and batch
statistics, spread over the real devices: on one CPU or GPU all 8 are vmapped replicas on that device
(``replicas_per_device=8``), on a TPU v3-8 one per core. An interrupted sweep resumes where it stopped:
finished cells are skipped and an interrupted cell resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

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

    def overrides(self, replicas: int, train_examples: int, devices: int = 1) -> list[str]:
        conv, norm = NORMALIZATIONS[self.normalization]
        global_batch = replicas * self.per_device_batch
        return [
            f"--config.replicas_per_device={replicas // devices}",
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
    cell: Cell,
    sweep_dir: pathlib.Path,
    replicas: int,
    devices: int,
    train_examples: int,
    extra: list[str],
) -> None:
    workdir = sweep_dir / cell.name
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
        *cell.overrides(replicas, train_examples, devices),
        *extra,
    ]
    log = (sweep_dir / "logs").joinpath(f"{cell.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        result = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"cell {cell.name} failed (exit {result.returncode}); see {log}")


def _real_device_count() -> int:
    import jax

    return jax.device_count()


def run(sweep_dir, replicas, seeds, normalizations, batches, train_examples, extra) -> None:
    from tqdm.auto import tqdm

    devices = _real_device_count()
    if replicas < 1 or replicas % devices:
        raise SystemExit(
            f"error: --replicas={replicas} must be a positive multiple of the {devices} devices here."
        )
    sweep_dir = pathlib.Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    cells = grid(normalizations, batches, seeds)
    todo = [c for c in cells if not is_finished(sweep_dir / c.name)]
    print(f"{len(cells) - len(todo)} of {len(cells)} cells already finished", file=sys.stderr)
    for cell in (bar := tqdm(todo, desc="cells", unit="cell")):
        bar.set_postfix_str(cell.name)
        run_cell(cell, sweep_dir, replicas, devices, train_examples, extra)


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
            FLAGS.replicas,
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
        "replicas",
        8,
        "The paper's devices per cell (each its own micro-batch and statistics), spread evenly over the "
        "real devices.",
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_list(
        "normalizations",
        [n for n in NORMALIZATIONS if n != "none"],
        f"Subset of {list(NORMALIZATIONS)} ('none': plain convs, no normalization, a floor).",
    )
    flags.DEFINE_list(
        "per_device_batches", [str(b) for b in PER_DEVICE_BATCHES], "Per-device batch sizes."
    )
    flags.DEFINE_integer("train_examples", 20_000, "Examples seen by every cell.")
    flags.DEFINE_multi_string("extra", [], "Further --config.FIELD=VALUE for every cell.")
    flags.DEFINE_string("out", "experiments/results/microbatch", "Report folder.")
    app.run(main)
