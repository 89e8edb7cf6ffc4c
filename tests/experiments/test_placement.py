"""Fake CPU devices run as vmapped replicas on one device: the decision, and a real run that finishes and
equals 1 device × 4 replicas."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments.trainer import placement
from tests.helpers import FAULT_ARGS, read_checkpoint, run_cli


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    id: int
    process_index: int


def _devices(processes: int, per_process: int) -> list[FakeDevice]:
    return [
        FakeDevice(p * per_process + i, p) for p in range(processes) for i in range(per_process)
    ]


def test_several_cpu_devices_become_replicas_of_the_first():
    devices = _devices(1, 4)
    plan = placement.plan(devices, 2, "cpu", 0)
    assert plan.devices == (devices[0],) and plan.replicas_per_device == 8
    assert plan.notice.startswith(
        "note: running this process's 4 CPU devices as 8 vmapped replicas"
    )


def test_each_process_keeps_its_first_cpu_device():
    devices = _devices(2, 2)
    plan = placement.plan(devices, 1, "cpu", 1)
    assert plan.devices == (devices[0], devices[2]) and plan.replicas_per_device == 2
    assert "each process's 2 CPU devices" in plan.notice


@pytest.mark.parametrize("platform", ["gpu", "tpu", "cuda"])
def test_accelerators_are_used_as_they_are(platform):
    devices = _devices(2, 4)
    assert placement.plan(devices, 3, platform, 0) == placement.Placement(tuple(devices), 3)


def test_one_cpu_device_per_process_is_used_as_it_is():
    devices = _devices(2, 1)
    assert placement.plan(devices, 2, "cpu", 0) == placement.Placement(tuple(devices), 2)


ARGS = [
    *FAULT_ARGS,
    "--config.model=vgg_tiny",
    "--config.num_groups=4",
    "--config.global_batch_size=16",
    "--config.num_train_steps=6",
    "--config.checkpoint_every_steps=6",
    "--config.eval_every_steps=6",
]


@pytest.mark.slow
def test_four_fake_cpu_devices_equal_one_device_with_four_replicas(tmp_path):
    """The command line with 4 fake CPU devices finishes (it used to abort in XLA:CPU's all-reduce) and
    ends bitwise where 1 device × 4 replicas does: the same batches, statistics and gradients, in the same
    order."""
    # XLA:CPU sizes its thread pools max(cores, devices); the same 4 threads in both runs split every
    # reduction alike (on 2 cores, 4 threads against 2 differ by ~5e-7 after 6 steps).
    threads = {"PJRT_NPROC": "4"}
    four = run_cli([*ARGS, f"--workdir={tmp_path / 'four'}"], devices=4, env=threads)
    assert four.returncode == 0, four.stderr[-3000:]
    assert "running this process's 4 CPU devices as 4 vmapped replicas" in four.stderr
    one = run_cli(
        [*ARGS, "--config.replicas_per_device=4", f"--workdir={tmp_path / 'one'}"],
        devices=1,
        env=threads,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert "vmapped" not in one.stderr
    four_state, one_state = (
        read_checkpoint(tmp_path / "four", 6),
        read_checkpoint(tmp_path / "one", 6),
    )
    for a, b in zip(jax.tree.leaves(four_state), jax.tree.leaves(one_state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_four_fake_cpu_devices_with_synced_statistics(tmp_path):
    """Synced statistics over the replicas that stand for devices (the maths is in test_train_step.py)."""
    done = run_cli([*ARGS, "--config.sync_batch_stats=True", f"--workdir={tmp_path}"], devices=4)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "as 4 vmapped replicas" in done.stderr and "final test accuracy" in done.stdout
