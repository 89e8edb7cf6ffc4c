"""Fault tests: each drives the real ``python -m experiments.train`` in a subprocess on CPU."""

import os
import random
import shutil
import signal

import jax
import numpy as np
import pytest

from tests.helpers import (
    FAULT_ARGS,
    assert_bitwise_equal,
    checkpoint_steps,
    last_logged_step,
    logged_metrics,
    read_checkpoint,
    run_cli,
    start_cli,
    wait_for,
)

pytestmark = pytest.mark.slow
STEPS = 14
ARGS = [
    *FAULT_ARGS,
    f"--config.num_train_steps={STEPS}",
    "--config.checkpoint_every_steps=3",
    "--config.eval_every_steps=7",
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli([*ARGS, f"--workdir={workdir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_kill_9_then_rerun_is_bitwise_identical(tmp_path, uninterrupted):
    kill_at = random.Random().randint(4, STEPS - 2)  # after the first checkpoint (step 3)
    process = start_cli([*ARGS, f"--workdir={tmp_path}"])
    wait_for(
        lambda: last_logged_step(tmp_path) >= kill_at or process.poll() is not None,
        what=f"step {kill_at}",
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    assert checkpoint_steps(tmp_path), "no checkpoint before the kill"

    rerun = run_cli([*ARGS, f"--workdir={tmp_path}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from checkpoint" in rerun.stderr
    assert "config differs" not in rerun.stderr
    assert_bitwise_equal(read_checkpoint(tmp_path, STEPS), read_checkpoint(uninterrupted, STEPS))
    assert logged_metrics(tmp_path) == logged_metrics(uninterrupted)


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tmp_path, uninterrupted):
    process = start_cli([*ARGS, f"--workdir={tmp_path}"])
    wait_for(
        lambda: 3 in checkpoint_steps(tmp_path) or process.poll() is not None, what="checkpoint 3"
    )
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)  # the bound: one step plus one checkpoint
    assert process.returncode == 0, stderr[-3000:]
    saved = checkpoint_steps(tmp_path)[-1]
    assert f"SIGTERM: saved checkpoint {saved}" in stderr
    assert last_logged_step(tmp_path) <= saved

    rerun = run_cli([*ARGS, f"--workdir={tmp_path}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint {saved}" in rerun.stderr
    assert_bitwise_equal(read_checkpoint(tmp_path, STEPS), read_checkpoint(uninterrupted, STEPS))


def test_a_run_resumed_with_another_config_says_which_fields_changed(tmp_path, uninterrupted):
    shutil.copytree(uninterrupted, tmp_path / "run")
    more = [f"--config.num_train_steps={STEPS + 1}", "--config.learning_rate=0.5"]
    rerun = run_cli([*ARGS, *more, "--config.log_every_steps=5", f"--workdir={tmp_path / 'run'}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    warning = next(line for line in rerun.stderr.splitlines() if "config differs" in line)
    assert f"num_train_steps: {STEPS} -> {STEPS + 1}" in warning and "learning_rate:" in warning
    assert "-> 0.5" in warning and f"before checkpoint {STEPS}" in warning
    assert "log_every_steps" not in warning  # how the run goes, not what it trains


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted, damage):
    shutil.copytree(uninterrupted, tmp_path / "run")
    workdir = tmp_path / "run"
    newest = checkpoint_steps(workdir)[-1]
    assert newest == STEPS
    for root, _, files in os.walk(workdir / "checkpoints" / str(newest)):
        for name in files:
            path = os.path.join(root, name)
            if damage == "truncate":
                with open(path, "r+b") as f:
                    f.truncate(max(0, os.path.getsize(path) // 3))
            elif "manifest" in name or name.endswith(".json") or "ocdbt" in root:
                os.remove(path)
    previous = checkpoint_steps(workdir)[-2]

    rerun = run_cli([*ARGS, f"--workdir={workdir}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"checkpoint {newest} is unreadable" in rerun.stderr
    assert f"resuming from checkpoint {previous}" in rerun.stderr
    assert (workdir / "unreadable_checkpoints").exists()
    # Only the damaged checkpoint's steps were redone, and they came out the same.
    assert_bitwise_equal(read_checkpoint(workdir, STEPS), read_checkpoint(uninterrupted, STEPS))
    assert logged_metrics(workdir) == logged_metrics(uninterrupted)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    args = [
        *FAULT_ARGS,
        f"--workdir={tmp_path}",
        "--config.checkpoint_every_steps=1",
        "--config.conv=plain",
        "--config.norm=none",
    ]
    first = run_cli([*args, "--config.num_train_steps=3"])
    assert first.returncode == 0, first.stderr[-3000:]
    good = read_checkpoint(tmp_path, 3)
    files_before = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints" / "3").rglob("*") if p.is_file()
    }

    exploded = run_cli(
        [
            *args,
            "--config.num_train_steps=6",
            "--config.learning_rate=1e30",
        ]
    )
    assert exploded.returncode == 1, exploded.stderr[-3000:]
    last_line = exploded.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: non-finite loss, gradient or parameters at step 4"), (
        last_line
    )
    assert "Traceback" not in exploded.stderr
    assert checkpoint_steps(tmp_path)[-1] == 3  # nothing written at or after the bad step
    assert {p: p.stat().st_mtime_ns for p in files_before} == files_before
    assert_bitwise_equal(read_checkpoint(tmp_path, 3), good)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(good["params"]))


def test_checkpoint_of_another_optimizer_is_refused_not_discarded(tmp_path):
    args = [*FAULT_ARGS, f"--workdir={tmp_path}", "--config.checkpoint_every_steps=1"]
    assert run_cli([*args, "--config.num_train_steps=2"]).returncode == 0
    other = run_cli([*args, "--config.num_train_steps=4", "--config.optimizer=sgd"])
    assert other.returncode == 1
    last_line = other.stderr.strip().splitlines()[-1]
    assert "does not fit this config" in last_line and "new --workdir" in last_line, last_line
    assert checkpoint_steps(tmp_path) == [1, 2]  # both kept where they were
    assert not (tmp_path / "unreadable_checkpoints").exists()


def test_second_run_on_the_same_workdir_is_refused(tmp_path):
    first = start_cli([*FAULT_ARGS, f"--workdir={tmp_path}", "--config.num_train_steps=400"])
    try:
        wait_for(
            lambda: (tmp_path / ".lock").exists() and "pid" in (tmp_path / ".lock").read_text(),
            what="the lock",
        )
        second = run_cli(
            [*FAULT_ARGS, f"--workdir={tmp_path}", "--config.num_train_steps=400"], timeout=120
        )
        assert second.returncode == 1
        assert f"is in use by pid {first.pid}" in second.stderr.strip().splitlines()[-1]
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()
