"""kill -9 mid-epoch with the streaming pipeline, then a rerun: bitwise the uninterrupted run's parameters.

The iterator's position comes back from ``input_positions/STEP/`` (written beside each checkpoint), so the
rerun reads the batches the killed run would have read next. Drives the real ``python -m experiments.train``.
"""

import json
import random
import signal

import pytest

pytest.importorskip("grain", reason="the streaming pipeline needs grain (Python >= 3.11)")

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
STEPS = 14  # synthetic: 2,048 examples, 64 steps of 32 per epoch: every kill is mid-epoch
ARGS = [
    *FAULT_ARGS,
    "--config.input_pipeline=stream",
    f"--config.num_train_steps={STEPS}",
    "--config.checkpoint_every_steps=3",
    "--config.eval_every_steps=7",
]


def test_kill_9_mid_epoch_then_rerun_is_bitwise_identical(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    result = run_cli([*ARGS, f"--workdir={uninterrupted}"])
    assert result.returncode == 0, result.stderr[-3000:]

    killed = tmp_path / "killed"
    kill_at = random.Random().randint(4, STEPS - 2)  # after the first checkpoint (step 3)
    process = start_cli([*ARGS, f"--workdir={killed}"])
    wait_for(
        lambda: last_logged_step(killed) >= kill_at or process.poll() is not None,
        what=f"step {kill_at}",
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before step {kill_at}"
    resumed_from = checkpoint_steps(killed)[-1]
    position = killed / "input_positions" / str(resumed_from) / "process_0.json"
    assert json.loads(position.read_text())["last_seen_indices"], position

    rerun = run_cli([*ARGS, f"--workdir={killed}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint {resumed_from}" in rerun.stderr
    assert_bitwise_equal(read_checkpoint(killed, STEPS), read_checkpoint(uninterrupted, STEPS))
    assert logged_metrics(killed) == logged_metrics(uninterrupted)
    # Positions of steps older than the oldest checkpoint kept (3 kept) are gone.
    kept = checkpoint_steps(killed)
    assert sorted(int(p.name) for p in (killed / "input_positions").iterdir()) == kept
