"""Faults under two processes (``jax.distributed`` over localhost): preemption and damaged checkpoints.

Every process must take the same decision at the same point, else one waits in a collective the others never
enter (a hang). Each test bounds every process with a timeout, so a hang fails the test with what each
process printed instead of stalling CI.
"""

import fcntl
import json
import os
import shutil
import signal
import sys

import jax
import numpy as np
import pytest

from experiments.trainer.checkpoints import Checkpoints
from tests.experiments.multihost_checkpoint_worker import SCENARIOS, state
from tests.helpers import (
    checkpoint_steps,
    finish_processes,
    read_checkpoint,
    start_processes,
    start_trainers,
    wait_for,
)

TIMEOUT = (
    300  # seconds for one run of both processes; a loaded 2-core machine can take minutes to start
)
# A notice sent once set-up is done reaches every process within about a second (JAX polls for SIGTERM every
# second), well before the last step: compiling the first step alone takes longer here.
STEPS = 40
EVERY = 10  # checkpoint period; 3 are kept
ARGS = [
    "--config=experiments/configs/default.py",
    "--config.dataset=synthetic",
    "--config.model=vgg_tiny",
    "--config.num_groups=4",
    "--config.global_batch_size=16",
    f"--config.num_train_steps={STEPS}",
    f"--config.checkpoint_every_steps={EVERY}",
    f"--config.eval_every_steps={STEPS}",
    f"--config.log_every_steps={EVERY}",
    "--config.learning_rate=0.001",
    "--config.progress_bar=False",
]


def _train(workdir) -> list[tuple[int, str, str]]:
    results = finish_processes(start_trainers([*ARGS, f"--workdir={workdir}"]), TIMEOUT)
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"process {i}: {err[-3000:]}"
    return results


def _assert_bitwise_equal(a, b):
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _train(workdir)
    assert checkpoint_steps(workdir) == [STEPS - 2 * EVERY, STEPS - EVERY, STEPS]
    return workdir


@pytest.mark.slow
def test_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path, uninterrupted):
    workers = start_trainers([*ARGS, f"--workdir={tmp_path}"])
    # config.json is written by process 0 after the restore, which both processes passed together: both
    # are past jax.distributed.initialize, so the coordination service's SIGTERM handler is in place.
    wait_for(
        lambda: (tmp_path / "config.json").exists() or any(w.poll() is not None for w in workers),
        timeout=TIMEOUT,
        what="set-up",
    )
    workers[1].send_signal(signal.SIGTERM)
    results = finish_processes(workers, TIMEOUT)
    for i, (code, _, err) in enumerate(results):
        assert code == 0, f"process {i}: {err[-3000:]}"
    saved = checkpoint_steps(tmp_path)[-1]
    assert saved < STEPS, "the run ended before the preemption notice took effect"
    for i, (_, _, err) in enumerate(results):  # each process says where it stopped: the same step
        assert f"SIGTERM: saved checkpoint {saved}; exiting" in err, f"process {i}: {err[-3000:]}"
    assert "final test accuracy" not in results[0][1]

    rerun = _train(tmp_path)
    assert f"resuming from checkpoint {saved}" in rerun[0][2]
    _assert_bitwise_equal(read_checkpoint(tmp_path, STEPS), read_checkpoint(uninterrupted, STEPS))


@pytest.mark.slow
def test_damaged_newest_checkpoint_is_moved_once_and_both_resume_from_the_previous(
    tmp_path, uninterrupted
):
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted, workdir)
    _truncate(workdir / "checkpoints" / str(STEPS))

    rerun = _train(workdir)
    (_, _, err0), (_, _, err1) = rerun
    assert f"checkpoint {STEPS} is unreadable" in err0  # said by process 0 alone
    assert "is unreadable" not in err1, err1[-3000:]
    assert f"resuming from checkpoint {STEPS - EVERY}" in err0
    assert [p.name.split("-")[0] for p in (workdir / "unreadable_checkpoints").iterdir()] == [
        str(STEPS)
    ]
    _assert_bitwise_equal(read_checkpoint(workdir, STEPS), read_checkpoint(uninterrupted, STEPS))


