"""Train and evaluate a wsjax model, data-parallel over every device of every host.

    python -m experiments.train --config experiments/configs/default.py --workdir DIR [--config.FIELD=VALUE]

A rerun with the same workdir resumes from the newest readable checkpoint. SIGTERM (preemption) writes a
checkpoint of the current step and exits cleanly.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from experiments import data, model_factory, optim, provenance, steps, xla_cpu
from experiments.checkpoints import Checkpoints
from experiments.metrics import MetricsWriter
from experiments.workdir import WorkdirLock, check_writable

log = logging.getLogger(__name__)


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN or inf."""


class _Preemption:
    """Records SIGTERM so the loop can checkpoint at a step boundary and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except (
            ValueError
        ):  # not the main thread (e.g. some notebook runners): no preemption handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Clear errors for settings that cannot work, before any data is loaded."""
    r = config.replicas_per_device
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"replicas_per_device must be a positive integer, got {r!r}.")
    if r > 1 and config.sync_batch_stats:
        raise ValueError(
            "sync_batch_stats=True needs replicas_per_device=1: batch statistics are synced over devices, "
            "and replicas on one device are meant to keep their own (the micro-batch setting)."
        )
    replicas = num_devices * r
    where = f"{num_devices} devices" + (f" × {r} replicas" if r > 1 else "")
    if config.global_batch_size <= 0 or config.global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size={config.global_batch_size} does not divide evenly over {where}; "
            f"use a multiple of {replicas} (e.g. --config.global_batch_size="
            f"{max(1, round(config.global_batch_size / replicas)) * replicas})."
        )
    if config.eval_batch_size <= 0:
        raise ValueError(f"eval_batch_size must be positive, got {config.eval_batch_size}.")


def _every(value: int, steps_per_epoch: int) -> int:
    return value if value > 0 else steps_per_epoch


