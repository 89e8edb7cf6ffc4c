"""How the micro-batch sweep trains one cell: in a child process (the default) or in this one.

A cell is ``python -m experiments.train --config=CONFIG --workdir=CELL`` (``CONFIG`` the study's config,
``configs/microbatch.py`` unless the sweep names another) with the cell's ``--config.FIELD=VALUE`` flags
(``microbatch.Cell.overrides``). ``run_subprocess`` starts that child, which inherits the cell's claim so
that the lock lasts as long as the training; ``InProcess`` calls ``train_and_evaluate`` instead, with one
persistent compilation cache for every cell. Nothing here starts JAX except ``InProcess`` (and
``probe_device_count``'s child).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import IO

from experiments.common import run_config

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "microbatch.py"  # the CPU study
DEEP_CONFIG = CONFIG.with_name("microbatch_deep.py")  # the accelerator's: VGG16, SGD, five seeds
REPO = CONFIG.parents[2]


def is_finished(workdir: pathlib.Path) -> bool:
    try:
        return "final_test_accuracy" in json.loads((workdir / "run_info.json").read_text())
    except (
        FileNotFoundError,
        json.JSONDecodeError,
    ):  # not started, or written before atomic writes
        return False


def config_changes(
    workdir: pathlib.Path, flags: list[str], config: pathlib.Path = CONFIG
) -> list[str]:
    """Where the config a cell was started with differs from the one ``flags`` give it now, as ``FIELD: then ->
    now`` lines (``common.run_config.config_changes``); [] for a cell not started yet."""
    if not (workdir / "config.json").exists():
        return []
    return run_config.config_changes(workdir, cell_config(flags, config).to_json_best_effort())


def probe_device_count() -> int:
    """The device count, asked of a child process: the parent must not start JAX (module docstring)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.device_count())"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise RuntimeError(f"could not count the devices: {probe.stderr.strip()[-500:]}")
    return int(probe.stdout.split()[-1])


def run_subprocess(
    workdir: pathlib.Path,
    flags: list[str],
    log: pathlib.Path,
    claim: IO[str] | None = None,
    config: pathlib.Path = CONFIG,
) -> str | None:
    """Trains one cell in a child process; returns why it failed, or None.

    The child inherits ``claim`` (the cell's lock file): the lock lasts as long as the training, even if
    this process is killed first.
    """
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={config}",
        f"--workdir={workdir}",
        *flags,
    ]
    with log.open("a") as out:
        result = subprocess.run(
            command,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(claim.fileno(),) if claim else (),
        )
    return f"exit {result.returncode}; see {log}" if result.returncode else None


def cell_config(flags: list[str], config: pathlib.Path = CONFIG):
    """The study's ``config`` file with ``--config.FIELD=VALUE`` flags applied, parsed as ``train.py`` does."""
    from absl import flags as absl_flags
    from ml_collections import config_flags

    argv = ["microbatch", f"--config={config}", *flags]
    values = absl_flags.FlagValues()
    # The override flags are defined from sys_argv: pass ours, not this process's command line.
    config_flags.DEFINE_config_file(
        "config", str(config), flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config


def check_flags(flags: list[str], config: pathlib.Path = CONFIG) -> None:
    """A bad ``--extra`` (or config file) stops the sweep here, with one line, not in every cell."""
    from absl import flags as absl_flags

    try:
        cell_config(flags, config)
    except (absl_flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad config flag(s) in {flags}: {e}") from None


class InProcess:
    """Runs cells with ``train_and_evaluate`` in this process, sharing one persistent compilation cache."""

    def __init__(self, compile_cache: pathlib.Path):
        from experiments.common import cpu_backend

        cpu_backend.configure()  # before JAX's backend starts, as train_and_evaluate does
        import jax

        # Cells that differ only in seed compile to the same programs: later seeds load them from disk.
        jax.config.update("jax_compilation_cache_dir", str(compile_cache))
        self.jax = jax
        self.devices = jax.device_count()

    def __call__(
        self, workdir: pathlib.Path, flags: list[str], config: pathlib.Path = CONFIG
    ) -> str | None:
        """Trains one cell; returns why it failed, or None."""
        from experiments import train

        try:
            train.train_and_evaluate(cell_config(flags, config), str(workdir))
        except train.USER_ERRORS as e:  # e.g. a NaN: the other cells can still run
            return f"{type(e).__name__}: {e}"
        finally:
            self.jax.clear_caches()  # this cell's executables are on disk; keep the process's memory flat
        return None


def train_cell(
    workdir: pathlib.Path,
    flags: list[str],
    runner: InProcess | None,
    claim: IO[str],
    config: pathlib.Path = CONFIG,
) -> str | None:
    """Trains the cell in ``workdir`` with ``runner``, or else in a subprocess that logs to
    ``SWEEP/logs/CELL.log``; returns why it failed, or None."""
    if runner:
        return runner(workdir, flags, config)
    log = workdir.parent / "logs" / f"{workdir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return run_subprocess(workdir, flags, log, claim, config)
