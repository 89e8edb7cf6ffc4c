"""Train and evaluate a wsjax model, data-parallel over every device of every host.

    python -m experiments.train --config experiments/configs/default.py --workdir DIR [--config.FIELD=VALUE]

A rerun with the same workdir resumes from the newest readable checkpoint. SIGTERM (preemption) writes a
checkpoint of the current step and exits cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments.common import cpu_backend, run_config
from experiments.common.errors import ConfigError
from experiments.trainer import model_factory, optim, placement, population, steps
from experiments.trainer.checkpoints import (
    CheckpointMismatchError,
    Checkpoints,
    CheckpointViewError,
    newest_step,
)
from experiments.trainer.input import choice, data
from experiments.trainer.input.memory import MemoryInput
from experiments.trainer.input.positions import Positions
from experiments.trainer.loop import NonFiniteError, Preemption, Run, run_loop
from experiments.trainer.metrics import MetricsWriter
from experiments.trainer.profiling import StepProfiler
from experiments.trainer.run_info import RunInfo
from experiments.trainer.validation import validate
from experiments.trainer.workdir import (
    OutOfSpaceRecordsDropped,
    WorkdirBusyError,
    WorkdirLock,
    check_writable,
    is_out_of_space,
    out_of_space_message,
)


@contextlib.contextmanager
def _config_errors() -> Iterator[None]:
    """Turns a ValueError from code that checks the config's values for us (TFDS's dataset names, the
    library's group count) into a ConfigError: one line on the command line, not a traceback."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _every(value: int, steps_per_epoch: int) -> int:
    return value if value > 0 else steps_per_epoch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config``'s model in ``workdir`` (resuming if it holds checkpoints).

    On CPU, starts XLA with the experiments' settings (``cpu_backend``) if JAX has not started yet, and runs
    several fake CPU devices as vmapped replicas on one (``placement``), saying so on stderr.

    Returns:
      The final test metrics ``{"step", "loss", "accuracy"}``.
    """
    cpu_backend.configure()  # before JAX's backend starts; nothing on GPU/TPU
    workdir = pathlib.Path(workdir)
    num_devices = jax.device_count()
    cpu_backend.verify()  # warns once if XLA:CPU started without the settings
    validate(config, num_devices)
    check_writable(workdir)
    with WorkdirLock(workdir), Preemption(workdir) as preemption:
        run = _set_up(config, workdir)
        try:
            return run_loop(run, preemption)
        finally:
            run.close()


@dataclasses.dataclass
class Training:
    """Everything a run computes with, before any checkpoint or workdir: see :func:`build`."""

    mesh: Mesh
    dataset: data.Dataset | None  # the memory path's arrays; None when streaming
    input: Any  # experiments.trainer.input: MemoryInput or StreamInput (what the loop reads)
    state: steps.TrainState
    schedule: Any
    steps_per_epoch: int
    total_steps: int
    eval_per_replica: int
    step_config: steps.StepConfig
    # (params, batch_stats) -> (BN's re-estimated population statistics, images used); None: not asked for.
    reestimate: Callable | None = None

    def train_step(self):
        return steps.make_train_step(self.mesh, self.step_config)

    def eval_step(self):
        return steps.make_eval_step(self.mesh, self.step_config, self.eval_per_replica)


def build(config: ml_collections.ConfigDict, announce: bool = True) -> Training:
    """Devices, data, model, optimizer and the initial state of ``config``'s run (no workdir involved).

    Shared by :func:`train_and_evaluate` and the accelerator suite's time-to-accuracy part, so both train the same.
    """
    where = placement.plan(
        jax.devices(), config.replicas_per_device, jax.default_backend(), jax.process_index()
    )
    if announce and jax.process_index() == 0 and where.notice:
        print(where.notice, file=sys.stderr)
    mesh = Mesh(np.array(where.devices), (steps.AXIS,))
    num_replicas = mesh.devices.size * where.replicas_per_device
    per_replica_batch = config.global_batch_size // num_replicas
    eval_per_replica = max(1, -(-config.eval_batch_size // num_replicas))
    with _config_errors():
        streamed = choice.resolve(config) == "stream"
    if streamed:
        from experiments.trainer.input.stream import (
            StreamInput,  # grain: imported only when streaming
        )

        with _config_errors():
            source = StreamInput(
                config, mesh, where.replicas_per_device, per_replica_batch, eval_per_replica
            )
        dataset, steps_per_epoch = None, source.steps_per_epoch
        num_classes, image_shape = source.num_classes, source.image_shape
        if steps_per_epoch == 0:
            raise ConfigError(
                f"each process reads {source.train_examples // source.process_count} training examples, "
                f"fewer than its batch of {source.per_process_batch}."
            )
    else:
        if config.augmentation != "pad_crop":
            raise ConfigError(
                f"augmentation={config.augmentation!r} needs input_pipeline='stream' (the memory path "
                f"crops and flips on the device at the native size)."
            )
        with _config_errors():
            dataset = data.load(
                config.dataset,
                mesh,
                config.data_dir,
                config.download,
                test_pad_multiple=eval_per_replica,
                replicas_per_device=where.replicas_per_device,
                cache_dir=config.data_cache_dir,
            )
        source = MemoryInput(dataset, eval_per_replica)
        steps_per_epoch = dataset.train.per_replica // per_replica_batch
        num_classes, image_shape = dataset.num_classes, dataset.image_shape
        if steps_per_epoch == 0:
            raise ConfigError(
                f"each replica holds {dataset.train.per_replica} training examples, fewer than its batch "
                f"of {per_replica_batch}."
            )
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )

    axis_name = steps.AXIS if config.sync_batch_stats else None
    # config.init_from: a converted checkpoint defines the network and its starting variables.
    pretrained = model_factory.load_init_from(config, num_classes, axis_name)
    if pretrained is not None:
        model = pretrained.model
    else:
        model = model_factory.build_model(config, num_classes, axis_name)
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    with _config_errors():
        state = steps.create_train_state(
            model, optim.make_optimizer(config, schedule), image_shape, config.seed
        )
    if pretrained is not None:
        state = model_factory.start_from(state, pretrained)
    state = jax.device_put(state, NamedSharding(mesh, P()))
    step_config = dataclasses.replace(
        steps.StepConfig.from_config(config, per_replica_batch, steps_per_epoch),
        replicas_per_device=where.replicas_per_device,
        streamed=streamed,
    )
    reestimate = None
    if population.applies(config):
        if dataset is None:  # input_pipeline="auto" chose streaming
            raise ConfigError(population.NEEDS_MEMORY)
        reestimate = population.make_reestimate(
            mesh,
            population.statistics_model(config, num_classes),
            dataset.train.images,
            config.reestimate_bn_images,
            max(1, config.eval_batch_size // mesh.devices.size),  # per device, whatever the split
            step_config.mean,
            step_config.std,
        )
    return Training(
        mesh=mesh,
        dataset=dataset,
        input=source,
        state=state,
        schedule=schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        eval_per_replica=eval_per_replica,
        step_config=step_config,
        reestimate=reestimate,
    )


def _set_up(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> Run:
    """:func:`build`, then the state restored from the newest checkpoint and the run's writers."""
    is_main = jax.process_index() == 0
    training = build(config)
    steps_per_epoch, start_state = training.steps_per_epoch, training.state
    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    state, restored_step, skipped = checkpoints.restore_latest(start_state)
    start_step = int(restored_step or 0)
    positions = Positions(workdir, jax.process_index())
    if restored_step is not None and training.step_config.streamed:
        position = positions.load(restored_step)
        if position is None:
            raise ConfigError(
                f"checkpoint {restored_step} has no streaming input position ({positions.path(restored_step)}): "
                f"the memory pipeline wrote it, or the file was removed. Resume with "
                f"--config.input_pipeline=memory, or use a new --workdir."
            )
        training.input.restore(position)
    if is_main:
        for message in skipped:
            print(f"warning: {message}", file=sys.stderr)
        config_json = config.to_json_best_effort(indent=2)
        if restored_step is not None:
            print(
                f"resuming from checkpoint {restored_step} in {checkpoints.directory}",
                file=sys.stderr,
            )
            # Allowed (a longer run, a lower rate from here on), but said: the run mixes two settings.
            if changes := run_config.config_changes(workdir, config_json):
                print(
                    f"warning: this run's config differs from the one the workdir last ran with, "
                    f"{'; '.join(changes)}: the steps before checkpoint {restored_step} trained with the old "
                    "values. Use a new --workdir to train with the new ones from the start.",
                    file=sys.stderr,
                )
        (workdir / "config.json").write_text(config_json)

    return Run(
        config=config,
        is_main=is_main,
        dataset=training.dataset,
        input=training.input,
        positions=positions,
        state=state,
        start_step=start_step,
        total_steps=training.total_steps,
        schedule=training.schedule,
        train_step=training.train_step(),
        eval_step=training.eval_step(),
        eval_per_replica=training.eval_per_replica,
        reestimate=training.reestimate,
        log_every=max(1, config.log_every_steps),
        eval_every=_every(config.eval_every_steps, steps_per_epoch),
        checkpoint_every=_every(config.checkpoint_every_steps, steps_per_epoch),
        checkpoints=checkpoints,
        writer=MetricsWriter(workdir, start_step),
        run_info=RunInfo(workdir, restored_step, enabled=is_main),
        # From the segment's second step: the first compiles.
        profiler=StepProfiler(
            workdir / "profile", start_step + 2, config.profile_steps, enabled=is_main
        ),
    )


