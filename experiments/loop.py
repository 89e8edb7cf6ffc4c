"""The training loop: steps, then logging, evaluation and checkpoints when due; NaN checks; preemption.

``train.py`` sets a run up (devices, data, model, compiled steps, restored state) into a :class:`Run`;
:func:`run_loop` trains it to the end or to a SIGTERM.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import data, steps
from experiments.checkpoints import Checkpoints
from experiments.metrics import MetricsWriter
from experiments.profiling import StepProfiler
from experiments.run_info import RunInfo


class NonFiniteError(FloatingPointError):
    """Loss or gradients became NaN or inf."""


class Preemption:
    """SIGTERM (a preemption notice) on any process: every process saves the same step, then exits cleanly.

    One process: a Python SIGTERM handler records the notice, and :meth:`reached` returns True at the next
    step boundary.

    Several processes (``jax.distributed``): a notice that only its own process saw would send that process
    into the collective save while the others kept stepping, a hang. So the agreement is JAX's own:
    ``jax.distributed.initialize`` installs the coordination service's SIGTERM handler (C++, polled every
    second), which posts the notice to every process; each then reports the last counter it passed to
    ``multihost_utils.reached_preemption_sync_point`` and all agree on the largest plus one, where that call
    returns True on every process alike. No Python handler is installed then: it would replace that one,
    and only this process would know. Per step this costs one local mutex (0.19 µs measured on 2 processes
    over localhost, JAX 0.10.2), against 4 ms and a wait for the device for an all-gather of a "stop" flag
    (``multihost_utils.process_allgather``), which would also end asynchronous dispatch; the notice reaches
    the others in about a second plus a step or so. The API is the same in JAX 0.11. Orbax's
    ``CheckpointManager.reached_preemption`` calls the same function.

    The counter passed is the loop's iteration in this process (1, 2, ...), not the global step: processes
    resume from one agreed step (``Checkpoints.restore_latest``), so an iteration is the same step on each,
    and a notice that arrives during set-up, before any call (every counter still 0), stops at iteration 1
    rather than at a step already behind a resumed run. A notice after the last iteration changes nothing:
    the run has saved its last step and ends normally.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._shared = False

    def __enter__(self):
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            # Raises RuntimeError when the preemption service is off (jax_enable_preemption_service).
            multihost_utils.reached_preemption_sync_point(0)
            self._shared = True
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        # Not the main thread (some notebook runners): no preemption handling.
        except ValueError:
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def reached(self, iteration: int) -> bool:
        """Whether to save and stop after ``iteration`` (1 for the first step this process runs).

        Call it once per iteration on every process: under several processes it is where they agree.
        """
        if self._shared:
            from jax.experimental import multihost_utils

            self.requested = multihost_utils.reached_preemption_sync_point(iteration)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action (log, evaluation, checkpoint) follows ``step``.

    It does every ``every`` steps and after the ``last``.
    """
    return step % every == 0 or step == last


def evaluate(
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


def check_finite(history: list[dict[str, float]], first_step: int) -> None:
    for offset, m in enumerate(history):
        if not all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "param_norm")):
            step = first_step + offset + 1
            raise NonFiniteError(
                f"non-finite loss, gradient or parameters at step {step} (loss={m['loss']}, "
                f"grad_norm={m['grad_norm']}, param_norm={m['param_norm']}); "
                f"stopped without checkpointing it. Lower the learning rate and rerun: the run resumes "
                f"from the last good checkpoint."
            )


@dataclasses.dataclass
class Run:
    """What the training loop needs, made by :func:`train._set_up`."""

    config: ml_collections.ConfigDict
    is_main: bool
    dataset: data.Dataset
    state: steps.TrainState
    start_step: int
    total_steps: int
    schedule: optax.Schedule
    train_step: Callable
    eval_step: Callable
    eval_per_replica: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    checkpoints: Checkpoints
    writer: MetricsWriter
    run_info: RunInfo
    profiler: StepProfiler

    def close(self) -> None:
        self.profiler.close()
        self.writer.close()
        self.checkpoints.close()


def run_loop(run: Run, preemption: Preemption) -> dict[str, Any]:
    """Trains from ``run.start_step`` to ``run.total_steps``, logging, evaluating and checkpointing as due."""
    config, state, train = run.config, run.state, run.dataset.train
    progress = None
    if run.is_main and config.progress_bar:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=run.total_steps,
            initial=run.start_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )

    # Metrics not yet fetched: fetching every step would make the host wait for the device.
    pending: list[dict[str, jax.Array]] = []
    window_start, window_first_step = time.perf_counter(), run.start_step
    test_metrics: dict[str, float] | None = None
    try:
        for step in range(run.start_step + 1, run.total_steps + 1):
            run.profiler.before(step, state)
            state, metrics = run.train_step(state, train.images, train.labels)
            run.profiler.after(step, state)
            pending.append(metrics)
            stop = preemption.reached(step - run.start_step)
            log_due = due(step, run.log_every, run.total_steps)
            eval_due = due(step, run.eval_every, run.total_steps)
            save_due = due(step, run.checkpoint_every, run.total_steps) or stop
            # Fetch (and check for NaN) before anything evaluates or saves this state.
            if log_due or eval_due or save_due:
                history = jax.device_get(pending)
                pending = []
                check_finite(history, window_first_step)
                elapsed = time.perf_counter() - window_start
                summary = {
                    "loss": float(np.mean([m["loss"] for m in history])),
                    "accuracy": float(np.mean([m["accuracy"] for m in history])),
                    "learning_rate": float(run.schedule(step - 1)),
                    "images_per_sec": len(history) * config.global_batch_size / elapsed,
                    "step_time": elapsed / len(history),
                }
                if log_due:
                    run.writer.write(step, "train", summary)
                if progress is not None:
                    progress.update(step - progress.n)
                    progress.set_postfix(
                        loss=f"{summary['loss']:.4f}", acc=f"{summary['accuracy']:.4f}"
                    )
                window_start, window_first_step = time.perf_counter(), step
            if eval_due:
                test_metrics = evaluate(
                    run.eval_step, state, run.dataset.test, run.eval_per_replica
                )
                run.writer.write(step, "test", test_metrics)
            if save_due:
                run.checkpoints.save(step, state)
                run.run_info.update(step)
            if stop:
                if run.is_main or jax.process_count() > 1:  # each host's log says where it stopped
                    print(
                        f"SIGTERM: saved checkpoint {step}; exiting. Rerun to resume.",
                        file=sys.stderr,
                    )
                return {"step": step, "preempted": True}
        if test_metrics is None:  # resumed at the very end
            test_metrics = evaluate(run.eval_step, state, run.dataset.test, run.eval_per_replica)
    finally:
        if progress is not None:
            progress.close()
    run.run_info.update(
        run.total_steps, final_step=run.total_steps, final_test_accuracy=test_metrics["accuracy"]
    )
    if run.is_main:
        print(f"final test accuracy: {test_metrics['accuracy']:.4f}")
    return {"step": run.total_steps, **test_metrics}