def _truncate(folder) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)


@pytest.mark.slow
def test_processes_agree_on_the_step_to_resume_from(tmp_path):
    """Checkpoints.restore_latest on two processes, one scenario each (tests/experiments/multihost_checkpoint_worker.py)."""
    for name in [*SCENARIOS, "views_lagging"]:
        saved = Checkpoints(tmp_path / name, keep=5)
        for step in (1, 2) if name == "views_lagging" else (1, 2, 3):
            saved.save(step, state())
        saved.close()
    _truncate(tmp_path / "damaged" / "checkpoints" / "3")

    command = [sys.executable, "-m", "tests.experiments.multihost_checkpoint_worker"]
    workers = start_processes(lambda address, i: [*command, address, "2", str(i), str(tmp_path)])
    results = finish_processes(workers, TIMEOUT)
    reports = {}
    for i, (code, out, err) in enumerate(results):
        assert code == 0, f"process {i}: {err[-3000:]}"
        for line in out.splitlines():
            if line.startswith("{"):
                report = json.loads(line)
                reports[report["scenario"], report["process"]] = report
    assert len(reports) == 2 * len(SCENARIOS), reports
    logs = [err for _, _, err in results]

    def quarantined(name):
        folder = tmp_path / name / "unreadable_checkpoints"
        return sorted(p.name.split("-")[0] for p in folder.iterdir()) if folder.exists() else []

    # Damaged on disk: both read it as damaged, process 0 alone moves it and says so; both resume from 2.
    for p in (0, 1):
        assert reports["damaged", p]["step"] == 2 and reports["damaged", p]["equal"], reports
    assert len(reports["damaged", 0]["skipped"]) == 1 and reports["damaged", 1]["skipped"] == []
    assert quarantined("damaged") == ["3"]
    assert checkpoint_steps(tmp_path / "damaged") == [1, 2]
    # Damaged for process 1 only: still moved once, and both resume from 2, never one from 3.
    for p in (0, 1):
        assert reports["one_sided", p]["step"] == 2 and reports["one_sided", p]["equal"], reports
    assert "on process(es) [1]" in reports["one_sided", 0]["skipped"][0]
    assert "checkpoint 3 is unreadable on process 1 (FileNotFoundError" in logs[1]
    assert quarantined("one_sided") == ["3"]
    # A transient error on process 1: it raises it, process 0 raises too; nothing is moved.
    assert reports["transient", 1]["error"].startswith("OSError"), reports
    assert reports["transient", 0]["error"].startswith(
        "CheckpointPeerError: checkpoint 3 could not be read on process(es) [1]"
    ), reports
    assert quarantined("transient") == [] and checkpoint_steps(tmp_path / "transient") == [1, 2, 3]
    # Different views of the workdir: both refuse, neither resumes.
    for p in (0, 1):
        assert reports["views", p]["error"].startswith("CheckpointViewError"), reports
        assert "{0: 3, 1: 2}" in reports["views", p]["error"]
    # The damaged scenarios' warnings: once each in all, from process 0 (process 1 adds its own detail
    # only where process 0 read the checkpoint fine).
    assert sum(log.count("checkpoint 3 is unreadable (") for log in logs) == 1
    assert sum(log.count("checkpoint 3 is unreadable on process(es) [1]") for log in logs) == 1


@pytest.mark.slow
def test_a_busy_workdir_stops_every_process(tmp_path):
    with (tmp_path / ".lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 12345")
        held.flush()
        results = finish_processes(start_trainers([*ARGS, f"--workdir={tmp_path}"]), TIMEOUT)
    for i, (code, _, err) in enumerate(results):
        last_line = err.strip().splitlines()[-1]
        assert code == 1 and "is in use by" in last_line, f"process {i}: {err[-3000:]}"
    assert "pid 12345" in results[0][2]
    assert not (tmp_path / "checkpoints").exists()