# ---- command line: flags only ----------------------------------------------------------------------------

# Errors the user can fix, printed as one line. Anything else is a bug or an environment failure: traceback.
USER_ERRORS = (
    ConfigError,
    NonFiniteError,
    WorkdirBusyError,
    CheckpointMismatchError,
    CheckpointViewError,
    data.DatasetUnavailableError,
)


def main(argv: list[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax narrates every save at INFO
    # On the handlers, not a logger: the writer threads' records come through absl's logger and asyncio's.
    for handler in logging.getLogger().handlers:
        handler.addFilter(OutOfSpaceRecordsDropped())
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()  # TPU pods, SLURM, ... discover their peers
    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except USER_ERRORS as e:
        # A one-line message that names the problem and the fix, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        # A full disk is the machine's state, not a bug: orbax publishes a checkpoint only once complete, so
        # the ones written stand, and the rerun resumes from the newest.
        if not is_out_of_space(e):
            raise
        print(
            f"error: {out_of_space_message(FLAGS.workdir, newest_step(FLAGS.workdir))}",
            file=sys.stderr,
        )
        sys.exit(1)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. experiments/configs/default.py.", lock_config=True
    )
    flags.DEFINE_string(
        "workdir", None, "Directory for checkpoints and metrics; a rerun resumes from it."
    )
    flags.DEFINE_bool(
        "distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU)."
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0, for an explicit multi-process run."
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    flags.mark_flags_as_required(["config", "workdir"])


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # a value of the wrong type, a missing required flag, ...
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError) as e:  # ml_collections: a field the config lacks
        inner = e.args[0] if e.args and isinstance(e.args[0], Exception) else e
        detail = str(inner.args[0] if inner.args else inner).replace("\n", "; ")
        print(
            f"error: unknown config field {detail} (in the overrides "
            f"{', '.join(a.split('=')[0] for a in argv[1:] if a.startswith('--config.'))}); "
            f"see the config file for the fields it defines.",
            file=sys.stderr,
        )
        sys.exit(2)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main, flags_parser=_parse_flags)
