"""Out of space while training: one clear line naming the workdir, the last checkpoint intact and in place,
and a rerun with space that resumes to the uninterrupted run's parameters, bit for bit.

The workdir sits on a small tmpfs (root can mount one, as on this project's machines and CI; elsewhere the
test skips); once the first checkpoint is written the test pauses the run, fills the filesystem and lets it go
on, so that the next write of the run (a checkpoint or a metrics line) fails with ENOSPC. Checkpoints are
finalized in the background while training goes on, so a later one may already be in place when the run is
paused: the test asks that the newest one be complete and named in the error, and that the rerun resume from it.
"""

import errno
import logging
import os
import signal
import subprocess
import sys

import pytest

from experiments.trainer.workdir import (
    OutOfSpaceRecordsDropped,
    is_out_of_space,
    out_of_space_message,
)
from tests.helpers import (
    FAULT_ARGS,
    checkpoint_steps,
    read_checkpoint,
    run_cli,
    start_cli,
    wait_for,
)

STEPS = 12
ARGS = [*FAULT_ARGS, f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=3"]


@pytest.fixture
def small_filesystem(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256M", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory) -> None:
    """Writes a ballast file until the filesystem is full (unbuffered: nothing left to flush at close)."""
    with open(directory / "ballast", "wb", buffering=0) as f:
        for block in (1 << 20, 4096, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e


@pytest.mark.slow
def test_a_full_disk_stops_clearly_and_the_rerun_resumes_bitwise(tmp_path, small_filesystem):
    uninterrupted = tmp_path / "uninterrupted"
    assert run_cli([*ARGS, f"--workdir={uninterrupted}"]).returncode == 0

    workdir = small_filesystem / "run"
    process = start_cli([*ARGS, f"--workdir={workdir}", "--config.log_every_steps=1"])
    wait_for(
        lambda: 3 in checkpoint_steps(workdir) or process.poll() is not None, what="checkpoint 3"
    )
    process.send_signal(signal.SIGSTOP)  # no step or background write while the disk fills
    _fill(small_filesystem)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0, "the run finished although the disk was full"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(workdir) in last and "space" in last, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    kept = checkpoint_steps(workdir)
    newest = kept[-1]
    assert kept == list(range(3, newest + 1, 3)) and newest < STEPS, kept
    assert f"resumes from checkpoint {newest}" in last, last
    assert not (workdir / "unreadable_checkpoints").exists()

    os.remove(small_filesystem / "ballast")
    rerun = run_cli([*ARGS, f"--workdir={workdir}"])
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from checkpoint {newest}" in rerun.stderr

    a, b = read_checkpoint(workdir, STEPS), read_checkpoint(uninterrupted, STEPS)
    import jax
    import numpy as np

    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_full_disk_is_recognized_however_it_is_reported():
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    # tensorstore's status message, and an error raised while handling one
    tensorstore = ValueError(
        "RESOURCE_EXHAUSTED: Error writing ... [OS error: No space left on device]"
    )
    assert is_out_of_space(tensorstore)
    try:
        try:
            raise tensorstore
        except ValueError as e:
            raise RuntimeError("save failed") from e
    except RuntimeError as chained:
        assert is_out_of_space(chained)
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(ValueError("shapes differ"))
    line = out_of_space_message("/data/run", 3)
    assert "/data/run" in line and "resumes from checkpoint 3" in line and "\n" not in line
    assert "starts from the beginning" in out_of_space_message("/data/run", 0)


def test_the_checkpoint_writers_full_disk_tracebacks_are_dropped_and_nothing_else():
    """The writer threads log a failed write with its traceback, once or several times depending on which
    write failed first (the full-disk test above met both): those records go; other errors stay."""
    from absl import logging as absl_logging

    def record(error):
        try:
            raise error
        except Exception:
            return logging.LogRecord(
                "absl", logging.ERROR, __file__, 1, "save failed", (), sys.exc_info()
            )

    dropped = OutOfSpaceRecordsDropped()
    full = ValueError(
        "RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']"
    )
    assert not dropped.filter(record(full))
    assert dropped.filter(record(ValueError("shapes differ")))
    assert dropped.filter(logging.LogRecord("absl", logging.ERROR, __file__, 1, "plain", (), None))
    # The trainer installs it on the root logger's handlers, which absl's and asyncio's records both reach.
    assert logging.getLogger("absl").propagate and logging.getLogger("asyncio").propagate
    assert absl_logging.get_absl_logger() is logging.getLogger("absl")
