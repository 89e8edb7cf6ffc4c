"""Where a run's replicas go: one or more per device of every host; fake CPU devices become vmapped replicas.

Several CPU devices in one process are fake (``--xla_force_host_platform_device_count`` or
``jax_num_cpu_devices``): XLA:CPU runs them as threads of one client, and its in-process all-reduce has
stalled until XLA aborted the run ("Expected 4 threads to join the rendezvous"; the quick config on 4 fake
devices, after about a hundred steps, on a loaded 2-core machine; earlier, gdb showed 7 of 8 device threads
waiting in the all-reduce for an 8th that never ran). Not reproduced on demand (600 quick-config steps on 4
devices, 2,750 tiny steps on 8, load up to 16). A likely cause, from XLA's CPU client: its thread pools hold
max(cores, devices) threads, "at least CpuDeviceCount threads to launch one collective", so a collective needs
every device's program parked on a pool thread at once, and any other work holding a pool thread can leave
the last device's program waiting until the collective times out. :func:`plan` therefore runs those devices'
work as vmapped replicas on one device (``replicas_per_device`` times the local device count), which needs no
in-process collective and is the same maths: each replica keeps its own batch, batch statistics and
gradient, draws the same examples in the same order (replicas are numbered device-major either way), and the
gradient is averaged over all of them; with ``sync_batch_stats`` a device's replicas are pooled into one batch
(``steps.StepConfig.pool_replicas``). Tested in test_train_step.py and test_placement.py. Accelerators, and
one CPU device per process, are used as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Placement:
    """The mesh's devices (global order) and the replicas each holds."""

    devices: tuple[Any, ...]
    replicas_per_device: int
    notice: str | None = None  # one line for the user when the placement differs from the devices


def plan(
    devices: Sequence[Any], replicas_per_device: int, platform: str, process_index: int
) -> Placement:
    """Every device, or on CPU with several devices per process, each process's first as all of its replicas.

    Args:
      devices: every device of every process, in JAX's global order (process-major).
      replicas_per_device: replicas the config asks for on each device.
      platform: the backend's platform (``jax.default_backend()``).
      process_index: this process's index.

    Returns:
      The placement; ``notice`` says what changed, None when nothing did.
    """
    per_process: dict[int, list[Any]] = {}
    for device in devices:
        per_process.setdefault(device.process_index, []).append(device)
    local = len(per_process[process_index])
    uniform = len({len(ds) for ds in per_process.values()}) == 1
    if platform != "cpu" or local == 1 or not uniform:
        return Placement(tuple(devices), replicas_per_device)
    replicas = replicas_per_device * local
    where = "this process's" if len(per_process) == 1 else "each process's"
    notice = (
        f"note: running {where} {local} CPU devices as {replicas} vmapped replicas on one device (the same "
        f"maths; XLA:CPU's all-reduce over fake devices can stall and abort, see experiments/trainer/placement.py)."
    )
    return Placement(tuple(ds[0] for ds in per_process.values()), replicas, notice)