def _evaluate(
    eval_step, state, split: data.ShardedSplit, per_replica_batch: int
) -> dict[str, float]:
    totals = None
    for i in range(split.per_replica // per_replica_batch):
        sums = eval_step(state, split.images, split.labels, split.mask, jnp.int32(i))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {
        "loss": float(totals["loss"]) / float(totals["count"]),
        "accuracy": float(totals["correct"]) / float(totals["count"]),
    }


def _check_finite(history: list[dict[str, float]], first_step: int) -> None:
    for offset, m in enumerate(history):
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            step = first_step + offset + 1
            raise NonFiniteError(
                f"non-finite loss, gradient or parameters at step {step} (loss={m['loss']}, "
                f"grad_norm={m['grad_norm']}, param_norm={m['param_norm']}); "
                f"stopped without checkpointing it. Lower the learning rate and rerun: the run resumes "
                f"from the last good checkpoint."
            )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config``'s model in ``workdir`` (resuming if it holds checkpoints).

    Returns:
      The final test metrics ``{"step", "loss", "accuracy"}``.
    """
    workdir = pathlib.Path(workdir)
    num_devices = jax.device_count()
    validate(config, num_devices)
    check_writable(workdir)
    with WorkdirLock(workdir), _Preemption() as preemption:
        return _train(config, workdir, num_devices, preemption)


def _train(
    config, workdir: pathlib.Path, num_devices: int, preemption: _Preemption
) -> dict[str, Any]:
    is_main = jax.process_index() == 0
    mesh = Mesh(np.array(jax.devices()), (steps.AXIS,))
    num_replicas = num_devices * config.replicas_per_device
    per_replica_batch = config.global_batch_size // num_replicas
    eval_per_replica = max(1, -(-config.eval_batch_size // num_replicas))
    dataset = data.load(
        config.dataset,
        mesh,
        config.data_dir,
        config.download,
        test_pad_multiple=eval_per_replica,
        replicas_per_device=config.replicas_per_device,
        cache_dir=config.get("data_cache_dir"),
    )
    steps_per_epoch = dataset.train.per_replica // per_replica_batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"each replica holds {dataset.train.per_replica} training examples, fewer than its batch of "
            f"{per_replica_batch}."
        )
    total_steps = (
        config.num_train_steps
        if config.num_train_steps > 0
        else config.num_epochs * steps_per_epoch
    )

    model = model_factory.build_model(
        config, dataset.num_classes, steps.AXIS if config.sync_batch_stats else None
    )
    schedule = optim.learning_rate_schedule(config, steps_per_epoch, total_steps)
    state = steps.create_train_state(
        model, optim.make_optimizer(config, schedule), dataset.image_shape, config.seed
    )
    state = jax.device_put(state, NamedSharding(mesh, P()))

    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    state, restored_step, skipped = checkpoints.restore_latest(state)
    start_step = int(restored_step or 0)
    if is_main:
        for message in skipped:
            print(f"warning: {message}", file=sys.stderr)
        if restored_step is not None:
            print(
                f"resuming from checkpoint {restored_step} in {checkpoints.directory}",
                file=sys.stderr,
            )
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        run_info = {**provenance.describe_machine(), "resumed_from_step": restored_step}
        (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2))
    run_started = time.perf_counter()

    step_cfg = steps.StepConfig.from_config(config, per_replica_batch, steps_per_epoch)
    train_step = steps.make_train_step(mesh, step_cfg)
    eval_step = steps.make_eval_step(mesh, step_cfg, eval_per_replica)
    writer = MetricsWriter(workdir, start_step)
    log_every = max(1, config.log_every_steps)
    eval_every = _every(config.eval_every_steps, steps_per_epoch)
    ckpt_every = _every(config.checkpoint_every_steps, steps_per_epoch)

    progress = None
    if is_main and config.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True
        )

    # Metrics not yet fetched: fetching every step would make the host wait for the device.
    pending: list[dict[str, jax.Array]] = []
    window_start, window_first_step = time.perf_counter(), start_step
    test_metrics: dict[str, float] | None = None
    try:
        for step in range(start_step + 1, total_steps + 1):
            state, metrics = train_step(state, dataset.train.images, dataset.train.labels)
            pending.append(metrics)
            stop = preemption.requested
            at_eval = step % eval_every == 0 or step == total_steps
            at_checkpoint = step % ckpt_every == 0 or step == total_steps or stop
            # Fetch (and check for NaN) before anything evaluates or saves this state.
            if step % log_every == 0 or at_eval or at_checkpoint:
                history = jax.device_get(pending)
                pending = []
                _check_finite(history, window_first_step)
                elapsed = time.perf_counter() - window_start
                n = len(history)
                summary = {
                    "loss": float(np.mean([m["loss"] for m in history])),
                    "accuracy": float(np.mean([m["accuracy"] for m in history])),
                    "learning_rate": float(schedule(step - 1)),
                    "images_per_sec": n * config.global_batch_size / elapsed,
                    "step_time": elapsed / n,
                }
                if step % log_every == 0 or step == total_steps:
                    writer.write(step, "train", summary)
                if progress is not None:
                    progress.update(step - progress.n)
                    progress.set_postfix(
                        loss=f"{summary['loss']:.4f}", acc=f"{summary['accuracy']:.4f}"
                    )
                window_start, window_first_step = time.perf_counter(), step
            if at_eval:
                test_metrics = _evaluate(eval_step, state, dataset.test, eval_per_replica)
                writer.write(step, "test", test_metrics)
            if at_checkpoint:
                checkpoints.save(step, state)
            if stop:
                if is_main:
                    print(
                        f"SIGTERM: saved checkpoint {step}; exiting. Rerun to resume.",
                        file=sys.stderr,
                    )
                return {"step": step, "preempted": True}
        if test_metrics is None:  # resumed at the very end
            test_metrics = _evaluate(eval_step, state, dataset.test, eval_per_replica)
    finally:
        if progress is not None:
            progress.close()
        writer.close()
        checkpoints.close()
    if is_main:
        run_info.update(
            train_wall_time_s=time.perf_counter() - run_started,
            final_step=total_steps,
            final_test_accuracy=test_metrics["accuracy"],
        )
        (workdir / "run_info.json").write_text(json.dumps(run_info, indent=2))
        print(f"final test accuracy: {test_metrics['accuracy']:.4f}")
    return {"step": total_steps, **test_metrics}


# ---- command line: flags only ----------------------------------------------------------------------------

USER_ERRORS = (ValueError, TypeError, KeyError, RuntimeError, PermissionError, FloatingPointError)


def main(argv: list[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging

    del argv
    FLAGS = flags.FLAGS
    xla_cpu.use_xla_convolutions_on_cpu()  # before JAX's backend starts
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax narrates every save at INFO
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
