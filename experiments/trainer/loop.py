"""The training loop: steps, then logging, evaluation and checkpoints when due; NaN checks; preemption.

``train.py`` sets a run up (devices, data, model, compiled steps, restored state) into a :class:`Run`;
:func:`run_loop` trains it to the end or to a SIGTERM.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
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
from jax.experimental import multihost_utils

from experiments.common.errors import ConfigError
from experiments.trainer import steps
from experiments.trainer.checkpoints import Checkpoints, newest_step
from experiments.trainer.input import data
from experiments.trainer.metrics import MetricsWriter
from experiments.trainer.profiling import StepProfiler
from experiments.trainer.run_info import RunInfo


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
    ``multihost_utils.reached_preemption_sync_point`` and all take the largest plus one, where that call
    returns True on every process alike. No Python handler is installed then: it would replace that one,
    and only this process would know. Per step this costs one local mutex (0.19 µs a call, measured on 2
    processes over localhost, JAX 0.10.2), where an all-gather of a "stop" flag
    (``multihost_utils.process_allgather``) took 4 ms and would wait for the device every step, ending
    asynchronous dispatch. Measured here: SIGTERM to one of two processes at step 100, both saved step 104.
    JAX 0.11.2 has the same function and service (its wheels checked, not run: no Python 3.12 here).

    The counter is the global step, because orbax's ``CheckpointManager.save`` passes its step to the same
    function. A notice that comes before a process's first call counts it at 0 and so stops at step 1,
    which a resumed run never passes again: so :meth:`__enter__` passes the newest checkpoint's step at once
    (``workdir``), before the minutes of set-up, and :meth:`begin` the agreed step the loop resumes from.
    What remains is the moment between ``jax.distributed.initialize`` and :meth:`__enter__`. A notice after
    the last step changes nothing: the run has saved it and ends normally.
    """

    def __init__(self, workdir: str | pathlib.Path | None = None):
        self.requested = False
        self._previous = None
        self._shared = False
        self._workdir = workdir

    def __enter__(self):
        if jax.process_count() > 1:
            newest = newest_step(self._workdir) if self._workdir is not None else 0
            try:
                multihost_utils.reached_preemption_sync_point(newest)
            except (
                RuntimeError
            ) as e:  # the service is off: SIGTERM would stop one process, the rest hang
                raise ConfigError(
                    "several processes need JAX's preemption service to stop together on SIGTERM, and "
                    "jax_enable_preemption_service is off; turn it back on (its default)."
                ) from e
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

    def begin(self, step: int) -> None:
        """Before the loop, on every process: ``step`` is the one restored (0 for none)."""
        self.reached(step)

    def reached(self, step: int) -> bool:
        """Whether to save and stop after ``step``; once True, stays True.

        Call it after every step on every process: under several processes it is where they agree.
        """
        if self._shared:
            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
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
    """Loss, top-1 and top-5 accuracy over a device-resident split (the memory path)."""
    batches = (
        (split.images, split.labels, split.mask, jnp.int32(i))
        for i in range(split.per_replica // per_replica_batch)
    )
    return evaluate_batches(eval_step, state, batches)


def evaluate_batches(eval_step, state, batches) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy summed over ``eval_step(state, *args)`` for each ``args`` of ``batches``."""
    totals = None
    for args in batches:
        sums = eval_step(state, *args)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {
        "loss": float(totals["loss"]) / float(totals["count"]),
        "accuracy": float(totals["correct"]) / float(totals["count"]),
        "top5_accuracy": float(totals["correct_top5"]) / float(totals["count"]),
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
    dataset: data.Dataset | None  # the memory path's arrays (None when streaming)
    input: Any  # experiments.trainer.input: MemoryInput or StreamInput
    positions: Any  # experiments.trainer.input.positions.Positions (the streaming iterator's, per checkpoint)
    state: steps.TrainState
    start_step: int
    total_steps: int
    schedule: optax.Schedule
    train_step: Callable
    eval_step: Callable
    eval_per_replica: int
    reestimate: Callable | None  # see experiments/trainer/population.py
    log_every: int
    eval_every: int
    checkpoint_every: int
    checkpoints: Checkpoints
    writer: MetricsWriter
    run_info: RunInfo
    profiler: StepProfiler

    def close(self) -> None:
        self.profiler.close()
        self.input.close()
        self.writer.close()
        self.checkpoints.close()


def run_loop(run: Run, preemption: Preemption) -> dict[str, Any]:
    """Trains from ``run.start_step`` to ``run.total_steps``, logging, evaluating and checkpointing as due."""
    config, state = run.config, run.state
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
    preemption.begin(run.start_step)
    try:
        for step in range(run.start_step + 1, run.total_steps + 1):
            run.profiler.before(step, state)
            state, metrics = run.train_step(state, *run.input.train_args())
            run.profiler.after(step, state)
            pending.append(metrics)
            stop = preemption.reached(step)
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
                test_metrics = evaluate_batches(run.eval_step, state, run.input.eval_batches())
                run.writer.write(step, "test", test_metrics)
            if save_due:
                if run.input.position is not None:  # streaming: first, so no checkpoint lacks it
                    run.positions.save(step, run.input.position)
                run.checkpoints.save(step, state)
                run.positions.prune(run.checkpoints.manager.all_steps())
                run.run_info.update(step)
            if stop:
                if run.is_main or jax.process_count() > 1:  # each host's log says where it stopped
                    print(
                        f"SIGTERM: saved checkpoint {step}; exiting. Rerun to resume.",
                        file=sys.stderr,
                    )
                return {"step": step, "preempted": True}
        if test_metrics is None:  # resumed at the very end
            test_metrics = evaluate_batches(run.eval_step, state, run.input.eval_batches())
    finally:
        if progress is not None:
            progress.close()
    final = {"final_test_accuracy": test_metrics["accuracy"]}
    if run.reestimate is not None:
        final.update(_with_population_statistics(run, state))
    run.run_info.update(run.total_steps, final_step=run.total_steps, **final)
    if run.is_main:
        print(f"final test accuracy: {test_metrics['accuracy']:.4f}")
        if "final_test_accuracy_population" in final:
            print(f"with BN's population statistics: {final['final_test_accuracy_population']:.4f}")
    return {"step": run.total_steps, **test_metrics, **final}


def _with_population_statistics(run: Run, state) -> dict[str, float]:
    """The final state evaluated with re-estimated BN statistics (``population.py``); the state is not changed."""
    assert run.reestimate is not None
    stats, images = run.reestimate(state.params, state.batch_stats)
    metrics = evaluate_batches(
        run.eval_step, state.replace(batch_stats=stats), run.input.eval_batches()
    )
    run.writer.write(run.total_steps, "test_population", {**metrics, "images": images})
    return {"final_test_accuracy_population": metrics["accuracy"], "population_images": images}
